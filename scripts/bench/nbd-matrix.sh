#!/usr/bin/env bash
# nbd-matrix.sh - ublk-aot's nbd backend against the kernel's own NBD client
# (nbd.ko configured by nbd-client) on the same nbdkit memory export, in one
# boot.  Runs as root on a machine whose kernel has ublk_drv and nbd (the VM
# that `scripts/bench.sh nbd` boots).
#
#   nbd-matrix.sh OUTDIR
#
# One nbdkit process (memory plugin, a unix socket) serves both clients;
# the export is written in full once, so reads return stored data, not holes.
# Each round runs, one after the other: ublk-aot with 1 queue, ublk-aot with
# 1 queue and --poll BENCH_POLL, nbd-client with 1 connection (the workloads
# of WORKLOADS with 1 queue), then the same with 2 queues and nbd-client -C 2
# (the 2-queue workloads).  Odd rounds start with ublk-aot, even rounds with
# nbd.  One fio process per device, its workloads
# separated by stonewall.
#
# Writes OUTDIR/meta.env, OUTDIR/runs/T.qQ.rN.json (fio JSON), .err (server
# stderr), OUTDIR/matrix.log.  scripts/bench/pair-report.py reads them.
#
# Env (defaults): BENCH_AOT (OUTDIR/ublk-aot)  BENCH_ROUNDS (3)
#   BENCH_RUNTIME (4) BENCH_RAMP (1)   seconds per fio job: RAMP + RUNTIME
#   BENCH_NBD_SIZE (256M)             the export's size
#   BENCH_POLL (200)                  --poll USECS of the aotpoll target
set -uo pipefail

OUT=$(realpath -e "${1:?usage: nbd-matrix.sh OUTDIR}") || exit 2
AOT=${BENCH_AOT:-$OUT/ublk-aot}
ROUNDS=${BENCH_ROUNDS:-3}
RUNTIME=${BENCH_RUNTIME:-4}
RAMP=${BENCH_RAMP:-1}
SIZE=${BENCH_NBD_SIZE:-256M}
POLL=${BENCH_POLL:-200}
DEPTH=128                 # ublk queue depth; nbd.ko's tag set has 128 per connection
NCPU=$(nproc)
FIO_CPU=$((NCPU - 1))

# name         rw        bs    iodepth/job  jobs  queues (= nbd connections)
WORKLOADS="
rr4k-qd1       randread  4k    1            1     1
rr4k-qd64      randread  4k    64           1     1
rw4k-qd64      randwrite 4k    64           1     1
sr128k-qd16    read      128k  16           1     1
sw128k-qd16    write     128k  16           1     1
rr4k-qd128-2q  randread  4k    64           2     2
"

WORK=/run/ublk-nbd-bench
SOCK=$WORK/nbd.sock
mkdir -p "$OUT/runs" "$WORK"
LOG_TAG=bench-nbd
# shellcheck source=scripts/bench/pair-common.sh
source "$(dirname "$0")/pair-common.sh"   # log, start_aot/stop_aot, start_nbd/stop_nbd, run_fio

NBDKIT_PID=""
# shellcheck disable=SC2317  # the EXIT trap
cleanup() {
  set +e
  [[ -n $SRV_PID ]] && stop_aot
  [[ -n $NBD_DEV ]] && stop_nbd
  [[ -n $NBDKIT_PID ]] && { kill "$NBDKIT_PID"; wait "$NBDKIT_PID"; }
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

start_nbdkit() {
  rm -f "$SOCK"
  nbdkit --foreground --unix "$SOCK" memory "$SIZE" 2>"$OUT/nbdkit.err" &
  NBDKIT_PID=$!
  local i
  for ((i = 0; i < 300; i++)); do [[ -S $SOCK ]] && return 0; sleep 0.1; done
  log "nbdkit did not come up: $(tr '\n' ' ' < "$OUT/nbdkit.err")"
  return 1
}

one() {   # one TARGET QUEUES ROUND
  local t=$1 q=$2 r=$3 base=$OUT/runs/$1.q$2.r$3
  case $t in
    aot) start_aot "nbd+unix:///?socket=$SOCK" "$q" "$base.err" || return 1; run_fio "$base" "$q"; stop_aot ;;
    aotpoll) start_aot "nbd+unix:///?socket=$SOCK" "$q" "$base.err" --poll "$POLL" || return 1; run_fio "$base" "$q"; stop_aot ;;
    nbd) start_nbd "$SOCK" "$q" "$base.err" || return 1; run_fio "$base" "$q"; stop_nbd ;;
  esac
  log "$t q$q round $r done"
}

modprobe ublk_drv || { log "no ublk_drv"; exit 1; }
modprobe nbd nbds_max=1 || { log "no nbd module"; exit 1; }
command -v nbd-client >/dev/null || { log "no nbd-client"; exit 1; }
start_nbdkit || exit 1
{
  echo "kernel=$(uname -r)"
  echo "cpus=$NCPU"
  echo "fio=$(fio --version)"
  echo "nbdkit=$(nbdkit --version | head -n1)"
  echo "nbd_client=nbd-client $(nbd-client -V 2>&1 | grep -o '[0-9][0-9.]*' | head -n1)"
  echo "export=nbdkit memory $SIZE over a unix socket"
  echo "rounds=$ROUNDS, fio ramp $RAMP s + $RUNTIME s, depth $DEPTH"
  echo "targets=aot:ublk-aot nbd|aotpoll:ublk-aot nbd --poll $POLL|nbd:kernel nbd"
  echo "ratios=aot/nbd|aotpoll/nbd"
  echo "workloads=rr4k-qd1:4k random read, QD1|rr4k-qd64:4k random read, QD64|rw4k-qd64:4k random write, QD64|sr128k-qd16:128k sequential read, QD16|sw128k-qd16:128k sequential write, QD16|rr4k-qd128-2q:4k random read, 2 jobs x QD64, 2 queues / 2 connections"
  echo "markers=nbd-results"
} > "$OUT/meta.env"

# Fill the export once (through ublk-aot), so every read finds stored data.
start_aot "nbd+unix:///?socket=$SOCK" 1 "$OUT/fill.err" || exit 1
log "filling the $SIZE export"
fio --name=fill --filename="$DEV" --ioengine=io_uring --direct=1 --rw=write --bs=1M --iodepth=8 \
  --refill_buffers=1 --output="$OUT/fill.txt" >/dev/null 2>&1 || { log "fill failed"; exit 1; }
stop_aot

status=0
for ((r = 1; r <= ROUNDS; r++)); do
  if ((r % 2)); then order="aot aotpoll nbd"; else order="nbd aotpoll aot"; fi
  for q in 1 2; do
    for t in $order; do one "$t" "$q" "$r" || status=1; done
  done
done
log "done (status $status)"
exit $status
