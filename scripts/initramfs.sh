#!/usr/bin/env bash
# initramfs.sh - an initramfs that serves a ublk device with nothing but a static busybox, out/ublk-aot and the
# kernel's modules, and a boot of it under QEMU (no share of the host's filesystem).
#
#   initramfs.sh build OUT.cpio.gz   write the image
#   initramfs.sh boot [IMAGE]        build IMAGE if not given, boot the kernel with it under QEMU (TCG), print the
#                                    guest's console on stdout; exit 0 when the console shows UBLK-INITRAMFS PASS,
#                                    1 when a step failed, 124 when QEMU timed out (it is killed), 2 when a tool,
#                                    the kernel or the binary is missing (one line on stderr saying which)
#
# What the image holds (and nothing else):
#   /bin/busybox            the host's static busybox (Debian's busybox-static), applets linked at boot
#   /bin/ublk-aot           out/ublk-aot (static NativeAOT)
#   /lib/modules/*.ko       ublk_drv and what the filesystem needs, decompressed on the host, loaded in the order
#                           of /lib/modules/order: Debian's kernels build no block filesystem in, so ext2 (made by
#                           busybox mke2fs, mounted by the ext4 driver) brings crc16, mbcache, jbd2, crc32c, ext4
#   /init                   the steps below; each prints "UBLK-INITRAMFS ok STEP ..." on the console, a failure
#                           prints "UBLK-INITRAMFS FAIL STEP: WHAT" and the diagnostics, then the guest powers off
#
# The steps of /init (the recipe the README gives):
#   1. mount proc and devtmpfs (/dev/ublk-control, /dev/ublkcN and /dev/ublkbN appear there: no udev, no mknod);
#      insmod the modules in order; a tmpfs on /data (the backing file's home)
#   2. `ublk-aot features`; `ublk-aot serve --backend file:/data/disk.img,size=SIZE --recovery reissue &`, wait until
#      it prints /dev/ublkbN on stdout (the device is live then); its state file and control socket are in
#      /run/ublk-aot, which it creates itself
#   3. `ublk-aot list` before sysfs is mounted (it finds the device from /dev/ublkcN), then mount sysfs, list again
#   4. mke2fs the device, mount it, write 8 MiB of random data and a copy of busybox, umount, drop caches, mount
#      again and compare the sha256; drop caches and chroot into it: its own busybox (read through the device)
#      checksums the file again; umount
#   5. SIGKILL the server; `ublk-aot recover ID &` takes the device over from the state file; mount, checksum, umount
#   6. SIGTERM the server: exit 0, "/dev/ublkbN removed", no ublkcN/ublkbN/state file left; poweroff -f
#
# Env (default):
#   INITRAMFS_KERNEL (trixie)  kernel-<profile> link made by vm-setup.sh, a release unpacked under
#                              $UBLK_AOT_CACHE/vm/kernels, or a folder holding boot/vmlinuz-* and lib/modules/*
#   INITRAMFS_TIMEOUT (600)    seconds QEMU may run before it is killed
#   INITRAMFS_CPUS (2)  INITRAMFS_MEM (512M)  INITRAMFS_DISK (64M: the device's size, on the guest's tmpfs)
#   INITRAMFS_LOG              also keep the console in this file
#   UBLK_AOT_BINARY (out/ublk-aot)  BUSYBOX (/bin/busybox)  UBLK_AOT_CACHE (/opt/ublk-aot)
set -euo pipefail
LOG_TAG=initramfs
# shellcheck source=scripts/vm-common.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/vm-common.sh"
ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)

missing() { log "missing: $*"; exit 2; }
usage() { echo "usage: initramfs.sh build OUT.cpio.gz | boot [IMAGE]" >&2; exit 2; }

BUSYBOX=${BUSYBOX:-/bin/busybox}
BINARY=${UBLK_AOT_BINARY:-$ROOT/out/ublk-aot}
MODULES=(crc16 mbcache jbd2 crc32c_generic ext4 ublk_drv)   # load order
scratch=()
trap 'rm -rf "${scratch[@]}"' EXIT

# The kernel folder (holding boot/ and lib/modules/<release>/) and its release.
kernel_dir() {
  local k=${INITRAMFS_KERNEL:-trixie} d
  if [[ -d $k ]]; then d=$k
  elif [[ -e $VM_DIR/kernel-$k ]]; then d=$VM_DIR/kernel-$k
  elif [[ -d $VM_DIR/kernels/$k ]]; then d=$VM_DIR/kernels/$k
  else missing "kernel '$k': no $VM_DIR/kernel-$k (run: KERNEL=$k scripts/vm-setup.sh)"
  fi
  readlink -f "$d"
}

