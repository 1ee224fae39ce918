#!/usr/bin/env bash
# test.sh — all of Ublk.Aot's tests: host unit tests, the initramfs boot (a host-side test that boots trixie's 6.12
# under its own QEMU, category Initramfs), then the VM integration suite in one VM boot per kernel (trixie's 6.12
# and trixie-backports' newest, 7.x).
# Called by `./build.sh test` (which publishes out/ublk-aot first). Ends with one line
# "N passed, N failed[, N skipped]" totalling both parts; exit status 0 only if nothing failed.
#
# Env: UBLK_TEST_FILTER   extra dotnet-test filter for the VM part and the initramfs boot (e.g. FullyQualifiedName~Serve)
#      UBLK_HOST_ONLY=1   skip the initramfs boot and the VM part (development only; CI never sets it)
#      UBLK_TEST_KERNELS  kernel profiles to run the VM suite on (default "trixie backports"; see vm-setup.sh)
#      VM_CPUS (4), VM_MEM (4G): see scripts/vm-run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
RES=$ROOT/TestResults
rm -rf "$RES"; mkdir -p "$RES"
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1
# vstest gives its test host 90 s to connect; a guest under TCG on a loaded 2-core host can take longer
# (seen once: "Failed to negotiate protocol", the whole VM run aborted). Passed into the VM below.
export VSTEST_CONNECTION_TIMEOUT=${VSTEST_CONNECTION_TIMEOUT:-600}

log() { printf '[test] %s\n' "$*" >&2; }
extra_failed=0

# Sum a counter attribute over the TRX files given.
counter() { local name=$1; shift; cat "$@" 2>/dev/null | grep -o "<Counters [^>]*" | grep -o " $name=\"[0-9]*\"" | grep -o '[0-9]*' | awk '{s+=$1} END {print s+0}'; }

log "building the test project"
if ! dotnet build Ublk.Aot.Tests -c Release -v quiet -nologo >"$RES/build.log" 2>&1; then
  cat "$RES/build.log" >&2
  log "test project build failed"
  echo "0 passed, 1 failed"
  exit 1
fi

# The ABI test compares our structs with the newest kernel UAPI headers (newest Debian linux-libc-dev, see uapi-headers.sh).
if [[ -z ${UBLK_UAPI_INCLUDE:-} ]]; then
  if inc=$(scripts/uapi-headers.sh); then export UBLK_UAPI_INCLUDE=$inc; else log "could not fetch the UAPI headers (the ABI tests will fail)"; fi
fi

# Host tests run some tools for real (promtool checks the /metrics exposition): the host packages of the VM bench
# (vm-setup.sh step 1) are installed first, also on a fresh clone and with UBLK_HOST_ONLY=1.
if ! VM_SETUP_HOST_ONLY=1 scripts/vm-setup.sh; then
  log "FAILED: the host packages could not be installed (scripts/vm-setup.sh step 1)"
  extra_failed=$((extra_failed + 1))
fi

t0=$SECONDS
log "host tests"
dotnet test Ublk.Aot.Tests -c Release --no-build --filter "Category!=Integration&Category!=Initramfs" \
  --logger "trx;LogFileName=host.trx" --logger "console;verbosity=normal" --results-directory "$RES" 2>&1 | grep --line-buffered -vE '^\s*$'
[[ -s $RES/host.trx ]] || { log "host tests produced no results"; extra_failed=$((extra_failed + 1)); }
log "host tests took $((SECONDS - t0)) s"

# The initramfs boot: a host-side test (it needs no ublk on the host; nested in the VM it would be TCG under TCG),
# run once, after the bench setup that unpacks trixie's 6.12 kernel it boots (scripts/initramfs.sh).
if [[ ${UBLK_HOST_ONLY:-0} != 1 ]]; then
  t0=$SECONDS
  log "initramfs test (host; boots the trixie kernel under its own QEMU)"
  if ! KERNEL=trixie scripts/vm-setup.sh; then
    log "FAILED: the VM bench could not be set up for kernel trixie; the initramfs test did not run"
    extra_failed=$((extra_failed + 1))
  else
    filter="Category=Initramfs"
    [[ -n ${UBLK_TEST_FILTER:-} ]] && filter="$filter&${UBLK_TEST_FILTER}"
    dotnet test Ublk.Aot.Tests -c Release --no-build --filter "$filter" \
      --logger "trx;LogFileName=initramfs.trx" --logger "console;verbosity=normal" --results-directory "$RES" 2>&1 | grep --line-buffered -vE '^\s*$'
    if [[ -z ${UBLK_TEST_FILTER:-} && $(counter executed "$RES/initramfs.trx") -lt 1 ]]; then
      log "FAILED: the initramfs test reported no results"
      extra_failed=$((extra_failed + 1))
    fi
  fi
  log "initramfs test took $((SECONDS - t0)) s"
fi

# The whole VM suite runs once per kernel, one boot each: trixie's 6.12 and trixie-backports' newest (7.x).
# Kernel-dependent tests assert the feature where the kernel has it and the refusal or fallback where it does not.
read -r -a kernels <<< "${UBLK_TEST_KERNELS:-trixie backports}"
if [[ ${UBLK_HOST_ONLY:-0} != 1 ]]; then
  for k in "${kernels[@]}"; do
    t0=$SECONDS
    log "VM bench setup (kernel profile $k)"
    if ! KERNEL=$k scripts/vm-setup.sh; then
      log "FAILED: the VM bench could not be set up for kernel $k; its integration suite did not run"
      extra_failed=$((extra_failed + 1))
      continue
    fi
    kver=$(basename "$(readlink -f "${UBLK_AOT_CACHE:-/opt/ublk-aot}/vm/kernel-$k")")
    filter="Category=Integration"
    [[ -n ${UBLK_TEST_FILTER:-} ]] && filter="$filter&${UBLK_TEST_FILTER}"
    log "VM integration suite on $kver (one boot; filter $filter)"
    VM_PASSENV="${VM_PASSENV:-} VSTEST_CONNECTION_TIMEOUT" VM_KERNEL=$k VM_CPUS=${VM_CPUS:-4} scripts/vm-run.sh -w "$ROOT" -- dotnet test Ublk.Aot.Tests -c Release --no-build \
      --filter "$filter" --logger "trx;LogFileName=vm-$k.trx" --logger "console;verbosity=normal" --results-directory "$RES" 2>&1 | grep --line-buffered -vE '^\s*$'
    vm_rc=${PIPESTATUS[0]}
    if [[ ! -s $RES/vm-$k.trx ]]; then
      log "FAILED: the VM suite on $kver reported no results (vm-run exit $vm_rc; 125 = the VM died)"
      extra_failed=$((extra_failed + 1))
    else
      log "VM suite on $kver: $(counter passed "$RES/vm-$k.trx") passed, $(( $(counter failed "$RES/vm-$k.trx") + $(counter error "$RES/vm-$k.trx") )) failed"
    fi
    log "VM suite on $kver took $((SECONDS - t0)) s (exit $vm_rc)"
  done
fi

trx=("$RES"/*.trx)
passed=$(counter passed "${trx[@]}")
failed=$(( $(counter failed "${trx[@]}") + $(counter error "${trx[@]}") + $(counter timeout "${trx[@]}") + $(counter aborted "${trx[@]}") + extra_failed ))
skipped=$(( $(counter total "${trx[@]}") - $(counter executed "${trx[@]}") ))
if ((skipped > 0)); then echo "$passed passed, $failed failed, $skipped skipped"; else echo "$passed passed, $failed failed"; fi
((failed == 0 && passed > 0))
