#!/usr/bin/env bash
# qcow2-matrix.sh - ublk-aot's qcow2 backend against qemu-nbd with the
# kernel's nbd client on the same image, and against ublk-aot's file backend
# on the same data as a raw image, in one boot.  Runs as root on a machine
# whose kernel has ublk_drv and nbd and which has qemu-utils and nbd-client
# (the VM that `scripts/bench.sh qcow2` boots).
#
#   qcow2-matrix.sh OUTDIR
#
# Targets: q2 = ublk-aot --backend qcow2:disk.qcow2 (1 queue, its limit);
# qn = qemu-nbd -f qcow2 disk.qcow2 over a unix socket + nbd-client (1
# connection); raw = ublk-aot --backend file:disk.raw,direct=off (1 queue),
# disk.raw being `qemu-img convert -O raw` of disk.qcow2.  disk.qcow2 (v3, 64 KiB
# clusters, made by qemu-img create) is filled in full through ublk-aot
# first, so the allocated-image rows measure I/O to allocated clusters.  The
# "allocating" row runs 4k random writes on a fresh, empty image per target
# and round (qemu-img create for q2 and qn; a new sparse file for raw).
# Images live on tmpfs (/dev/shm) and every target does buffered I/O (the
# qcow2 backend always, qemu-nbd by its default cache=writeback, the file
# backend by direct=off: tmpfs takes O_DIRECT since Linux 6.6, but through a
# slower path), so a flush costs little and the rows measure the servers.
# Rounds alternate the order of the targets.  One fio process per device.
#
# Writes OUTDIR/meta.env, OUTDIR/runs/T.q1.rN.json (+ .alloc.json), .err,
# OUTDIR/matrix.log.  scripts/bench/pair-report.py reads them.
#
# Env (defaults): BENCH_AOT (OUTDIR/ublk-aot)  BENCH_ROUNDS (3)
#   BENCH_RUNTIME (4) BENCH_RAMP (1)   seconds per fio job: RAMP + RUNTIME
#   BENCH_QCOW2_SIZE (256M)           the image's virtual size
set -uo pipefail

OUT=$(realpath -e "${1:?usage: qcow2-matrix.sh OUTDIR}") || exit 2
AOT=${BENCH_AOT:-$OUT/ublk-aot}
ROUNDS=${BENCH_ROUNDS:-3}
RUNTIME=${BENCH_RUNTIME:-4}
RAMP=${BENCH_RAMP:-1}
SIZE=${BENCH_QCOW2_SIZE:-256M}
DEPTH=128
NCPU=$(nproc)
FIO_CPU=$((NCPU - 1))

# name          rw        bs    iodepth/job  jobs  queues
WORKLOADS="
rr4k-qd1        randread  4k    1            1     1
rr4k-qd32       randread  4k    32           1     1
rw4k-qd32       randwrite 4k    32           1     1
sr128k-qd16     read      128k  16           1     1
sw128k-qd16     write     128k  16           1     1
rw4k-qd32-new   randwrite 4k    32           1     1
"
ALLOCATED="rr4k-qd1 rr4k-qd32 rw4k-qd32 sr128k-qd16 sw128k-qd16"
FRESH="rw4k-qd32-new"

WORK=/dev/shm/ublk-qcow2-bench
SOCK=$WORK/qemu-nbd.sock
IMG=$WORK/disk.qcow2 RAW=$WORK/disk.raw NEW=$WORK/new.img
rm -rf "$WORK"
mkdir -p "$OUT/runs" "$WORK"
LOG_TAG=bench-qcow2
# shellcheck source=scripts/bench/pair-common.sh
source "$(dirname "$0")/pair-common.sh"   # log, start_aot/stop_aot, start_nbd/stop_nbd, run_fio

QNBD_PID=""
# shellcheck disable=SC2317  # the EXIT trap
cleanup() {
  set +e
  [[ -n $SRV_PID ]] && stop_aot
  [[ -n $NBD_DEV ]] && stop_nbd
  [[ -n $QNBD_PID ]] && stop_qemu_nbd
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# start_qemu_nbd IMAGE ERRFILE: qemu-nbd serving IMAGE on $SOCK (the defaults:
# cache=writeback, aio=threads; discards passed down).
start_qemu_nbd() {
  local i
  rm -f "$SOCK"
  qemu-nbd -f qcow2 -k "$SOCK" --discard=unmap "$1" 2>"$2" &
  QNBD_PID=$!
  for ((i = 0; i < 300; i++)); do [[ -S $SOCK ]] && return 0; sleep 0.1; done
  log "qemu-nbd did not come up: $(tr '\n' ' ' < "$2" | cut -c1-300)"
  stop_qemu_nbd; return 1
}

stop_qemu_nbd() {
  kill "$QNBD_PID" 2>/dev/null
  wait "$QNBD_PID" 2>/dev/null
  QNBD_PID=""
}

# serve TARGET IMAGE ERRFILE: the target's device on IMAGE (sets DEV).
serve() {
  case $1 in
    q2) start_aot "qcow2:$2" 1 "$3" ;;
    raw) start_aot "file:$2,direct=off" 1 "$3" ;;
    qn) start_qemu_nbd "$2" "$3.qemu-nbd" && start_nbd "$SOCK" 1 "$3" ;;
  esac
}

