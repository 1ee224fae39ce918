#!/usr/bin/env bash
# vm-run.sh - run a command as root in a throw-away VM whose kernel has
# ublk_drv (prepared by vm-setup.sh), and exit with the command's status.
#
#   vm-run.sh [-w DIR]... [--] 'SHELL COMMAND'
#   vm-run.sh [-w DIR]... -- PROGRAM ARG...
#
# The VM is QEMU under software emulation (TCG; KVM is not used) started by
# virtme-ng: the guest's root is the host's / over 9p, so the host's dotnet,
# fio, mkfs and the project's binaries run there as they are.  In the guest:
#   * each -w DIR (default: the current directory) is the host folder,
#     read-write: writes land on the host;
#   * /etc /home /lib /opt /root /srv /tmp /usr /var are copy-on-write
#     overlays kept in guest RAM (writes vanish when the VM stops); the rest
#     of / is read-only;
#   * the command runs under bash in the current directory with stdin from
#     /dev/null, HOME=DOTNET_CLI_HOME=/root (the RAM overlay), the host's PATH,
#     CI and the variables named in VM_PASSENV; its stdout and stderr come out
#     on ours.  No tty is needed (CI).
#   * no module is loaded for the command: tests `modprobe ublk_drv` when they
#     want it, or set VM_MODPROBE.
#
# Exit status: the command's.  125: the VM died (boot failure, guest panic,
# timeout) before the command finished.  A VM that dies before the command
# started is booted once more (logged on stderr); a command that started is
# never run again.
#
# Env knobs (default):
#   VM_KERNEL (trixie)   kernel-<profile> link made by vm-setup.sh (trixie,
#                        backports, sid, custom), a kernel release unpacked
#                        under $UBLK_AOT_CACHE/vm/kernels, a kernel tree or a
#                        vmlinuz path
#   VM_CPUS (2)  VM_MEM (4G)
#   VM_TCG_THREAD (single)  single: all vCPUs in one host thread, the
#                        reliable choice for tests; multi: one host thread per
#                        vCPU, ~1.7x faster parallel guest work (benchmarks),
#                        but about 1 boot in 60 dies early
#   VM_CPU_MODEL (max)   QEMU -cpu
#   VM_TIMEOUT (2400)    seconds for the whole run, both boots included
#   VM_PASSENV           names of host variables to export in the guest
#   VM_MODPROBE          modules to load before the command, e.g.
#                        "ublk_drv ublks_max=128 null_blk nr_devices=2"
#                        (a word with '=' is a parameter of the module before)
#   VM_NOAUTOLOAD        modules udev must not load on its own at boot
#                        (passed as modprobe.blacklist=); default: the drivers
#                        for QEMU q35's AHCI/CD-ROM/watchdog/SMBus/input
#                        devices, kvm and crypto helpers, which cost ~30 s of
#                        boot under TCG.  Still loadable by name.  '' = none
#   VM_TIMING=1          log boot and command durations on stderr
#   VM_VERBOSE=1         show the kernel and init console on stderr
#   VM_VNG_ARGS          extra vng options (split on blanks)
#   UBLK_AOT_CACHE (/opt/ublk-aot)
set -euo pipefail
LOG_TAG=vm-run
# shellcheck source=scripts/vm-common.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/vm-common.sh"

usage() { echo "usage: vm-run.sh [-w DIR]... [--] 'COMMAND' | -- PROGRAM ARG..." >&2; exit 2; }

rwdirs=()
while (($#)); do
  case $1 in
    -w) (($# >= 2)) || usage
        d=$(realpath -e -- "$2") || die "-w $2: no such directory"
        [[ -d $d ]] || die "-w $2: not a directory"
        rwdirs+=("$d"); shift 2 ;;
    -w*) set -- -w "${1#-w}" "${@:2}" ;;
    -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
    --) shift; break ;;
    -*) usage ;;
    *) break ;;
  esac