need_busybox() {
  [[ -x $BUSYBOX ]] || missing "$BUSYBOX (static busybox: apt-get install busybox-static, or run scripts/vm-setup.sh)"
  # A dynamic busybox would not run in an image without libc.
  if ! file -b "$BUSYBOX" 2>/dev/null | grep -q 'statically linked'; then
    missing "a static busybox: $BUSYBOX is not statically linked (apt-get install busybox-static)"
  fi
}

build() {
  local out=$1 kdir rel mdir stage m f
  need_busybox
  [[ -x $BINARY ]] || missing "$BINARY (run ./build.sh)"
  command -v xz >/dev/null || missing "xz (apt-get install xz-utils)"
  command -v gzip >/dev/null || missing "gzip"
  kdir=$(kernel_dir)
  rel=$(basename "$kdir")
  mdir=$kdir/lib/modules/$rel
  [[ -d $mdir ]] || missing "$mdir (kernel modules of $rel)"
  stage=$(mktemp -d "${TMPDIR:-/tmp}/ublk-initramfs.XXXXXX")
  scratch+=("$stage")
  mkdir -p "$stage"/{bin,dev,lib/modules,mnt,proc,sys,tmp}
  cp "$BUSYBOX" "$stage/bin/busybox"
  cp "$BINARY" "$stage/bin/ublk-aot"
  : > "$stage/lib/modules/order"
  for m in "${MODULES[@]}"; do
    f=$(find "$mdir/kernel" \( -name "$m.ko" -o -name "$m.ko.xz" -o -name "$m.ko.zst" -o -name "$m.ko.gz" \) -print -quit)
    [[ -n $f ]] || missing "module $m in $mdir"
    case $f in
      *.xz) xz -dc "$f" > "$stage/lib/modules/$m.ko" ;;
      *.gz) gzip -dc "$f" > "$stage/lib/modules/$m.ko" ;;
      *.zst) command -v zstd >/dev/null || missing "zstd (for $f)"; zstd -qdc "$f" > "$stage/lib/modules/$m.ko" ;;
      *) cp "$f" "$stage/lib/modules/$m.ko" ;;
    esac
    echo "$m" >> "$stage/lib/modules/order"
  done
  write_init > "$stage/init"
  chmod 755 "$stage/init" "$stage/bin/busybox" "$stage/bin/ublk-aot"
  mkdir -p "$(dirname "$out")"
  # newc is the format the kernel unpacks (Documentation/driver-api/early-userspace/buffer-format.rst);
  # busybox's own cpio writes it, so no cpio package is needed.
  (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | "$BUSYBOX" cpio -o -H newc 2>/dev/null) | gzip -6 > "$out.tmp"
  mv -f "$out.tmp" "$out"
  log "built $out ($(stat -c %s "$out") bytes; kernel $rel; modules ${MODULES[*]})"
}

