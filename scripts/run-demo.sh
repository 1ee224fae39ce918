#!/usr/bin/env bash
# run-demo.sh — the main job: `ublk-aot serve` on the built-in default backend (mem:256M).
#
# On a host with ublk_drv (/dev/ublk-control present) this simply runs the server in the foreground
# (Ctrl-C stops it and removes the device): ./build.sh run [SERVE ARGS...]
# Where the host has no ublk (like our build machines), it boots the VM bench and shows the server
# working there: the device, a filesystem on it, a file written and read back, a clean shutdown.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/out/ublk-aot
args=("$@")
((${#args[@]})) || args=(--backend mem:256M)

if [[ -e /dev/ublk-control || ${UBLK_DEMO_IN_GUEST:-0} == 1 ]]; then
  if [[ ${UBLK_DEMO_IN_GUEST:-0} != 1 ]]; then exec "$BIN" serve "${args[@]}"; fi
  # ---- inside the VM: a scripted session ----
  modprobe ublk_drv
  out=$(mktemp) err=$(mktemp) mnt=$(mktemp -d)
  "$BIN" serve "${args[@]}" --stats >"$out" 2>"$err" &
  pid=$!
  for _ in $(seq 600); do [[ -s $out ]] && break; sleep 0.1; done
  dev=$(head -n1 "$out")
  [[ $dev == /dev/ublkb* ]] || { cat "$err" >&2; echo "demo: serve did not start" >&2; exit 1; }
  cat "$err"
  echo "== device: $dev ($(blockdev --getsize64 "$dev") bytes)"
  "$BIN" list
  echo "== mkfs.ext4 + mount"
  mkfs.ext4 -q -F "$dev"
  mount "$dev" "$mnt"
  head -c 16M /dev/urandom > "$mnt/hello.bin"
  sum=$(sha256sum < "$mnt/hello.bin")
  sync -f "$mnt/hello.bin"
  echo 3 > /proc/sys/vm/drop_caches
  [[ $(sha256sum < "$mnt/hello.bin") == "$sum" ]] || { echo "demo: read-back mismatch" >&2; exit 1; }
  echo "== wrote 16 MiB to $mnt/hello.bin, dropped caches, read it back: sha256 matches"
  df -h "$mnt" | tail -n1
  umount "$mnt"
  fsck.ext4 -fn "$dev" >/dev/null && echo "== fsck.ext4 -fn: clean"
  kill -TERM "$pid"
  wait "$pid"
  cat "$err" | tail -n +2
  [[ ! -e $dev ]] && echo "== $dev removed; server exited 0"
  exit 0
fi

echo "run-demo: this host has no /dev/ublk-control; running the demo in the VM bench" >&2
scripts/vm-setup.sh
UBLK_DEMO_IN_GUEST=1 VM_PASSENV="UBLK_DEMO_IN_GUEST" exec scripts/vm-run.sh -w "$PWD" -- scripts/run-demo.sh "${args[@]}"