done
(($#)) || usage
if (($# == 1)); then cmd=$1; else cmd=$(printf '%q ' "$@"); fi
((${#rwdirs[@]})) || rwdirs=("$PWD")
for d in "${rwdirs[@]}"; do   # what virtme-ng accepts in a share's path
  [[ $d =~ ^[a-zA-Z0-9_+/.-]+$ ]] || die "$d: only [a-zA-Z0-9_+/.-] can be in a shared folder's path"
done

VM_CPUS=${VM_CPUS:-2}
VM_MEM=${VM_MEM:-4G}
VM_TCG_THREAD=${VM_TCG_THREAD:-single}
VM_CPU_MODEL=${VM_CPU_MODEL:-max}
VM_TIMEOUT=${VM_TIMEOUT:-2400}
VM_NOAUTOLOAD=${VM_NOAUTOLOAD-ahci libahci libata sr_mod cdrom sg scsi_mod button evdev psmouse
  serio_raw pcspkr joydev i2c_i801 i2c_smbus lpc_ich iTCO_wdt iTCO_vendor_support intel_pmc_bxt
  i6300esb qemu_fw_cfg kvm kvm_amd kvm_intel irqbypass ccp aesni_intel crypto_simd cryptd gf128mul
  ghash_clmulni_intel crc32_pclmul crct10dif_pclmul sha1_ssse3 sha256_ssse3 sha512_ssse3 bochs drm}
[[ $VM_TCG_THREAD == single || $VM_TCG_THREAD == multi ]] || die "VM_TCG_THREAD must be single or multi"
[[ $VM_TIMEOUT =~ ^[0-9]+$ ]] || die "VM_TIMEOUT must be a number of seconds"

# ------------------------------------------------------------- the kernel
k=${VM_KERNEL:-trixie}
if [[ $k != */* ]]; then
  if [[ -e $VM_DIR/kernel-$k ]]; then k=$VM_DIR/kernel-$k; else k=$VM_DIR/kernels/$k; fi
fi
if [[ -d $k ]]; then
  k=$(readlink -f "$k")
  k=$k/boot/vmlinuz-$(basename "$k")
fi
[[ -r $k ]] || { log "no kernel at $k: run scripts/vm-setup.sh (KERNEL=...)"; exit 125; }
command -v vng >/dev/null || { log "vng not installed: run scripts/vm-setup.sh"; exit 125; }

# ------------------------------------------------------ the guest script
# A private folder shared read-write, where the guest writes the "started"
# marker (its very first action) and the command's status.  It lives under
# the host's /run: the guest mounts a fresh tmpfs there before it mounts
# shares, so no copy-on-write overlay can hide it.
st_parent=/run
[[ -d $st_parent && -w $st_parent ]] || st_parent=${TMPDIR:-/tmp}
st=$(mktemp -d "$st_parent/vm-run.XXXXXX")
chmod 755 "$st"
vm_pid=$st/timeout.pid
cleanup() { rm -rf "$st"; }
trap cleanup EXIT
on_signal() {
  local sig=$1
  trap - INT TERM
  if [[ -s $vm_pid ]]; then kill -TERM "$(<"$vm_pid")" 2>/dev/null || true; fi
  wait 2>/dev/null || true
  log "stopped by SIG$sig"
  cleanup
  trap - EXIT
  [[ $sig == INT ]] && exit 130
  exit 143
}
trap 'on_signal INT' INT
trap 'on_signal TERM' TERM

modprobe_lines=()
for w in ${VM_MODPROBE:-}; do
  if [[ $w == *=* && ${#modprobe_lines[@]} -gt 0 ]]; then
    modprobe_lines[-1]+=" $(printf '%q' "$w")"
  else
    modprobe_lines+=("modprobe -- $(printf '%q' "$w")")
  fi
done

{
  echo '#!/bin/bash'
  printf ': > %q/started\n' "$st"           # first: the VM is up
  echo 'export HOME=/root DOTNET_CLI_HOME=/root LANG=C.UTF-8'
  echo 'export DOTNET_NOLOGO=1 DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1'
  for v in PATH CI ${VM_PASSENV:-}; do
    [[ $v =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "VM_PASSENV: bad name '$v'"
    if [[ -n ${!v+x} ]]; then printf 'export %s=%q\n' "$v" "${!v}"; fi
  done
  printf 'rc_file=%q/rc\n' "$st"
  # The shared folders.  virtme-init mounts its copy-on-write overlays (/tmp,
  # /home, /opt, ...) in the background, so one that lands late would hide a
  # share below it (a checkout under /tmp, say).  So vng mounts each share at
  # $st/share<N>, and the guest binds it onto its real path once every overlay
  # is in place.  (A 9p tag cannot be mounted twice, hence no remount later.)
  cat <<'EOF'
want=()   # overlay mount points, symlinks resolved (/lib -> usr/lib)
for kv in $(</proc/cmdline); do
  [[ $kv == virtme_rw_overlay*=* ]] && want+=("$(readlink -f "${kv#*=}")")
done
SECONDS=0
while :; do
  mounts=$(</proc/mounts) pending=
  for d in "${want[@]}"; do
    [[ $mounts == *" $d overlay "* ]] || { pending=$d; break; }
  done
  [[ -n $pending ]] || break
  if ((SECONDS >= 20)); then echo "vm-run: guest: overlay $pending still missing" >&2; break; fi
  sleep 0.1
done
EOF
  for i in "${!rwdirs[@]}"; do
    printf 'mkdir -p %q && mount --bind %q %q || { echo %q >&2; echo 125 > "$rc_file"; exit 125; }\n' \
      "${rwdirs[i]}" "$st/share$i" "${rwdirs[i]}" "vm-run: guest: cannot bind the share ${rwdirs[i]}"
  done
  printf 'cd %q || { echo 126 > "$rc_file"; exit 126; }\n' "$PWD"
  for l in "${modprobe_lines[@]}"; do
    printf '%s || { rc=$?; echo %q >&2; echo $rc > "$rc_file"; exit $rc; }\n' "$l" "vm-run: guest: $l failed"
  done
  printf 'bash -c %q </dev/null\n' "$cmd"
  echo 'rc=$?'
  echo 'echo $rc > "$rc_file"'
  echo 'exit $rc'
} > "$st/guest.sh"

vng_args=(--run "$k" --disable-kvm --force-9p --cpus "$VM_CPUS" --memory "$VM_MEM"
          --overlay-rwdir=/root --rwdir="$st=$st")
# GUEST=HOST form: virtme-ng 1.35 mis-checks a bare absolute path, and wants
# the guest path to exist on the host too.
for i in "${!rwdirs[@]}"; do
  mkdir "$st/share$i"
  vng_args+=(--rwdir="$st/share$i=${rwdirs[i]}")
done
noautoload=$(echo "$VM_NOAUTOLOAD" | xargs | tr ' ' ',')
[[ -z $noautoload ]] || vng_args+=(--append "modprobe.blacklist=$noautoload")
if [[ ${VM_VERBOSE:-0} == 1 ]]; then vng_args+=(--verbose); fi
# shellcheck disable=SC2206  # word splitting wanted
vng_args+=(${VM_VNG_ARGS:-})
vng_args+=(--qemu-opts="-cpu $VM_CPU_MODEL -accel tcg,thread=$VM_TCG_THREAD"
           --exec "bash $st/guest.sh")

# One boot.  stdin is /dev/null (no tty needed, no SIGTTIN in background
# jobs).  QEMU reopens /proc/self/fd/1 and 2, which fails on sockets, so
# stdout and stderr always reach ours through pipes.  `timeout` leads its own
# process group, so killing it (on timeout or our INT/TERM) takes QEMU along.
boot() {
  local left=$1
  # shellcheck disable=SC2016
  { bash -c 'echo $$ > "$0"; exec "$@"' "$vm_pid" \
      timeout -k 15 "$left" vng "${vng_args[@]}" </dev/null 2>&1 1>&3 3>&- | cat >&2; } 3>&1 | cat
}

deadline=$((SECONDS + VM_TIMEOUT))
for attempt in 1 2; do
  rm -f "$st/started" "$st/rc" "$vm_pid"
  left=$((deadline - SECONDS))
  ((left > 0)) || left=1
  t_boot=$SECONDS
  launched=$(date +%s)
  set +e
  boot "$left" &
  wait $!
  status=$?
  set -e
  if [[ ${VM_TIMING:-0} == 1 && -e $st/started ]]; then
    up=$(($(stat -c %Y "$st/started") - launched))
    log "timing: boot to command ${up} s, whole run $((SECONDS - t_boot)) s (attempt $attempt)"
  fi
  [[ -s $st/rc ]] && exit "$(<"$st/rc")"
  timed_out=0
  ((SECONDS - t_boot < left)) || timed_out=1
  if [[ -e $st/started ]]; then
    if ((timed_out)); then
      log "timed out after $((SECONDS - t_boot)) s (VM_TIMEOUT=$VM_TIMEOUT) while the command ran"
    else
      log "VM died while the command ran (vng status $status); not rerunning it (VM_VERBOSE=1 shows the console)"
    fi
    exit 125
  fi
  if ((timed_out)); then
    log "timed out after $((SECONDS - t_boot)) s before the command started (VM_TIMEOUT=$VM_TIMEOUT)"
    exit 125
  fi
  if ((attempt == 1)); then
    log "VM died before the command started; retrying once"
  else
    log "VM died before the command started again (vng status $status); giving up (VM_VERBOSE=1 shows the console)"
  fi
done
exit 125
