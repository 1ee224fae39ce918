#!/usr/bin/env bash
# matrix.sh - the benchmark matrix itself: runs as root on a machine whose
# kernel has ublk_drv, null_blk and loop (the throw-away VM that
# scripts/bench.sh boots, or a real host: see docs/benchmarks.md).
#
#   matrix.sh OUTDIR
#
# For each round, for each target: start the device, run the fio matrix
# (one fio process, the workloads one after the other, separated by
# stonewall), stop it; workloads that want 2 ublk queues get a second device
# and fio run.  One fio process per device, because starting fio costs
# seconds under TCG (it loads ~60 shared libraries over 9p).  Rounds are the
# outer loop so that the samples of one figure are spread over the whole run
# (a burst of load on the host hits one sample of every target, not all
# samples of one target); report.py takes the median.
#
# Writes into OUTDIR (read by report.py):
#   meta.env                       kernel, CPUs, tool versions, parameters
#   runs/T.qQ.rN.json              fio JSON of target T, devices with Q ublk
#                                  queues, round N: one entry per workload
#   runs/T.qQ.rN.err               server stderr (ublk-aot: --stats lines)
#   extra/...                      syscalls per I/O (perf/strace) and the 10 s GC run
#   matrix.log                     what happened, with timestamps
#
# Env (defaults):
#   BENCH_AOT (OUTDIR/ublk-aot)    the ublk-aot binary
#   BENCH_KUBLK (OUTDIR/kublk)     the kernel selftest server
#   BENCH_ROUNDS (3)  BENCH_RUNTIME (3)  BENCH_RAMP (1)   seconds per fio job: RAMP + RUNTIME
#   BENCH_TARGETS     subset of: aot-null aot-null-huge aot-mem aot-file aot-file-fixed nullblk loop kublk-null kublk-loop
#                     (aot-null-huge: aot-null with --huge-buffers; aot-file-fixed: aot-file with --fixed-buffers;
#                     the A/B of each tuning in the same boot; the aot-* names without a mode run --io-mode auto)
#                     and the io-mode targets (zero copy and AUTO_BUF_REG need 7.x, batch I/O 7.0+):
#                       aot-null-M and aot-file-M, M = copy uc zc abr (--io-mode copy, user-copy, zero-copy,
#                       auto-buf-reg); aot-mem-copy, aot-mem-uc;
#                       kublk-null-F and kublk-loop-F, F = uc zc abr b (kublk add -u, -z, --auto_zc, -b);
#                       kublk-null and kublk-loop are kublk's copy mode.
#                     The word `modes` stands for the whole io-mode matrix ($MODE_TARGETS below).
#                     aot-null-copy-nolat: aot-null-copy with UBLK_AOT_NO_LATENCY=1 (the queues do not time
#                     requests): the A/B "do the live-stats counters cost anything"; the word `latency`
#                     stands for the pair (aot-null-copy aot-null-copy-nolat), run in one boot.
#   BENCH_WORKLOADS   subset of the names in WORKLOADS below
#   BENCH_EXTRAS (1)  0 skips the syscall and GC measurements
#   BENCH_SYSCALL_QDS (64)         queue depths of the 4k randread syscall measurement (old targets)
#   BENCH_SYSCALL_RUNS             TARGET:WORKLOAD pairs measured with perf (syscalls, CPU) and a
#                                  thread sampler (io-wq workers, process CPU); default: $SYSCALL_RUNS
#                                  below (the io-mode targets) plus the old set at BENCH_SYSCALL_QDS
#   BENCH_FILE_SIZE (1G)           backing file, on a tmpfs mounted for the run
#   BENCH_MEM_SIZE (256M)          ublk-aot mem: size (written in full first)
#
# Every fio run has --runtime plus an outer `timeout`; every device this
# script made is removed on exit, whatever the exit path.
set -uo pipefail

OUT=$(realpath -e "${1:?usage: matrix.sh OUTDIR}") || exit 2
AOT=${BENCH_AOT:-$OUT/ublk-aot}
KUBLK=${BENCH_KUBLK:-$OUT/kublk}
ROUNDS=${BENCH_ROUNDS:-3}
RUNTIME=${BENCH_RUNTIME:-3}
RAMP=${BENCH_RAMP:-1}
EXTRAS=${BENCH_EXTRAS:-1}
FILE_SIZE=${BENCH_FILE_SIZE:-1G}
DEPTH=128                      # ublk queue depth of both servers
# CPU placement, the same for every target: queue thread i of a ublk server
# on CPU i (kublk does this by itself: it takes a CPU of each queue's
# affinity set), a single fio job on the last CPU, two fio jobs on CPUs 0
# and 1.  Without it the scheduler decides per run whether fio and the
# server share a CPU, which changes batching and latency a lot.
NCPU=$(nproc)
FIO_CPU=$((NCPU - 1))
SIZE=1G                        # ublk-aot null size (null_blk: gb=1)
MEM_SIZE=${BENCH_MEM_SIZE:-256M}   # ublk-aot mem size; written in full before it is measured