# The guest's /init. Nothing of the host is visible to it: no /etc, no /run, no udev.
write_init() {
  cat <<'EOF'
#!/bin/busybox sh
# /init of the ublk-aot initramfs (written by scripts/initramfs.sh)
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
/bin/busybox --install -s /bin
export PATH=/bin
M=UBLK-INITRAMFS
ok() { echo "$M ok $*"; }
fail() {
  echo "$M FAIL $1: $2"
  echo "--- serve stderr"; cat /tmp/serve.err 2>/dev/null
  echo "--- ublk devices"; ls /dev/ | grep ublk; ls /sys/class/ublk-char/ 2>&1
  echo "--- dmesg (tail)"; dmesg | tail -n 30
  echo "$M END"
  poweroff -f
}
arg() { sed -n "s/.*\\b$1=\\([^ ]*\\).*/\\1/p" /proc/cmdline; }
DISK=$(arg ublk_initramfs.disk); DISK=${DISK:-64M}
ok mounts "proc devtmpfs (sysfs later); kernel $(uname -r); $(nproc) cpu(s)"

for m in $(cat /lib/modules/order); do
  insmod /lib/modules/$m.ko || fail modules "insmod $m.ko"
done
[ -c /dev/ublk-control ] || fail modules "no /dev/ublk-control after insmod ublk_drv"
ok modules "$(tr '\n' ' ' < /lib/modules/order)"

mkdir -p /data && mount -t tmpfs -o size=256M tmpfs /data || fail tmpfs "mount tmpfs /data"
ok tmpfs /data

# The server in the background; it prints /dev/ublkbN on stdout once the device is live.
/bin/ublk-aot features > /tmp/features.out 2>&1 || { cat /tmp/features.out; fail features "ublk-aot features exited $?"; }
ok features "$(head -n 1 /tmp/features.out)"

# live STEP WHAT: wait until the server started last printed /dev/ublkbN (it does once the device is live).
live() {
  i=0
  until grep -q '^/dev/ublkb' /tmp/serve.out 2>/dev/null; do
    kill -0 $SERVER 2>/dev/null || { wait $SERVER; fail $1 "$2 exited ($?) before the device was live"; }
    i=$((i + 1)); [ $i -le 1200 ] || fail $1 "no device after 120 s"
    sleep 0.1
  done
}
# The server in the background, recoverable (its state file goes to /run/ublk-aot, which nothing made before).
/bin/ublk-aot serve --backend file:/data/disk.img,size=$DISK --recovery reissue --stats > /tmp/serve.out 2> /tmp/serve.err &
SERVER=$!
live serve "ublk-aot serve"
DEV=$(head -n 1 /tmp/serve.out)
ID=${DEV#/dev/ublkb}
[ -b "$DEV" ] || fail serve "$DEV is not a block device in devtmpfs"
[ -f /run/ublk-aot/$ID.json ] || fail serve "no state file /run/ublk-aot/$ID.json"
[ -S /run/ublk-aot/$ID.sock ] || fail serve "no control socket /run/ublk-aot/$ID.sock"
ok serve "$DEV pid $SERVER, /run/ublk-aot/$ID.json and $ID.sock: $(grep serving /tmp/serve.err)"

# list finds the device in /sys/class/ublk-char, or from the /dev/ublkcN nodes while sysfs is not mounted.
/bin/ublk-aot list > /tmp/list.out 2>&1 || { cat /tmp/list.out; fail list-nosysfs "ublk-aot list exited $?"; }
grep -q "ublkb$ID" /tmp/list.out || { cat /tmp/list.out; fail list-nosysfs "$DEV not in ublk-aot list without sysfs"; }
ok list-nosysfs "$(grep "ublkb$ID" /tmp/list.out)"
mount -t sysfs sysfs /sys || fail list "mount sysfs"
/bin/ublk-aot list > /tmp/list.out 2>&1 || { cat /tmp/list.out; fail list "ublk-aot list exited $?"; }
grep -q "ublkb$ID" /tmp/list.out || { cat /tmp/list.out; fail list "$DEV not in ublk-aot list"; }
[ -e /sys/class/ublk-char/ublkc$ID ] || fail list "no /sys/class/ublk-char/ublkc$ID"
ok list "$(grep "ublkb$ID" /tmp/list.out)"

mke2fs -q "$DEV" > /tmp/mkfs.out 2>&1 || { cat /tmp/mkfs.out; fail mkfs "mke2fs $DEV"; }
ok mkfs "ext2 on $DEV"

mount -t ext2 "$DEV" /mnt || fail mount "mount -t ext2 $DEV /mnt"
ok mount "$DEV on /mnt"

dd if=/dev/urandom of=/mnt/data bs=64k count=128 2>/dev/null || fail write "dd to /mnt/data"
mkdir -p /mnt/bin && cp /bin/busybox /mnt/bin/busybox || fail write "cp busybox"
SUM=$(sha256sum /mnt/data | cut -d' ' -f1)
umount /mnt || fail write "umount $DEV"
ok write "8 MiB sha256 $SUM, busybox copied"

# Read back through the server, not the page cache.
echo 3 > /proc/sys/vm/drop_caches
blockdev --flushbufs "$DEV"
mount -t ext2 "$DEV" /mnt || fail readback "mount $DEV again"
BACK=$(sha256sum /mnt/data | cut -d' ' -f1)
[ "$BACK" = "$SUM" ] || fail readback "sha256 $BACK, written $SUM"
ok readback "sha256 $BACK"

# A program from the device: the device's own busybox, as the root of a chroot.
echo 3 > /proc/sys/vm/drop_caches
OUT=$(chroot /mnt /bin/busybox sha256sum /data) || fail chroot "chroot /mnt /bin/busybox sha256sum exited $?"
[ "${OUT%% *}" = "$SUM" ] || fail chroot "chroot's sha256 '$OUT', written $SUM"
ok chroot "/mnt/bin/busybox ran from $DEV: ${OUT%% *}"

umount /mnt || fail umount "umount /mnt"
ok umount

# The server dies; a new one takes the device over from the state file, and the data is still there.
kill -KILL $SERVER; wait $SERVER
mv /tmp/serve.err /tmp/serve-killed.err
/bin/ublk-aot recover $ID --stats > /tmp/serve.out 2> /tmp/serve.err &
SERVER=$!
live recover "ublk-aot recover $ID"
mount -t ext2 "$DEV" /mnt || fail recover "mount $DEV after recover"
BACK=$(sha256sum /mnt/data | cut -d' ' -f1)
umount /mnt || fail recover "umount $DEV after recover"
[ "$BACK" = "$SUM" ] || fail recover "sha256 $BACK after recover, written $SUM"
ok recover "SIGKILL, ublk-aot recover $ID (pid $SERVER): sha256 $BACK"

kill -TERM $SERVER
wait $SERVER; RC=$?
[ $RC -eq 0 ] || fail stop "serve exited $RC after SIGTERM"
i=0
while [ -e /sys/class/ublk-char/ublkc$ID ] || [ -e "$DEV" ] || [ -e /run/ublk-aot/$ID.json ]; do
  i=$((i + 1)); [ $i -le 100 ] || fail stop "ublkc$ID, $DEV or /run/ublk-aot/$ID.json still there 10 s after the server exited"
  sleep 0.1
done
grep -q "$DEV removed" /tmp/serve.err || fail stop "no '$DEV removed' from the server"
ok stop "serve exit 0, $DEV removed; $(grep -c '^stats queue' /tmp/serve.err) queue(s): $(grep '^stats queue' /tmp/serve.err | sed -n 's/.*\(alloc_bytes=[0-9]*\).*/\1/p' | tr '\n' ' ')"
echo "--- serve stderr"; cat /tmp/serve.err
echo "$M PASS"
echo "$M END"
poweroff -f
EOF
}

boot() {
  local img=${1:-} tmp="" kdir rel vmlinuz log rc
  command -v qemu-system-x86_64 >/dev/null || missing "qemu-system-x86_64 (apt-get install qemu-system-x86, or run scripts/vm-setup.sh)"
  command -v timeout >/dev/null || missing "timeout (coreutils)"
  kdir=$(kernel_dir)
  rel=$(basename "$kdir")
  vmlinuz=$kdir/boot/vmlinuz-$rel
  [[ -r $vmlinuz ]] || missing "$vmlinuz"
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/ublk-initramfs-boot.XXXXXX")
  scratch+=("$tmp")
  if [[ -z $img ]]; then img=$tmp/initramfs.cpio.gz; build "$img"; fi
  [[ -r $img ]] || missing "$img"
  log=${INITRAMFS_LOG:-$tmp/console.log}
  : > "$log"
  local t0=$SECONDS
  log "booting $rel with $img (TCG, ${INITRAMFS_CPUS:-2} cpu(s), ${INITRAMFS_MEM:-512M}, timeout ${INITRAMFS_TIMEOUT:-600} s)"
  # -nodefaults: no NIC, disk, CD-ROM or VGA; the only device the guest uses is the serial console.
  rc=0
  timeout --kill-after=10 "${INITRAMFS_TIMEOUT:-600}" qemu-system-x86_64 \
    -nodefaults -no-user-config -accel tcg -cpu max -smp "${INITRAMFS_CPUS:-2}" -m "${INITRAMFS_MEM:-512M}" \
    -display none -no-reboot -serial "file:$log" \
    -kernel "$vmlinuz" -initrd "$img" \
    -append "console=ttyS0 rdinit=/init panic=-1 ublk_initramfs.disk=${INITRAMFS_DISK:-64M}" \
    </dev/null || rc=$?
  tr -d '\r' < "$log"
  log "QEMU exit $rc after $((SECONDS - t0)) s"
  if ((rc == 124 || rc == 137)); then log "timed out after ${INITRAMFS_TIMEOUT:-600} s (QEMU killed)"; return 124; fi
  grep -q '^UBLK-INITRAMFS PASS' "$log" || return 1
  return 0
}

case ${1:-} in
  build) (($# == 2)) || usage; build "$2" ;;
  boot) (($# <= 2)) || usage; boot "${2:-}" ;;
  -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0" ;;
  *) usage ;;
esac
