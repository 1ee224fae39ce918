#!/usr/bin/env bash
# vm-setup.sh - make a Debian 12 (bookworm) machine able to run the ublk
# integration tests in a VM (see vm-run.sh).  Idempotent: when everything is
# in place it does no network I/O and returns in well under 2 s.
#
# What it does (first run: a few minutes, mostly downloads):
#   1. apt-get installs the host tools from bookworm (QEMU, udev, fio, ...).
#   2. installs virtme-ng (vng; Architecture: all) from trixie: the .deb comes
#      from a private apt state under $UBLK_AOT_CACHE/apt/<suite>, its
#      dependencies from bookworm.
#   3. downloads a Debian kernel that ships ublk_drv, unpacks it with dpkg-deb
#      into $UBLK_AOT_CACHE/vm/kernels/<kver> (nothing is installed over the
#      host's kernel), runs depmod there and points the link
#      $UBLK_AOT_CACHE/vm/kernel-<profile> at it.
#
# Env knobs:
#   UBLK_AOT_CACHE=/opt/ublk-aot  state folder (VM files go to its vm/)
#   KERNEL=trixie       kernel profile:
#                         trixie     newest linux-image-6.12.*+deb13-amd64-unsigned
#                         backports  newest trixie-backports kernel (7.x today)
#                         sid        newest sid kernel
#                         custom     implied by KSUITE/KPATTERN/KPKG; always
#                                    asks the archive (network)
#   KSUITE, KPATTERN    suite and package-name ERE that pick the kernel
#                       (newest match wins); KPKG=<exact package name>
#   VNG_SUITE=trixie    suite to take virtme-ng from
#   FORCE=1             refresh: re-resolve and re-download kernel and vng
#   VM_SETUP_HOST_ONLY=1  step 1 only (the host packages, which some host
#                       tests also run for real: promtool), then exit
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
LOG_TAG=vm-setup
# shellcheck source=scripts/vm-common.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/vm-common.sh"

FORCE=${FORCE:-0}
VNG_SUITE=${VNG_SUITE:-trixie}
if [[ -z ${KERNEL:-} ]]; then
  if [[ -n ${KSUITE:-}${KPATTERN:-}${KPKG:-} ]]; then KERNEL=custom; else KERNEL=trixie; fi
fi
case $KERNEL in
  trixie)    def_suite=trixie;           def_pattern='^linux-image-6\.12\.[0-9]+\+deb13-amd64-unsigned$' ;;
  backports) def_suite=trixie-backports; def_pattern='^linux-image-[0-9]+\.[0-9]+\.[0-9]+\+deb[0-9]+-amd64(-unsigned)?$' ;;
  sid)       def_suite=sid;              def_pattern='^linux-image-[0-9]+\.[0-9]+\.[0-9]+\+deb[0-9]+-amd64(-unsigned)?$' ;;
  custom)    def_suite=trixie;           def_pattern='^linux-image-[0-9.]+\+deb[0-9]+-amd64(-unsigned)?$' ;;
  *) die "KERNEL must be trixie, backports, sid or custom (got '$KERNEL')" ;;
esac
KSUITE=${KSUITE:-$def_suite}
KPATTERN=${KPATTERN:-$def_pattern}
KPKG=${KPKG:-}
klink=$VM_DIR/kernel-$KERNEL

# Host packages, all from bookworm.  udev matters: virtme-ng's guest init
# finds its console/exit-status ports through udev; without it every guest
# command fails and vng exits 255.  The python3-* / file / iproute2 / kbd
# entries are virtme-ng's own dependencies (apt also resolves them from the
# .deb in step 2).  busybox-static is the whole userland of the initramfs
# test (scripts/initramfs.sh; its cpio applet writes the image, so no cpio
# package is needed); xz-utils unpacks the kernel's .ko.xz modules for it.
# prometheus: its promtool validates serve --metrics' exposition (host and VM
# tests; the package's own server is not used); curl fetches /metrics.
# nbdkit, qemu-utils: real NBD servers (nbdkit, qemu-nbd) and readers (qemu-img) for the nbd backend's tests;
# the handshake tests run on the host, which has no kernel nbd.
HOST_PKGS=(
  qemu-system-x86 udev busybox-static kmod util-linux util-linux-extra fdisk
  fio e2fsprogs xz-utils strace gcc make file iproute2 kbd prometheus curl
  python3 python3-argcomplete python3-requests python3-pkg-resources
  debian-archive-keyring systemd groff-base nbdkit qemu-utils
)

t0=$(date +%s%N)

# ---------------------------------------------------------------- 1. host
declare -A have=()
while read -r status name; do
  if [[ $status == installed ]]; then have[$name]=1; fi