OLD_TARGETS="aot-null aot-null-huge aot-mem aot-file aot-file-fixed nullblk loop kublk-null kublk-loop"
# The io-mode matrix: each ublk-aot mode against kublk in the same mode, and
# kublk's batch I/O (-b) as an A/B of kublk itself.  Each ublk-aot target is
# followed by its kublk reference, so the two samples of a ratio are taken
# about a minute apart, not half a round.
MODE_TARGETS="nullblk aot-null-copy kublk-null aot-null-uc kublk-null-uc aot-null-zc kublk-null-zc
  aot-null-abr kublk-null-abr kublk-null-b aot-mem-copy aot-mem-uc
  loop aot-file-copy kublk-loop aot-file-uc kublk-loop-uc aot-file-zc kublk-loop-zc
  aot-file-abr kublk-loop-abr kublk-loop-b"
LATENCY_TARGETS="aot-null-copy aot-null-copy-nolat"
# Per-I/O daemons (PER_IO_DAEMON, 6.16): kublk with two threads sharing the
# tags of its queues (--nthreads 2 --per_io_tasks), an A/B of kublk itself
# against kublk-null / kublk-loop (one thread per queue).
PIO_TARGETS="kublk-null-pio kublk-loop-pio"
ALL_TARGETS=$(echo $OLD_TARGETS $MODE_TARGETS aot-null-copy-nolat $PIO_TARGETS)
TARGETS=${BENCH_TARGETS:-$OLD_TARGETS}
TARGETS=$(for t in $TARGETS; do
            case $t in modes) echo $MODE_TARGETS ;; latency) echo $LATENCY_TARGETS ;; *) echo "$t" ;; esac
          done |
          tr -s ' \n' '\n' | awk 'NF && !seen[$0]++' | tr '\n' ' ')
