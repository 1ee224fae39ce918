#!/usr/bin/env bash
# nbd-trace.sh - where one 4k QD1 read's time goes, ublk-aot's nbd backend
# against the kernel's nbd client on the same nbdkit memory export (issue 13).
# Runs as root in the VM that `scripts/bench.sh nbd-trace` boots.
#
#   nbd-trace.sh OUTDIR
#
# For each target (ublk-aot with its queue thread on CPU 1 = fio's CPU,
# ublk-aot on CPU 0, nbd-client with one connection): a 5 s fio run with no
# tracing (OUTDIR/T.clean.json), then the same workload with scheduler,
# io_uring, block, nbd, workqueue and socket-syscall tracepoints enabled and
# a 0.2 s window of the ftrace buffer kept (OUTDIR/T.trace.txt).
# scripts/bench/nbd-trace.py turns the traces into per-request phases.
# Tracing slows every step (about 1.5-2x here): compare phases, not totals
# with the untraced runs.
set -uo pipefail
OUT=$(realpath -e "${1:?usage: nbd-trace.sh OUTDIR}") || exit 2
AOT=${BENCH_AOT:-$OUT/ublk-aot}
WORK=/run/ublk-nbd-trace
SOCK=$WORK/nbd.sock
T=/sys/kernel/tracing
mkdir -p "$WORK"
log() { echo "nbd-trace: [$(date +%T)] $*" >&2; }

modprobe ublk_drv || { log "no ublk_drv"; exit 1; }
modprobe nbd nbds_max=1 || { log "no nbd module"; exit 1; }
[[ -d $T/events ]] || mount -t tracefs nodev $T || { log "no tracefs"; exit 1; }
EVENTS="sched/sched_switch sched/sched_wakeup sched/sched_waking io_uring nbd block/block_rq_issue
  block/block_rq_complete workqueue/workqueue_execute_start syscalls/sys_enter_sendto syscalls/sys_exit_sendto
  syscalls/sys_enter_read syscalls/sys_exit_read syscalls/sys_enter_io_uring_enter syscalls/sys_exit_io_uring_enter"
echo 0 > $T/tracing_on
echo 8192 > $T/buffer_size_kb

SRV_PID="" NBDKIT_PID="" NBD_UP=""
# shellcheck disable=SC2317  # the EXIT trap
cleanup() {
  set +e
  echo 0 > $T/tracing_on; echo 0 > $T/events/enable
  [[ -n $SRV_PID ]] && { kill -TERM "$SRV_PID"; wait "$SRV_PID"; }
  [[ -n $NBD_UP ]] && nbd-client -d /dev/nbd0 >/dev/null 2>&1
  [[ -n $NBDKIT_PID ]] && { kill "$NBDKIT_PID"; wait "$NBDKIT_PID"; }
  rm -rf "$WORK"
}
trap cleanup EXIT
nbdkit --foreground --unix "$SOCK" memory 64M 2>"$OUT/nbdkit.err" &
NBDKIT_PID=$!
for ((i = 0; i < 100; i++)); do [[ -S $SOCK ]] && break; sleep 0.1; done
[[ -S $SOCK ]] || { log "nbdkit did not come up"; exit 1; }

fio4k() {   # fio4k DEV OUTPUT RUNTIME [RAMP]
  fio --name=qd1 --filename="$1" --ioengine=io_uring --direct=1 --rw=randread --bs=4k --iodepth=1 \
    --time_based=1 --runtime="$3" --ramp_time="${4:-0}" --cpus_allowed=1 --randrepeat=0 --norandommap=1 \
    --output-format=json --output="$2" >/dev/null 2>&1
}
reads() { awk '{ print $1 }' "/sys/block/${1#/dev/}/stat"; }

trace_target() {   # trace_target NAME DEV
  local name=$1 dev=$2 n0 i e fp
  echo 0 > $T/events/enable
  fio4k "$dev" "$OUT/$name.clean.json" 5 1 || { log "$name: fio failed"; return 1; }
  for e in $EVENTS; do echo 1 > "$T/events/$e/enable" || log "no event $e"; done
  n0=$(reads "$dev")
  fio4k "$dev" "$OUT/$name.fio.json" 8 & fp=$!
  # fio under TCG takes seconds to start: open the window only once it has done 1500 reads.
  for ((i = 0; i < 300; i++)); do (($(reads "$dev") > n0 + 1500)) && break; sleep 0.1; done
  echo > $T/trace; echo 1 > $T/tracing_on; sleep 0.2; echo 0 > $T/tracing_on
  cat $T/trace > "$OUT/$name.trace.txt"
  wait $fp
  echo 0 > $T/events/enable
  log "$name traced"
}

start_aot() {   # start_aot CPU: sets DEV
  local i dev=""
  : > "$WORK/aot.out"
  "$AOT" serve --backend "nbd+unix:///?socket=$SOCK" --queues 1 --depth 128 --cpus "$1" >"$WORK/aot.out" 2>"$OUT/aot$1.err" &
  SRV_PID=$!
  for ((i = 0; i < 300; i++)); do
    read -r dev < "$WORK/aot.out" 2>/dev/null
    [[ $dev == /dev/ublkb* && -b $dev ]] && break
    dev=""; sleep 0.1
  done
  [[ -n $dev ]] || { log "ublk-aot did not come up: $(head -c 300 "$OUT/aot$1.err")"; return 1; }
  DEV=$dev
}
stop_aot() { kill -TERM "$SRV_PID"; wait "$SRV_PID"; SRV_PID=""; }

start_aot 1 || exit 1
dd if=/dev/urandom of="$DEV" bs=1M count=64 oflag=direct status=none   # stored data, not holes
trace_target aot-cpu1 "$DEV" || exit 1
stop_aot
start_aot 0 || exit 1
trace_target aot-cpu0 "$DEV" || exit 1
stop_aot
nbd-client -u "$SOCK" /dev/nbd0 -C 1 -b 4096 >"$OUT/nbd-client.log" 2>&1 </dev/null || { log "nbd-client failed"; exit 1; }
NBD_UP=1
sleep 1
fio4k /dev/nbd0 "$OUT/warm.json" 3   # the first seconds after connecting ran at ~100 IOPS once
trace_target nbd /dev/nbd0 || exit 1
{ echo "kernel=$(uname -r)"; echo "nbdkit=$(nbdkit --version | head -n1)"; echo "fio=$(fio --version)"; } > "$OUT/meta.env"
log "done"