done < <(dpkg-query -W -f='${db:Status-Status} ${Package}\n' "${HOST_PKGS[@]}" 2>/dev/null || true)
missing=()
for p in "${HOST_PKGS[@]}"; do [[ -n ${have[$p]:-} ]] || missing+=("$p"); done
if ((${#missing[@]})); then
  log "installing host packages: ${missing[*]}"
  apt-get -qq update
  apt-get -y -qq install --no-install-recommends "${missing[@]}" >/dev/null
fi
if [[ ${VM_SETUP_HOST_ONLY:-0} == 1 ]]; then
  log "host packages ready in $(( ($(date +%s%N) - t0) / 1000000 )) ms"
  exit 0
fi

# --------------------------------------------------------- 2. virtme-ng
declare -A suite_ready=()
private_update() {   # once per suite and run
  [[ -n ${suite_ready[$1]:-} ]] || { papt_update "$1"; suite_ready[$1]=1; }
}

if [[ $FORCE == 1 || $(dpkg-query -W -f='${db:Status-Status}' virtme-ng 2>/dev/null || true) != installed ]]; then
  private_update "$VNG_SUITE"
  ver=$(papt_candidate "$VNG_SUITE" virtme-ng)
  [[ -n $ver ]] || die "no virtme-ng in $VNG_SUITE"
  log "installing virtme-ng $ver from $VNG_SUITE"
  mkdir -p "$VM_DIR/debs"
  rm -f "$VM_DIR"/debs/virtme-ng_*.deb
  (cd "$VM_DIR/debs" && papt "$VNG_SUITE" apt-get -qq download "virtme-ng=$ver")
  debs=("$VM_DIR"/debs/virtme-ng_*_all.deb)
  deb=${debs[0]}
  [[ -r $deb ]] || die "virtme-ng download failed"
  # apt-get resolves the .deb's dependencies against bookworm.
  apt-get -y -qq install --no-install-recommends "$deb" >/dev/null
fi

# ------------------------------------------------------------ 3. kernel
kernel_ready() { [[ -e $1/.complete ]]; }

fetch_kernel() {
  local pkg=$KPKG
  private_update "$KSUITE"
  if [[ -z $pkg ]]; then
    pkg=$(papt "$KSUITE" apt-cache search --names-only '^linux-image-' | cut -d' ' -f1 |
          grep -E -- "$KPATTERN" | sort -V | tail -n1 || true)
    [[ -n $pkg ]] || die "no package in $KSUITE matches $KPATTERN"
  fi
  local kname=${pkg#linux-image-}
  kname=${kname%-unsigned}          # == the kernel release (uname -r)
  local kdir=$VM_DIR/kernels/$kname
  if kernel_ready "$kdir"; then
    log "kernel $kname already unpacked"
  else
    # Up to 6.x linux-image-* holds vmlinuz and modules; from 7.x it is a
    # stub that depends on linux-{base,binary,modules}-<kver>.
    local pkgs=("$pkg") dep
    while read -r dep; do pkgs+=("$dep"); done < <(
      papt "$KSUITE" apt-cache depends "$pkg" |
        awk -v k="$kname" '$1 == "Depends:" && $2 ~ /^linux-(base|binary|modules)-/ && index($2, k) { print $2 }')
    log "downloading ${pkgs[*]} from $KSUITE"
    local dl=$VM_DIR/debs/$kname tmp=$kdir.tmp
    rm -rf "$dl" "$tmp"; mkdir -p "$dl" "$tmp"
    (cd "$dl" && papt "$KSUITE" apt-get -qq download "${pkgs[@]}")
    local deb
    for deb in "$dl"/*.deb; do dpkg-deb -x "$deb" "$tmp"; done
    rm -rf "$dl"                    # 100-170 MB of .debs, unpacked now
    # Trixie and later ship usr/lib/modules only; virtme-ng (1.35) looks
    # for lib/modules beside boot/, else the guest panics mounting its root.
    [[ -e $tmp/lib || ! -d $tmp/usr/lib/modules ]] || ln -s usr/lib "$tmp/lib"
    [[ -d $tmp/lib/modules/$kname ]] || die "$pkg has no lib/modules/$kname"
    # 7.x keeps the image at usr/lib/modules/<kver>/vmlinuz only.
    if [[ ! -e $tmp/boot/vmlinuz-$kname && -e $tmp/lib/modules/$kname/vmlinuz ]]; then
      mkdir -p "$tmp/boot"
      ln -s "../usr/lib/modules/$kname/vmlinuz" "$tmp/boot/vmlinuz-$kname"
    fi
    [[ -r $tmp/boot/vmlinuz-$kname ]] || die "no vmlinuz in ${pkgs[*]}"
    [[ -n $(find "$tmp/lib/modules/$kname/" -name 'ublk_drv.ko*' -print -quit) ]] ||
      log "warning: $pkg has no ublk_drv module"
    depmod -a -b "$tmp" "$kname"    # the .debs carry no modules.dep
    touch "$tmp/.complete"
    rm -rf "$kdir"; mv -T "$tmp" "$kdir"
  fi
  ln -sfn "kernels/$kname" "$klink.new"
  mv -T "$klink.new" "$klink"
}

if [[ $FORCE == 1 || $KERNEL == custom ]] || ! kernel_ready "$klink"; then
  with_lock "$VM_DIR/.setup.lock" fetch_kernel
fi

kname=$(basename "$(readlink -f "$klink")")
ms=$((($(date +%s%N) - t0) / 1000000))
log "ready in ${ms} ms: $klink -> $kname, virtme-ng $(dpkg-query -W -f='${Version}' virtme-ng)"