TARGETS=${TARGETS% }
# Syscall/CPU runs of the io-mode targets: WORKLOAD is a name of WORKLOADS.
# (kublk-null and kublk-loop at 4k QD64 come from the old set below.)
SYSCALL_RUNS=${BENCH_SYSCALL_RUNS:-"aot-null-uc:rr4k-qd64 aot-file-uc:rr4k-qd64 aot-file-abr:rr4k-qd64 kublk-loop-abr:rr4k-qd64
  aot-file-copy:sr128k-qd16 kublk-loop:sr128k-qd16 aot-file-uc:sr128k-qd16 aot-file-zc:sr128k-qd16 kublk-loop-zc:sr128k-qd16
  aot-file-abr:sr128k-qd16 kublk-loop-abr:sr128k-qd16 aot-file-abr:sw128k-qd16 kublk-loop-abr:sw128k-qd16
  aot-mem-uc:sr128k-qd16 aot-null-uc:sr128k-qd16"}
# Profiles: TARGET:WORKLOAD pairs run once for 5 s under a system-wide
# `perf record -a -g` (cpu-clock: TCG has no PMU); the report (by thread
# name, binary and symbol) goes to extra/prof.T.W.txt.  None by default.
PROFILE_RUNS=${BENCH_PROFILE_RUNS:-}

# name         rw        bs    iodepth/job  jobs  ublk queues
WORKLOADS="
rr4k-qd1       randread  4k    1            1     1
rr4k-qd64      randread  4k    64           1     1
rw4k-qd1       randwrite 4k    1            1     1
rw4k-qd64      randwrite 4k    64           1     1
rr4k-qd128-2q  randread  4k    64           2     2
sr128k-qd16    read      128k  16           1     1
sw128k-qd16    write     128k  16           1     1
"
WANT_WORKLOADS=${BENCH_WORKLOADS:-$(awk 'NF { printf "%s ", $1 }' <<<"$WORKLOADS")}

WORK=/run/ublk-bench           # guest-local scratch (tmpfs in the VM)
TMPFS=$WORK/tmpfs
BACKING=$TMPFS/backing.img

mkdir -p "$OUT/runs" "$OUT/extra" "$WORK"
exec 3>>"$OUT/matrix.log"
log() { local m; m="[$(date +%T)] $*"; echo "$m" >&3; echo "bench: $m" >&2; }

# ------------------------------------------------------------- cleanup
DEV=""              # block device of the current run
SRV_PID=""          # ublk-aot server of the current run
AOT_DEV_ID=""       # its device id
KUBLK_ID=""         # current kublk device id
LOOP_DEV=""         # current loop device
NULLBLK_LOADED=0
TMPFS_MOUNTED=0

# shellcheck disable=SC2317  # invoked by the EXIT trap
cleanup() {
  set +e
  [[ -n $SRV_PID ]] && stop_aot
  [[ -n $KUBLK_ID ]] && stop_kublk
  [[ -n $LOOP_DEV ]] && { losetup -d "$LOOP_DEV"; LOOP_DEV=""; }
  ((NULLBLK_LOADED)) && { modprobe -r null_blk; NULLBLK_LOADED=0; }
  ((TMPFS_MOUNTED)) && { umount "$TMPFS"; TMPFS_MOUNTED=0; }
}
trap 'cleanup' EXIT
trap 'log "interrupted"; exit 130' INT TERM

# ---------------------------------------------------------------- fio
# fio_job NAME RW BS QD JOBS RUNTIME RAMP: one job section (stonewalled).
fio_job() {
  local name=$1 rw=$2 bs=$3 qd=$4 jobs=$5 rt=$6 ramp=$7
  printf '[%s]\nstonewall\nrw=%s\nbs=%s\niodepth=%s\nnumjobs=%s\nruntime=%s\nramp_time=%s\n' \
    "$name" "$rw" "$bs" "$qd" "$jobs" "$rt" "$ramp"
  # Several jobs: one per CPU, so each drives its own blk-mq hardware queue.
  if ((jobs > 1)); then printf 'cpus_allowed=0-%s\ncpus_allowed_policy=split\n' $((jobs - 1))
  else printf 'cpus_allowed=%s\n' "$FIO_CPU"; fi
  echo
}

# fio_prefill_job: write the whole device once (report.py ignores this job).
# The mem backend's pages are allocated on first write; without this the
# write workloads would measure page faults of fresh memory, and reads the
# kernel's shared zero page.
fio_prefill_job() {
  printf '[prefill]\nstonewall\nrw=write\nbs=512k\niodepth=16\nnumjobs=1\ntime_based=0\nsize=100%%\nruntime=300\nramp_time=0\n\n'
}

# run_fio OUT.json DEV SECONDS JOBS-TEXT: run the job sections on DEV with a
# hard limit (SECONDS of fio time + slack); 0 if fio produced its JSON.
# FIO_WRAP (array) may name a command that runs fio, e.g. perf stat ... --.
FIO_WRAP=()
run_fio() {
  local json=$1 dev=$2 secs=$3 jobs=$4 base=${1%.json}
  {
    printf '[global]\nfilename=%s\nioengine=io_uring\ndirect=1\ntime_based\n' "$dev"
    # lat_percentiles: percentiles of the total latency (submission to
    # completion), not only of the completion part: when fio and the server
    # share a CPU, an I/O can complete inside fio's submit call.
    printf 'norandommap\nrandrepeat=0\ngroup_reporting\nlat_percentiles=1\n\n'
    printf '%s\n' "$jobs"
  } > "$base.fio"
  rm -f "$json"
  timeout -k 10 $((secs + 60)) "${FIO_WRAP[@]}" fio --output-format=json --output="$json" "$base.fio" \
    2>"$base.fio.err"
  local rc=$?
  if ((rc != 0)) || ! grep -q '"jobs"' "$json" 2>/dev/null; then
    log "fio failed (status $rc) on $dev: $(tr '\n' ' ' < "$base.fio.err" | cut -c1-300)"
    return 1
  fi
}

# ------------------------------------------------------ ublk-aot server
# start_aot BACKEND QUEUES ERRFILE: start a server with --stats; sets DEV,
# SRV_PID and AOT_DEV_ID.  (No command substitution around the start_* and
# dev_up functions: they set globals and own background processes.)
start_aot() {   # start_aot SPEC QUEUES ERRFILE [EXTRA SERVE OPTIONS...]
  local spec=$1 queues=$2 err=$3 dev="" i cpus
  shift 3
  local outf=$WORK/aot.out
  : > "$outf"
  cpus=$(seq -s, 0 $((queues < NCPU ? queues - 1 : NCPU - 1)))
  "$AOT" serve --backend "$spec" --queues "$queues" --depth "$DEPTH" --cpus "$cpus" --stats "$@" >"$outf" 2>"$err" &
  SRV_PID=$!
  for ((i = 0; i < 300; i++)); do      # 30 s to come up
    read -r dev < "$outf" 2>/dev/null
    [[ $dev == /dev/ublkb* && -b $dev ]] && break
    kill -0 "$SRV_PID" 2>/dev/null || break
    dev=""; sleep 0.1
  done
  if [[ -z $dev ]]; then
    log "ublk-aot serve --backend $spec did not come up: $(tr '\n' ' ' < "$err" | cut -c1-300)"
    stop_aot
    return 1
  fi
  AOT_DEV_ID=${dev#/dev/ublkb}
  DEV=$dev
}

# stop_aot: SIGTERM, wait (20 s) for the --stats lines and exit; then make
# sure the device is gone.
stop_aot() {
  local i
  if [[ -n $SRV_PID ]]; then
    kill -TERM "$SRV_PID" 2>/dev/null
    for ((i = 0; i < 200; i++)); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$SRV_PID" 2>/dev/null; then
      log "ublk-aot (pid $SRV_PID) ignored SIGTERM for 20 s; killing it"
      kill -KILL "$SRV_PID" 2>/dev/null
    fi
    wait "$SRV_PID" 2>/dev/null
    SRV_PID=""
  fi
  if [[ -n $AOT_DEV_ID && -e /sys/class/ublk-char/ublkc$AOT_DEV_ID ]]; then
    log "ublk device $AOT_DEV_ID still present after the server exited; deleting it"
    timeout 30 "$AOT" del "$AOT_DEV_ID" >&3 2>&1
  fi
  AOT_DEV_ID=""
}

# --------------------------------------------------------- kublk server
# start_kublk TYPE QUEUES LOGFILE [BACKFILE]: sets DEV, KUBLK_ID, KUBLK_PID.
start_kublk() {
  local type=$1 queues=$2 logf=$3; shift 3
  if ! timeout 30 "$KUBLK" add -t "$type" -q "$queues" -d "$DEPTH" "$@" >"$logf" 2>&1 </dev/null; then
    log "kublk add -t $type failed: $(tr '\n' ' ' < "$logf" | cut -c1-300)"
    # It may have allocated a device before failing.
    KUBLK_ID=$(awk '/^dev id/ { sub(":", "", $3); print $3; exit }' "$logf")
    [[ -n $KUBLK_ID ]] && stop_kublk
    return 1
  fi
  KUBLK_ID=$(awk '/^dev id/ { sub(":", "", $3); print $3; exit }' "$logf")
  KUBLK_PID=$(awk '/daemon pid/ { for (i = 1; i < NF; i++) if ($i == "pid") print $(i + 1); exit }' "$logf")
  local i
  for ((i = 0; i < 100; i++)); do [[ -b /dev/ublkb$KUBLK_ID ]] && break; sleep 0.1; done
  if [[ -z $KUBLK_ID || ! -b /dev/ublkb$KUBLK_ID ]]; then
    log "kublk add -t $type: no block device: $(tr '\n' ' ' < "$logf" | cut -c1-300)"
    [[ -n $KUBLK_ID ]] && stop_kublk
    return 1
  fi
  DEV=/dev/ublkb$KUBLK_ID
}

stop_kublk() {
  if ! timeout 60 "$KUBLK" del -n "$KUBLK_ID" >&3 2>&1; then
    log "kublk del -n $KUBLK_ID failed or timed out"
    [[ -n ${KUBLK_PID:-} ]] && kill -KILL "$KUBLK_PID" 2>/dev/null
    timeout 30 "$AOT" del "$KUBLK_ID" >&3 2>&1
  fi
  KUBLK_ID=""; KUBLK_PID=""
}

# ----------------------------------------------------- kernel devices
# null_blk: one multi-queue device, completions inline (irqmode=0), 2 hw
# queues (one per CPU), depth 128: the floor of what a block device costs.
NULLBLK_PARAMS="nr_devices=1 queue_mode=2 irqmode=0 submit_queues=2 hw_queue_depth=128 gb=1 bs=512 memory_backed=0"

setup_backing_file() {
  mkdir -p "$TMPFS"
  if ! mountpoint -q "$TMPFS"; then
    mount -t tmpfs -o size=$(( $(numfmt --from=iec "$FILE_SIZE") / 1048576 + 64 ))M ublk-bench "$TMPFS" || return 1
    TMPFS_MOUNTED=1
  fi
  # Written, not fallocated: reads of fallocated tmpfs pages return zeroes
  # without copying, which would flatter the file targets.
  local t0=$SECONDS
  dd if=/dev/zero of="$BACKING" bs=4M count=$(( $(numfmt --from=iec "$FILE_SIZE") / 4194304 )) \
     status=none conv=fsync || return 1
  log "backing file $BACKING ($FILE_SIZE, tmpfs) written in $((SECONDS - t0)) s"
}

# --------------------------------------------------------- one target
# dev_up TARGET QUEUES ERRFILE: make the device of TARGET; sets DEV.
dev_up() {
  local t=$1 q=$2 err=$3
  case $t in
    aot-null) start_aot "null:$SIZE" "$q" "$err" ;;
    aot-null-huge) start_aot "null:$SIZE" "$q" "$err" --huge-buffers ;;
    # The same server without the per-request latency timing (read once at start; README "Live stats").
    aot-null-copy-nolat) UBLK_AOT_NO_LATENCY=1 start_aot "null:$SIZE" "$q" "$err" --io-mode copy ;;
    aot-mem)  start_aot "mem:$MEM_SIZE" "$q" "$err" ;;
    aot-file) start_aot "file:$BACKING" "$q" "$err" ;;
    aot-file-fixed) start_aot "file:$BACKING" "$q" "$err" --fixed-buffers ;;
    aot-*-copy|aot-*-uc|aot-*-zc|aot-*-abr)
      local b=${t#aot-} spec
      b=${b%-*}
      case $b in null) spec="null:$SIZE" ;; mem) spec="mem:$MEM_SIZE" ;; file) spec="file:$BACKING" ;; esac
      start_aot "$spec" "$q" "$err" --io-mode "$(aot_mode_of "$t")" ;;
    kublk-null|kublk-null-*) start_kublk null "$q" "$err" $(kublk_flags_of "$t") ;;
    kublk-loop|kublk-loop-*) start_kublk loop "$q" "$err" $(kublk_flags_of "$t") "$BACKING" ;;
    nullblk) DEV=/dev/nullb0 ;;
    loop) DEV=$LOOP_DEV ;;
  esac
}

