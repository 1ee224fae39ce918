#!/usr/bin/env bash
# pair-common.sh - what nbd-matrix.sh and qcow2-matrix.sh share: starting and
# stopping ublk-aot and the kernel's nbd client, fio job files from a WORKLOADS
# table, one fio run.  Sourced (not run) by those scripts, which set first:
#   OUT (the run folder), AOT (the ublk-aot binary), WORK (a scratch folder),
#   RUNTIME, RAMP, DEPTH, NCPU, FIO_CPU, WORKLOADS:
#     name  rw  bs  iodepth/job  jobs  queues   (one line per fio job)
# and read back DEV (the device started last) and the *_PID/ID variables.

exec 3>>"$OUT/matrix.log"
log() { local m; m="[$(date +%T)] $*"; echo "$m" >&3; echo "${LOG_TAG:-bench}: $m" >&2; }

SRV_PID="" AOT_ID="" NBD_DEV="" DEV=""

# start_aot SPEC QUEUES ERRFILE [EXTRA ARGS...]: `ublk-aot serve`, sets DEV, SRV_PID, AOT_ID.
start_aot() {
  local spec=$1 q=$2 err=$3 dev="" i outf=$WORK/aot.out
  shift 3
  : > "$outf"
  "$AOT" serve --backend "$spec" --queues "$q" --depth "$DEPTH" \
    --cpus "$(seq -s, 0 $((q < NCPU ? q - 1 : NCPU - 1)))" --stats "$@" >"$outf" 2>"$err" &
  SRV_PID=$!
  for ((i = 0; i < 300; i++)); do
    read -r dev < "$outf" 2>/dev/null
    [[ $dev == /dev/ublkb* && -b $dev ]] && break
    kill -0 "$SRV_PID" 2>/dev/null || break
    dev=""; sleep 0.1
  done
  if [[ -z $dev ]]; then
    log "ublk-aot did not come up: $(tr '\n' ' ' < "$err" | cut -c1-300)"
    stop_aot; return 1
  fi
  AOT_ID=${dev#/dev/ublkb}; DEV=$dev
}

stop_aot() {
  local i
  kill -TERM "$SRV_PID" 2>/dev/null
  for ((i = 0; i < 200; i++)); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$SRV_PID" 2>/dev/null && { log "ublk-aot ignored SIGTERM; killing it"; kill -KILL "$SRV_PID"; }
  wait "$SRV_PID" 2>/dev/null
  SRV_PID=""
  if [[ -n $AOT_ID && -e /sys/class/ublk-char/ublkc$AOT_ID ]]; then
    timeout 30 "$AOT" del "$AOT_ID" >&3 2>&1
  fi
  AOT_ID=""
}

# start_nbd SOCKET CONNECTIONS LOGFILE: nbd-client on /dev/nbd0 (netlink), sets DEV.
start_nbd() {
  local sock=$1 c=$2 logf=$3 i
  if ! timeout 30 nbd-client -u "$sock" /dev/nbd0 -C "$c" -b 4096 >"$logf" 2>&1 </dev/null; then
    log "nbd-client failed: $(tr '\n' ' ' < "$logf" | cut -c1-300)"
    return 1
  fi
  NBD_DEV=/dev/nbd0
  for ((i = 0; i < 100; i++)); do
    [[ $(cat /sys/block/nbd0/size 2>/dev/null) -gt 0 ]] && break; sleep 0.1
  done
  DEV=/dev/nbd0
}

stop_nbd() {
  timeout 30 nbd-client -d "$NBD_DEV" >&3 2>&1
  NBD_DEV=""
}

# jobfile QUEUES [NAMES]: the fio job file of the workloads with that many
# queues (and, if given, only those named in the space-separated NAMES).
jobfile() {
  local q=$1 only=${2:-} name rw bs qd jobs wq
  printf '[global]\nioengine=io_uring\ndirect=1\ntime_based=1\nruntime=%s\nramp_time=%s\n' "$RUNTIME" "$RAMP"
  printf 'filename=%s\ngroup_reporting=1\nrandrepeat=0\nnorandommap=1\n' "$DEV"
  while read -r name rw bs qd jobs wq; do
    [[ -n $name && $wq == "$q" ]] || continue
    [[ -z $only || " $only " == *" $name "* ]] || continue
    printf '\n[%s]\nstonewall\nrw=%s\nbs=%s\niodepth=%s\nnumjobs=%s\n' "$name" "$rw" "$bs" "$qd" "$jobs"
    if ((jobs == 1)); then printf 'cpus_allowed=%s\n' "$FIO_CPU"; else printf 'cpus_allowed=0-%s\n' "$((NCPU - 1))"; fi
  done <<<"$WORKLOADS"
}

# run_fio FILEBASE QUEUES [NAMES]: fio on DEV, JSON to FILEBASE.json.
run_fio() {
  local f=$1 q=$2 only=${3:-}
  jobfile "$q" "$only" > "$f.fio"
  if ! timeout 600 fio --output-format=json --output="$f.json" "$f.fio" 2>"$f.fio.err"; then
    log "fio $(basename "$f") failed: $(tr '\n' ' ' < "$f.fio.err" | cut -c1-300)"
    return 1
  fi
}
