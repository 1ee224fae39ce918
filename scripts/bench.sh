#!/usr/bin/env bash
# bench.sh - benchmarks of ublk-aot against the kernel's ublk selftest server
# (kublk) and the kernel's own null_blk and loop devices.  `./build.sh bench`
# publishes out/ublk-aot first, then runs this.  Results: docs/benchmarks.md.
#
#   scripts/bench.sh            prepare, run the matrix in ONE VM boot, report
#   scripts/bench.sh nbd        the nbd backend against the kernel's nbd client
#                               (nbd-client) on one nbdkit memory export, in ONE
#                               VM boot: scripts/bench/nbd-matrix.sh and
#                               pair-report.py (BENCH_ROUNDS, BENCH_RUNTIME,
#                               BENCH_RAMP, BENCH_NBD_SIZE); no kublk build
#   scripts/bench.sh qcow2      the qcow2 backend against qemu-nbd + the kernel's
#                               nbd client on the same image and against the
#                               file backend on its raw copy, in ONE VM boot:
#                               scripts/bench/qcow2-matrix.sh and pair-report.py
#                               (BENCH_ROUNDS, BENCH_RUNTIME, BENCH_RAMP,
#                               BENCH_QCOW2_SIZE); no kublk build
#   scripts/bench.sh nbd-trace  where a 4k QD1 read's time goes, ublk-aot nbd
#                               against nbd.ko, from an ftrace of scheduler,
#                               io_uring, block and nbd events in ONE VM boot:
#                               scripts/bench/nbd-trace.sh and nbd-trace.py
#
# Steps:
#   1. prerequisites on the host (fio, strace, gcc, ...; scripts/vm-setup.sh)
#   2. kublk, built once and cached under $BENCH_CACHE/kublk: the
#      tools/testing/selftests/ublk folder of the newest linux-source-* package
#      of Debian sid, compiled against the uapi headers of the same kernel
#      (sid's linux-libc-dev of the same version: what `make headers` makes)
#      and a static liburing from sid's liburing-dev (bookworm's is too old),
#      all unpacked into folders; nothing is installed on the host.
#   3. one VM boot (multi-threaded TCG, 2 vCPUs) running scripts/bench/matrix.sh:
#      ublk-aot null/mem/file, kublk null/loop, null_blk, loop (direct I/O),
#      fio 4k random QD1/QD64, 4k QD128 on 2 queues, 128k sequential QD16,
#      3 rounds; plus syscalls per I/O and a 10 s GC check.
#   4. scripts/bench/report.py: the Markdown tables (medians), printed and
#      written between the result markers of docs/benchmarks.md.
#
# Every run keeps its raw data (fio JSON, server stderr, logs, the exact
# binaries used) in $BENCH_CACHE/runs/<date>-<time>/.
#
# Env knobs (default):
#   BENCH_CACHE (/opt/ublk-aot/bench)  downloads, kublk builds, runs
#   BENCH_REFRESH (0)   1: look for a newer linux-source in sid and rebuild kublk
#   BENCH_DOC (1)       0: do not touch docs/benchmarks.md
#   BENCH_NATIVE (0)    1: run the matrix on this host (root; its kernel must
#                       have ublk_drv, null_blk and loop) instead of in a VM
#   BENCH_ROUNDS (3) BENCH_RUNTIME (4) BENCH_RAMP (1) BENCH_TARGETS
#   BENCH_WORKLOADS BENCH_EXTRAS BENCH_SYSCALL_QDS BENCH_SYSCALL_RUNS BENCH_PROFILE_RUNS BENCH_FILE_SIZE BENCH_MEM_SIZE
#                       passed to scripts/bench/matrix.sh (see its header)
#   VM_MEM (4G) VM_TIMEOUT (3000) VM_KERNEL         passed to vm-run.sh
set -euo pipefail
ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.." && pwd)
LOG_TAG=bench
# shellcheck source=scripts/vm-common.sh
source "$ROOT/scripts/vm-common.sh"      # log, die, papt_* (private apt state)