# aot_mode_of TARGET: the --io-mode word of an aot-*-MODE target.
aot_mode_of() {
  case $1 in
    *-copy) echo copy ;; *-uc) echo user-copy ;; *-zc) echo zero-copy ;; *-abr) echo auto-buf-reg ;;
  esac
}

# kublk_flags_of TARGET: kublk add's data-mode flags (none: copy).
kublk_flags_of() {
  case $1 in
    kublk-*-uc) echo -u ;; kublk-*-zc) echo -z ;; kublk-*-abr) echo --auto_zc ;; kublk-*-b) echo -b ;;
    kublk-*-pio) echo --nthreads 2 --per_io_tasks ;;
  esac
}

dev_down() {
  case $1 in
    aot-*) stop_aot ;;
    kublk-*) stop_kublk ;;
  esac
}

# Kernel devices live for a whole round of their target.
target_begin() {
  case $1 in
    nullblk)
      # Loaded by someone else (a native run): its parameters are not ours,
      # and it is not ours to unload.
      [[ -d /sys/module/null_blk ]] && { log "null_blk is already loaded: unload it first; skipping"; return 1; }
      # shellcheck disable=SC2086  # word splitting wanted
      modprobe null_blk $NULLBLK_PARAMS || { log "modprobe null_blk failed"; return 1; }
      NULLBLK_LOADED=1
      local i; for ((i = 0; i < 50; i++)); do [[ -b /dev/nullb0 ]] && break; sleep 0.1; done
      [[ -b /dev/nullb0 ]] || { log "no /dev/nullb0"; return 1; } ;;
    loop)
      modprobe loop 2>/dev/null
      LOOP_DEV=$(losetup --direct-io=on -f --show "$BACKING") || { log "losetup failed"; LOOP_DEV=""; return 1; }
      local dio; dio=$(cat "/sys/block/${LOOP_DEV#/dev/}/loop/dio" 2>/dev/null)
      [[ $dio == 1 ]] || log "warning: $LOOP_DEV has dio=$dio (direct I/O not in effect)"
      echo "loop_dio=$dio" >> "$OUT/meta.env" ;;
  esac
  return 0
}