unserve() {
  case $1 in
    q2|raw) stop_aot ;;
    qn) stop_nbd; stop_qemu_nbd ;;
  esac
}

one() {   # one TARGET ROUND: the allocated-image rows, then the fresh-image row
  local t=$1 r=$2 base=$OUT/runs/$1.q1.r$2 img=$IMG rc=0
  [[ $t == raw ]] && img=$RAW
  serve "$t" "$img" "$base.err" || return 1
  run_fio "$base" 1 "$ALLOCATED" || rc=1
  unserve "$t"
  rm -f "$NEW"
  if [[ $t == raw ]]; then truncate -s "$SIZE" "$NEW"; else qemu-img create -q -f qcow2 -o cluster_size=65536 "$NEW" "$SIZE"; fi
  serve "$t" "$NEW" "$base.alloc.err" || return 1
  run_fio "$base.alloc" 1 "$FRESH" || rc=1
  unserve "$t"
  rm -f "$NEW"
  log "$t round $r done"
  return $rc
}

modprobe ublk_drv || { log "no ublk_drv"; exit 1; }
modprobe nbd nbds_max=1 || { log "no nbd module"; exit 1; }
for c in nbd-client qemu-nbd qemu-img; do command -v $c >/dev/null || { log "no $c"; exit 1; }; done

qemu-img create -q -f qcow2 -o cluster_size=65536 "$IMG" "$SIZE" || { log "qemu-img create failed"; exit 1; }
start_aot "qcow2:$IMG" 1 "$OUT/fill.err" || exit 1
log "filling the $SIZE image through ublk-aot"
fio --name=fill --filename="$DEV" --ioengine=io_uring --direct=1 --rw=write --bs=1M --iodepth=8 \
  --refill_buffers=1 --output="$OUT/fill.txt" >/dev/null 2>&1 || { log "fill failed"; exit 1; }
stop_aot
qemu-img check "$IMG" > "$OUT/check.txt" 2>&1 || { log "qemu-img check after the fill: $(tr '\n' ' ' < "$OUT/check.txt")"; exit 1; }
qemu-img convert -O raw "$IMG" "$RAW" || { log "qemu-img convert failed"; exit 1; }
{
  echo "kernel=$(uname -r)"
  echo "cpus=$NCPU"
  echo "fio=$(fio --version)"
  echo "qemu=$(qemu-nbd --version | head -n1)"
  echo "nbd_client=nbd-client $(nbd-client -V 2>&1 | grep -o '[0-9][0-9.]*' | head -n1)"
  echo "export=a $SIZE qcow2 v3 image, 64 KiB clusters, on tmpfs, filled through ublk-aot (the raw target: its qemu-img convert, file:...,direct=off); buffered I/O in all three"
  echo "rounds=$ROUNDS, fio ramp $RAMP s + $RUNTIME s, depth $DEPTH, 1 queue / 1 connection"
  echo "targets=q2:ublk-aot qcow2|qn:qemu-nbd + kernel nbd|raw:ublk-aot file (raw)"
  echo "workloads=rr4k-qd1:4k random read, QD1|rr4k-qd32:4k random read, QD32|rw4k-qd32:4k random write, QD32|sr128k-qd16:128k sequential read, QD16|sw128k-qd16:128k sequential write, QD16|rw4k-qd32-new:4k random write, QD32, fresh image (allocating)"
  echo "markers=qcow2-results"
} > "$OUT/meta.env"

status=0
for ((r = 1; r <= ROUNDS; r++)); do
  case $((r % 3)) in 1) order="q2 qn raw" ;; 2) order="qn raw q2" ;; 0) order="raw q2 qn" ;; esac
  for t in $order; do one "$t" "$r" || status=1; done
done
qemu-img check "$IMG" >> "$OUT/check.txt" 2>&1 || { log "qemu-img check after the rounds: $(tail -n 3 "$OUT/check.txt" | tr '\n' ' ')"; status=1; }
log "done (status $status)"
exit $status