BENCH_CACHE=${BENCH_CACHE:-$UBLK_AOT_CACHE/bench}
BENCH_REFRESH=${BENCH_REFRESH:-0}
BENCH_DOC=${BENCH_DOC:-1}
BENCH_NATIVE=${BENCH_NATIVE:-0}
VM_MEM=${VM_MEM:-4G}
KUBLK_DIR=$BENCH_CACHE/kublk
DOC=$ROOT/docs/benchmarks.md
t_start=$SECONDS

# ------------------------------------------------------ 1. prerequisites
prerequisites() {
  [[ $EUID -eq 0 ]] || die "run as root (apt, modules, ublk devices)"
  [[ -x $ROOT/out/ublk-aot ]] || die "out/ublk-aot missing: run ./build.sh bench (it publishes first)"
  command -v python3 >/dev/null || die "python3 is required for the report"
  local need=() p
  # strace: fallback counter of syscalls per I/O when perf cannot run.
  local tools="fio:fio strace:strace gcc:gcc xz:xz-utils dpkg-deb:dpkg"
  [[ $MODE == nbd || $MODE == nbd-trace ]] && tools="fio:fio nbd-client:nbd-client"
  [[ $MODE == qcow2 ]] && tools="fio:fio nbd-client:nbd-client qemu-nbd:qemu-utils"
  for p in $tools; do
    command -v "${p%%:*}" >/dev/null || need+=("${p#*:}")
  done
  if ((${#need[@]})); then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get -y -qq install --no-install-recommends "${need[@]}" >/dev/null ||
      { apt-get -qq update && DEBIAN_FRONTEND=noninteractive apt-get -y -qq install --no-install-recommends "${need[@]}" >/dev/null; } ||
      die "cannot install ${need[*]}"
  fi
  if ((!BENCH_NATIVE)); then
    "$ROOT/scripts/vm-setup.sh" || die "scripts/vm-setup.sh failed"
  fi
}

# ---------------------------------------------------------- 2. kublk
# download SUITE PKG VERSION: PKG_VERSION_*.deb into $BENCH_CACHE/debs (once);
# prints its path.
download() {
  local suite=$1 pkg=$2 ver=$3 f
  mkdir -p "$BENCH_CACHE/debs"
  f=$(find "$BENCH_CACHE/debs" -maxdepth 1 -name "${pkg}_${ver/:/%3a}_*.deb" | head -n1)
  if [[ -z $f ]]; then
    log "downloading $pkg $ver ($suite)"
    (cd "$BENCH_CACHE/debs" && papt "$suite" apt-get download -q=2 "$pkg=$ver" >&2) ||
      die "apt-get download $pkg=$ver from $suite failed"
    f=$(find "$BENCH_CACHE/debs" -maxdepth 1 -name "${pkg}_${ver/:/%3a}_*.deb" | head -n1)
    [[ -n $f ]] || die "apt-get download $pkg=$ver left no .deb in $BENCH_CACHE/debs"
  fi
  printf '%s\n' "$f"
}

# build_kublk: resolve the packages, unpack them, compile; sets the link
# $KUBLK_DIR/current.  Runs under a lock (two benches may start at once).
build_kublk() {
  if [[ -x $KUBLK_DIR/current/kublk && $BENCH_REFRESH != 1 ]]; then
    return 0
  fi
  papt_update sid
  local src_pkg src_ver lcd_ver ur_suite=sid ur_ver
  src_pkg=$(papt sid apt-cache search --names-only '^linux-source-[0-9][0-9.]*$' | awk '{ print $1 }' | sort -V | tail -n1)
  [[ -n $src_pkg ]] || die "no linux-source-* package in sid"
  src_ver=$(papt_candidate sid "$src_pkg")
  lcd_ver=$(papt_candidate sid linux-libc-dev)
  ur_ver=$(papt_candidate sid liburing-dev)
  if [[ -z $ur_ver ]]; then
    papt_update trixie; ur_suite=trixie; ur_ver=$(papt_candidate trixie liburing-dev)
  fi
  [[ -n $src_ver && -n $lcd_ver && -n $ur_ver ]] ||
    die "cannot resolve versions (linux-source '$src_ver', linux-libc-dev '$lcd_ver', liburing-dev '$ur_ver')"
  [[ $lcd_ver == "$src_ver" ]] ||
    log "note: sid has $src_pkg $src_ver but linux-libc-dev $lcd_ver; building against the latter's headers"

  local dest=$KUBLK_DIR/$src_ver+liburing$ur_ver
  if [[ ! -x $dest/kublk ]]; then
    local src_deb lcd_deb ur_deb tarball top
    src_deb=$(download sid "$src_pkg" "$src_ver")
    lcd_deb=$(download sid linux-libc-dev "$lcd_ver")
    ur_deb=$(download "$ur_suite" liburing-dev "$ur_ver")
    rm -rf "$dest.tmp"; mkdir -p "$dest.tmp"
    dpkg-deb -x "$lcd_deb" "$dest.tmp/uapi"      # usr/include: linux/, asm/ of the new kernel
    dpkg-deb -x "$ur_deb" "$dest.tmp/liburing"   # usr/include/liburing*.h, usr/lib/*/liburing.a

    # Only the selftest folder and the uapi header it is about, from the
    # ~1 GB source tree.
    tarball=$(dpkg-deb -c "$src_deb" | grep -o '\./usr/src/linux-source-[^ ]*\.tar\.xz' | head -n1)
    [[ -n $tarball ]] || die "$src_deb holds no usr/src/linux-source-*.tar.xz"
    top=$(basename "$tarball" .tar.xz)
    log "extracting $top/tools/testing/selftests/ublk from $(basename "$src_deb")"
    dpkg-deb --fsys-tarfile "$src_deb" | tar -xO "$tarball" | xz -dc -T0 |
      tar -x -C "$dest.tmp" --wildcards "$top/tools/testing/selftests/ublk/*" "$top/include/uapi/linux/ublk_cmd.h" ||
      die "cannot extract the ublk selftest from $src_deb"
    mv "$dest.tmp/$top" "$dest.tmp/src"
    # The same kernel's headers?  (headers_install turns inline into __inline__.)
    if ! cmp -s <(sed 's/__inline__/inline/g' "$dest.tmp/src/include/uapi/linux/ublk_cmd.h") \
                <(sed 's/__inline__/inline/g' "$dest.tmp/uapi/usr/include/linux/ublk_cmd.h"); then
      log "warning: linux-libc-dev $lcd_ver's ublk_cmd.h differs from $src_pkg $src_ver's"
    fi

    compile_kublk "$dest.tmp" || die "kublk failed to build: see $dest.tmp/build.log"
    {
      echo "source=$src_pkg $src_ver (sid)"
      echo "uapi=linux-libc-dev $lcd_ver (sid)"
      echo "liburing=liburing-dev $ur_ver ($ur_suite), static"
      echo "gcc=$(gcc -dumpfullversion)"
      echo "linkage=$(cat "$dest.tmp/linkage")"
      echo "sha256=$(sha256sum "$dest.tmp/kublk" | cut -c1-64)"
    } > "$dest.tmp/BUILD-INFO"
    rm -rf "$dest"; mv "$dest.tmp" "$dest"
    log "kublk built: $dest/kublk"
  fi
  ln -sfn "$(basename "$dest")" "$KUBLK_DIR/current"
}

# compile_kublk DIR: DIR/src/tools/testing/selftests/ublk -> DIR/kublk.
# The flags are those of the selftest Makefile (lib.mk adds -D_GNU_SOURCE=);
# liburing is linked from its .a, and the whole binary statically if glibc's
# static libraries are there, so it runs in the guest as it is.
compile_kublk() {
  local d=$1 sd=$1/src/tools/testing/selftests/ublk srcs=() standalone f
  local ur_lib
  ur_lib=$(find "$d/liburing" -name liburing.a | head -n1)
  [[ -n $ur_lib ]] || { echo "liburing-dev has no liburing.a" > "$d/build.log"; return 1; }
  standalone=$(sed -n 's/^STANDALONE_UTILS[[:space:]]*:=[[:space:]]*//p' "$sd/Makefile")
  for f in "$sd"/*.c; do
    [[ " $standalone " == *" $(basename "$f") "* ]] || srcs+=("$f")
  done
  local cflags=(-O3 -Wall -D_GNU_SOURCE= -I "$d/uapi/usr/include" -I "$d/uapi/usr/include/x86_64-linux-gnu"
                -I "$d/liburing/usr/include")
  log "compiling kublk (${#srcs[@]} files)"
  if gcc "${cflags[@]}" -static -o "$d/kublk" "${srcs[@]}" "$ur_lib" -lpthread -lm > "$d/build.log" 2>&1; then
    echo static > "$d/linkage"
  elif gcc "${cflags[@]}" -o "$d/kublk" "${srcs[@]}" "$ur_lib" -lpthread -lm >> "$d/build.log" 2>&1; then
    echo "liburing static, glibc dynamic" > "$d/linkage"
  else
    return 1
  fi
  "$d/kublk" -h >/dev/null 2>&1 || true   # smoke: it starts (needs no device for -h)
  [[ -x $d/kublk ]]
}

# ----------------------------------------------------------- 3. the run
# Host load sampler: one line every 10 s (time, 1-min load, QEMU processes).
start_load_sampler() {
  (
    while :; do
      printf '%s %s %s\n' "$(date +%s)" "$(cut -d' ' -f1 /proc/loadavg)" "$(pgrep -c -x qemu-system-x86 || true)"
      sleep 10
    done
  ) > "$1/hostload.txt" 2>/dev/null &
  SAMPLER_PID=$!
}

# run_guest RUN SCRIPT WHAT MINUTES PASSENV: RUN/SCRIPT on this host (BENCH_NATIVE)
# or in one VM boot (multi-threaded TCG, 2 vCPUs), with the host load sampled.
run_guest() {
  local run=$1 script=$2 what=$3 minutes=$4 passenv=$5 rc=0
  start_load_sampler "$run"
  if ((BENCH_NATIVE)); then
    log "running the $what on this host ($(uname -r))"
    bash "$run/$script" "$run" || rc=$?
  else
    log "running the $what in one VM boot (multi-threaded TCG, 2 vCPUs); expect ~$minutes min"
    (
      cd "$run"
      export VM_TCG_THREAD=multi VM_CPUS=2 VM_MEM VM_TIMEOUT=${VM_TIMEOUT:-3000}
      export VM_PASSENV=$passenv
      exec "$ROOT/scripts/vm-run.sh" -w "$run" -- bash "$run/$script" "$run"
    ) || rc=$?
  fi
  kill "$SAMPLER_PID" 2>/dev/null || true
  wait "$SAMPLER_PID" 2>/dev/null || true
  return $rc
}

run_matrix() {
  local run=$1
  cp "$ROOT/out/ublk-aot" "$run/ublk-aot"        # frozen: out/ may be rebuilt meanwhile
  cp "$KUBLK_DIR/current/kublk" "$run/kublk"
  cp "$KUBLK_DIR/current/BUILD-INFO" "$run/kublk.BUILD-INFO"
  cp "$ROOT/scripts/bench/matrix.sh" "$run/matrix.sh"
  run_guest "$run" matrix.sh matrix 20 "BENCH_ROUNDS BENCH_RUNTIME BENCH_RAMP BENCH_TARGETS BENCH_WORKLOADS BENCH_EXTRAS BENCH_FILE_SIZE BENCH_MEM_SIZE BENCH_SYSCALL_QDS BENCH_SYSCALL_RUNS BENCH_PROFILE_RUNS"
}

# host/vm lines for the report, appended to the guest's meta.env.
record_context() {
  local run=$1 commit dirty=""
  commit=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo "?")
  [[ -n $(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null) ]] && dirty="+local changes"
  {
    echo "host=host $(nproc) CPUs ($(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)), kernel $(uname -r)"
    if ((BENCH_NATIVE)); then echo "vm=no VM (native run)"
    else echo "vm=QEMU TCG (no KVM) multi-threaded, 2 vCPUs, $VM_MEM"; fi
    echo "ublk_aot=ublk-aot $commit$dirty, sha256 $(sha256sum "$run/ublk-aot" | cut -c1-12)"
    [[ -f $run/kublk.BUILD-INFO ]] && echo "kublk_build=$(paste -sd';' "$run/kublk.BUILD-INFO")"
    echo "wall_seconds=$((SECONDS - t_start))"
  } >> "$run/meta.env"
}

# nbd and qcow2 modes: MODE-matrix.sh in the guest, the same way.
run_pair() {
  local run=$1
  cp "$ROOT/out/ublk-aot" "$run/ublk-aot"
  cp "$ROOT/scripts/bench/$MODE-matrix.sh" "$ROOT/scripts/bench/pair-common.sh" "$run/"
  run_guest "$run" "$MODE-matrix.sh" "$MODE matrix" 10 "BENCH_ROUNDS BENCH_RUNTIME BENCH_RAMP BENCH_NBD_SIZE BENCH_QCOW2_SIZE"
}

# ------------------------------------------------------------------ main
MODE=matrix
case ${1:-} in
  "") ;;
  nbd|qcow2|nbd-trace) MODE=$1 ;;
  -h|--help) sed -n '2,/^set -euo/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
  *) echo "usage: scripts/bench.sh [nbd|qcow2|nbd-trace] (settings through the BENCH_* variables; -h for help)" >&2; exit 2 ;;
esac
prerequisites
if [[ $MODE == nbd-trace ]]; then
  run=$BENCH_CACHE/runs/$MODE-$(date +%Y%m%d-%H%M%S)
  mkdir -p "$run"
  SAMPLER_PID=""
  trap 'if [[ -n $SAMPLER_PID ]]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi' EXIT
  cp "$ROOT/out/ublk-aot" "$ROOT/scripts/bench/nbd-trace.sh" "$run/"
  status=0
  run_guest "$run" nbd-trace.sh "nbd QD1 trace" 5 "" || status=$?
  record_context "$run"
  ((status == 0)) || die "the trace run failed (status $status); raw data: $run"
  python3 "$ROOT/scripts/bench/nbd-trace.py" "$run" | tee "$run/results.md"
  log "raw data: $run"
  exit 0
fi
if [[ $MODE != matrix ]]; then
  run=$BENCH_CACHE/runs/$MODE-$(date +%Y%m%d-%H%M%S)
  mkdir -p "$run"
  SAMPLER_PID=""
  trap 'if [[ -n $SAMPLER_PID ]]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi' EXIT
  status=0
  run_pair "$run" || status=$?
  record_context "$run"
  python3 "$ROOT/scripts/bench/pair-report.py" "$run" > "$run/results.md" || die "pair-report.py failed on $run"
  cat "$run/results.md"
  log "raw data: $run; wall time $(( (SECONDS - t_start) / 60 )) min $(( (SECONDS - t_start) % 60 )) s"
  ((status == 0)) || { log "the $MODE matrix did not finish (status $status); docs/benchmarks.md left as it was"; exit "$status"; }
  if [[ $BENCH_DOC == 1 ]]; then
    python3 "$ROOT/scripts/bench/pair-report.py" "$run" --doc "$DOC" || die "cannot update $DOC"
    log "updated $DOC"
  fi
  exit 0
fi
mkdir -p "$BENCH_CACHE/runs" "$KUBLK_DIR"
with_lock "$BENCH_CACHE/.kublk.lock" build_kublk
[[ -x $KUBLK_DIR/current/kublk ]] || die "no kublk build in $KUBLK_DIR/current"
log "kublk: $(tr '\n' ' ' < "$KUBLK_DIR/current/BUILD-INFO" | cut -c1-160)"

run=$BENCH_CACHE/runs/$(date +%Y%m%d-%H%M%S)
mkdir -p "$run"
SAMPLER_PID=""
trap 'if [[ -n $SAMPLER_PID ]]; then kill "$SAMPLER_PID" 2>/dev/null || true; fi' EXIT
trap 'log "interrupted; raw data so far: $run"; exit 130' INT
trap 'log "terminated; raw data so far: $run"; exit 143' TERM
status=0
run_matrix "$run" || status=$?
record_context "$run"

python3 "$ROOT/scripts/bench/report.py" "$run" > "$run/results.md" || die "report.py failed on $run"
cat "$run/results.md"
log "raw data: $run; wall time $(( (SECONDS - t_start) / 60 )) min $(( (SECONDS - t_start) % 60 )) s"
if ((status != 0)); then
  log "the matrix did not finish (status $status: 125 = the VM died); docs/benchmarks.md left as it was"
  exit "$status"
fi
if [[ $BENCH_DOC == 1 ]]; then
  python3 "$ROOT/scripts/bench/report.py" "$run" --doc "$DOC" || die "cannot update $DOC"
  log "updated $DOC"
fi