target_end() {
  case $1 in
    nullblk) modprobe -r null_blk || log "rmmod null_blk failed"; NULLBLK_LOADED=0 ;;
    loop) losetup -d "$LOOP_DEV" || log "losetup -d $LOOP_DEV failed"; LOOP_DEV="" ;;
  esac
}

# run_target TARGET ROUND: the workload matrix on TARGET, one device (and
# one fio process) per ublk queue count.
run_target() {
  local t=$1 r=$2 nq name rw bs qd jobs queues base text secs n
  target_begin "$t" || return 1
  for nq in $(awk 'NF { print $6 }' <<<"$WORKLOADS" | sort -un); do
    text="" secs=0 n=0
    while read -r name rw bs qd jobs queues; do
      [[ -n $name && $queues == "$nq" && " $WANT_WORKLOADS " == *" $name "* ]] || continue
      text+=$(fio_job "$name" "$rw" "$bs" "$qd" "$jobs" "$RUNTIME" "$RAMP")$'\n\n'
      secs=$((secs + RUNTIME + RAMP + 5)) n=$((n + 1))
    done <<<"$WORKLOADS"
    ((n)) || continue
    if [[ $t == aot-mem* ]]; then text=$(fio_prefill_job)$'\n\n'$text; secs=$((secs + 300)); fi
    base=$OUT/runs/$t.q$nq.r$r
    dev_up "$t" "$nq" "$base.err" || continue
    run_fio "$base.json" "$DEV" "$secs" "$text"
    dev_down "$t"
    log "$t ${nq}q round $r: $(iops_of "$base.json")"
  done
  target_end "$t"
}

# iops_of JSON: a one-line summary for the log (IOPS of each job, read+write).
iops_of() {
  [[ -s $1 ]] || { echo "no result"; return; }
  awk -F'[:,]' '/"jobname"/ { if (n) printf "%s=%.0f ", j, s; gsub(/[" ]/, "", $2); j = $2; s = 0; n = 1 }
                /"iops"/    { gsub(/ /, "", $2); s += $2 }
                END { if (n) printf "%s=%.0f", j, s; print " IOPS" }' "$1"
}

# ------------------------------------------------------------- extras
# The server's syscalls and CPU time during one fio run: perf stat on the
# syscall tracepoints and task-clock, per thread, for exactly the fio run
# (perf stat -p PID -- fio); strace -c -f (syscalls only) when perf cannot.
count_syscalls() {   # count_syscalls PID OUTPREFIX DEV SECONDS JOBS-TEXT
  local pid=$1 pre=$2; shift 2
  local tool=none spid rc
  mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null
  # Whether perf can count the tracepoints: asked once per boot (a perf
  # start costs seconds under TCG).
  if [[ -z $PERF_EVENTS ]]; then
    PERF_EVENTS=none
    if command -v perf >/dev/null &&
       timeout 20 perf stat -e 'syscalls:sys_enter_io_uring_enter' -p "$pid" -- sleep 0.1 >/dev/null 2>&1; then
      PERF_EVENTS='task-clock,raw_syscalls:sys_enter,syscalls:sys_enter_io_uring_enter,syscalls:sys_enter_pread64,syscalls:sys_enter_pwrite64'
      # io_uring:io_uring_queue_async_work: a request io_uring hands to an
      # io-wq worker instead of completing it inline (counted in the
      # submitter's context, so per queue thread).
      timeout 20 perf stat -e 'io_uring:io_uring_queue_async_work' -p "$pid" -- sleep 0.1 >/dev/null 2>&1 &&
        PERF_EVENTS+=',io_uring:io_uring_queue_async_work'
    fi
  fi
  if [[ $PERF_EVENTS != none ]]; then
    tool=perf
    local ev=$PERF_EVENTS
    # shellcheck disable=SC2054  # "-x," is perf's CSV separator option
    FIO_WRAP=(perf stat --per-thread -x, -o "$pre.perf" -e "$ev" -p "$pid" --)
    sample_threads "$pid" "$pre.threads"
    run_fio "$pre.json" "$@"; rc=$?
    stop_sampler "$pid" "$pre.threads"
    FIO_WRAP=()
  elif command -v strace >/dev/null; then
    tool=strace
    strace -c -f -p "$pid" -o "$pre.strace" 2>/dev/null &
    spid=$!
    sleep 1                                  # let strace attach
    sample_threads "$pid" "$pre.threads"
    run_fio "$pre.json" "$@"; rc=$?
    stop_sampler "$pid" "$pre.threads"
    kill -INT "$spid" 2>/dev/null
    local i; for ((i = 0; i < 100; i++)); do kill -0 "$spid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
  else
    sample_threads "$pid" "$pre.threads"
    run_fio "$pre.json" "$@"; rc=$?
    stop_sampler "$pid" "$pre.threads"
  fi
  echo "$tool" > "$pre.tool"
  return $rc
}

# sample_threads PID FILE: in the background, every 0.5 s, one line per
# thread of PID ("T <epoch> <contents of /proc/PID/task/TID/stat>"), so
# report.py can count io-wq workers (comm iou-wrk-*) and their CPU time,
# which perf stat -p misses (it only follows the threads present when it
# attaches; io-wq workers come and go).  Plus "P <epoch> /proc/PID/stat"
# (utime/stime of the whole thread group, exited threads included) at the
# start and end.  Pure bash reads: no process per sample but sleep.
SAMPLER_PID=""
PERF_EVENTS=""
sample_threads() {
  local pid=$1 out=$2
  printf 'P %s %s\n' "$EPOCHREALTIME" "$(< "/proc/$pid/stat")" > "$out"
  (
    local f l
    while kill -0 "$pid" 2>/dev/null; do
      for f in /proc/"$pid"/task/*/stat; do
        read -r l < "$f" 2>/dev/null && printf 'T %s %s\n' "$EPOCHREALTIME" "$l"
      done
      sleep 0.5
    done
  ) >> "$out" 2>/dev/null &
  SAMPLER_PID=$!
}

stop_sampler() {
  local pid=$1 out=$2
  [[ -n $SAMPLER_PID ]] && { kill "$SAMPLER_PID" 2>/dev/null; wait "$SAMPLER_PID" 2>/dev/null; }
  SAMPLER_PID=""
  # One last sample of every thread, then the group's total.
  local f l
  for f in /proc/"$pid"/task/*/stat; do
    read -r l < "$f" 2>/dev/null && printf 'T %s %s\n' "$EPOCHREALTIME" "$l"
  done >> "$out"
  [[ -r /proc/$pid/stat ]] && printf 'P %s %s\n' "$EPOCHREALTIME" "$(< "/proc/$pid/stat")" >> "$out"
  echo "clk_tck=$(getconf CLK_TCK)" >> "$out"
}

# workload_job NAME SECONDS: the fio job section of workload NAME (no ramp).
workload_job() {
  local name rw bs qd jobs queues
  while read -r name rw bs qd jobs queues; do
    [[ $name == "$1" ]] && { fio_job "$name" "$rw" "$bs" "$qd" "$jobs" "$2" 0; return 0; }
  done <<<"$WORKLOADS"
  return 1
}

run_extras() {
  local t qd pre pid w job
  # The io-mode targets: TARGET:WORKLOAD pairs, one 5 s run each (the
  # server's syscalls, CPU, and its io-wq workers).
  for tw in $SYSCALL_RUNS; do
    t=${tw%%:*} w=${tw#*:}
    [[ " $TARGETS " == *" $t "* ]] || continue
    job=$(workload_job "$w" 5) || { log "syscalls: unknown workload $w"; continue; }
    pre=$OUT/extra/sys.$t.$w
    dev_up "$t" 1 "$pre.err" || continue
    if [[ $t == aot-* ]]; then pid=$SRV_PID; else pid=$KUBLK_PID; fi
    if [[ $t == aot-mem* ]]; then   # the store's pages exist before the measured run
      run_fio "$pre.prefill.json" "$DEV" 300 "$(fio_prefill_job)" || log "prefill of $t failed"
    fi
    count_syscalls "$pid" "$pre" "$DEV" 5 "$job"
    dev_down "$t"
    log "syscalls $t $w: $(cat "$pre.tool") $(iops_of "$pre.json"); io-wq workers seen: $(grep -c ' (iou-wrk-' "$pre.threads" 2>/dev/null) samples"
  done
  for tw in $PROFILE_RUNS; do
    t=${tw%%:*} w=${tw#*:}
    [[ " $TARGETS " == *" $t "* ]] || continue
    job=$(workload_job "$w" 5) || { log "profile: unknown workload $w"; continue; }
    pre=$OUT/extra/prof.$t.$w
    dev_up "$t" 1 "$pre.err" || continue
    # perf.data on the guest tmpfs: perf record writes through mmap, which
    # fails on the 9p-shared OUTDIR ("failed to write perf data, error: Bad address").
    if [[ $t == aot-* ]]; then pid=$SRV_PID; else pid=$KUBLK_PID; fi
    FIO_WRAP=(perf record -a -g -F 499 -e cpu-clock -o "$WORK/prof.data" --)
    run_fio "$pre.json" "$DEV" 5 "$job"
    FIO_WRAP=()
    dev_down "$t"
    {
      echo "# $t $w: $(iops_of "$pre.json")"
      echo "## by thread name"
      perf report -i "$WORK/prof.data" --stdio --no-children --sort comm -g none --percent-limit 0.5 2>/dev/null | grep -v '^$'
      echo "## by thread name and symbol"
      perf report -i "$WORK/prof.data" --stdio --no-children --sort comm,dso,sym -g none --percent-limit 0.4 2>/dev/null | grep -v '^$'
      echo "## call graphs of the server's threads (the whole process, by thread and symbol; callers, > 2%)"
      perf report -i "$WORK/prof.data" --stdio --no-children --pid "$pid" --sort comm,sym -g caller,2,callee --percent-limit 2 2>/dev/null | grep -v '^$' | head -400
    } > "$pre.txt"
    rm -f "$WORK/prof.data"
    log "profile $t $w: $(iops_of "$pre.json"), $(grep -c . "$pre.txt") lines"
  done
  # Syscalls per I/O: ublk-aot vs kublk, null and file/loop, at QD64 (at QD1
  # both servers need exactly 1 (null) or 2 (file) io_uring_enter per I/O).
  for t in aot-null kublk-null aot-file aot-file-fixed kublk-loop; do
    [[ " $TARGETS " == *" $t "* ]] || continue
    for qd in ${BENCH_SYSCALL_QDS:-64}; do
      pre=$OUT/extra/sys.$t.qd$qd
      dev_up "$t" 1 "$pre.err" || continue
      if [[ $t == aot-* ]]; then pid=$SRV_PID; else pid=$KUBLK_PID; fi
      count_syscalls "$pid" "$pre" "$DEV" 5 "$(fio_job "rr4k-qd$qd" randread 4k "$qd" 1 5 0)"
      dev_down "$t"
      log "syscalls $t QD$qd: $(cat "$pre.tool") $(iops_of "$pre.json")"
    done
  done
  # GC: one 10 s mixed run on ublk-aot mem (not prefilled: first writes
  # fault pages in, which must not allocate managed memory either);
  # --stats must show 0 collections.
  local gct=""
  for t in aot-mem aot-mem-uc aot-mem-copy; do [[ " $TARGETS " == *" $t "* ]] && { gct=$t; break; }; done
  if [[ -n $gct ]]; then
    pre=$OUT/extra/gc.aot-mem
    if dev_up "$gct" 1 "$pre.err"; then
      run_fio "$pre.json" "$DEV" 10 "$(fio_job rw4k-qd64-mixed randrw 4k 64 1 10 0)"
      dev_down "$gct"
      log "gc run: $(grep -h 'stats process' "$pre.err")"
    fi
  fi
}

# --------------------------------------------------------------- main
{
  echo "kernel=$(uname -r)"
  echo "cpus=$(nproc)"
  echo "cpu_model=$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
  echo "mem_kb=$(awk '/^MemTotal/ { print $2 }' /proc/meminfo)"
  echo "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "fio=$(fio --version)"
  echo "rounds=$ROUNDS"; echo "runtime=$RUNTIME"; echo "ramp=$RAMP"; echo "depth=$DEPTH"
  echo "placement=ublk queue i on CPU i, one fio job on CPU $FIO_CPU, two fio jobs on CPUs 0 and 1"
  echo "targets=$TARGETS"; echo "workloads=$WANT_WORKLOADS"
  echo "nullblk_params=$NULLBLK_PARAMS"
  echo "file_size=$FILE_SIZE"
  echo "mem_size=$MEM_SIZE"
} > "$OUT/meta.env"

for p in "$AOT" "$KUBLK"; do [[ -x $p ]] || { log "missing executable $p"; exit 2; }; done
command -v fio >/dev/null || { log "fio not found"; exit 2; }
modprobe ublk_drv || { log "modprobe ublk_drv failed"; exit 2; }
echo "ublk_features=$("$AOT" features --json 2>/dev/null | sed -n 's/.*"features":"\([^"]*\)".*/\1/p')" >> "$OUT/meta.env"
log "kernel $(uname -r), $(nproc) CPUs; targets: $TARGETS; $ROUNDS round(s) of $RAMP+$RUNTIME s runs"

if [[ " $TARGETS " == *" aot-file"* || " $TARGETS " == *" loop"* || " $TARGETS " == *" kublk-loop"* ]]; then
  setup_backing_file || { log "cannot create the backing file on tmpfs"; exit 1; }
fi

for ((round = 1; round <= ROUNDS; round++)); do
  for t in $TARGETS; do
    [[ " $ALL_TARGETS " == *" $t "* ]] || { log "unknown target $t"; continue; }
    run_target "$t" "$round" || log "target $t round $round failed"
  done
done
((EXTRAS)) && run_extras
log "done"
exit 0
