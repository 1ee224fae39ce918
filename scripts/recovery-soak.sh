#!/usr/bin/env bash
# recovery-soak.sh — many SIGKILL/recover cycles under the torture harness, in the VM bench (run by hand).
#
#   scripts/recovery-soak.sh [CYCLES] [KERNEL]
#
# CYCLES (default 100) kill/recover cycles of StressTortureTests.Torture_across_kill_and_recover_matches_the_shadow:
# six O_DIRECT workers with shadows on a recoverable file device while its server is SIGKILLed at random moments and
# recovered; then every block is checked through the device (final verify) and in the backing file. The same test with
# 3 cycles is part of the test command. KERNEL is a vm-setup.sh profile (default trixie; backports = 7.x).
# Needs `./build.sh` and `dotnet build Ublk.Aot.Tests -c Release` first (scripts/test.sh does both). Exit status:
# dotnet test's; results in TestResults/recovery-soak-KERNEL.trx, the run's figures in its console output.
set -uo pipefail
cd "$(dirname "$0")/.."
cycles=${1:-100}
kernel=${2:-trixie}
[[ $cycles =~ ^[0-9]+$ && $cycles -gt 0 ]] || { echo "recovery-soak.sh: CYCLES must be a positive number (got '$cycles')" >&2; exit 2; }
[[ -x out/ublk-aot && -f Ublk.Aot.Tests/bin/Release/net10.0/Ublk.Aot.Tests.dll ]] || { echo "recovery-soak.sh: build first: ./build.sh && dotnet build Ublk.Aot.Tests -c Release" >&2; exit 2; }
KERNEL=$kernel scripts/vm-setup.sh || exit 1
export UBLK_TORTURE_RECOVER_CYCLES=$cycles
mkdir -p TestResults
# About 5 s per cycle under TCG; allow three times that plus boot.
VM_KERNEL=$kernel VM_TIMEOUT=$((cycles * 15 + 1200)) VM_CPUS=${VM_CPUS:-4} VM_PASSENV="UBLK_TORTURE_RECOVER_CYCLES UBLK_STRESS_SEED" \
  scripts/vm-run.sh -w "$PWD" -- dotnet test Ublk.Aot.Tests -c Release --no-build \
  --filter "Category=Integration&FullyQualifiedName~Torture_across_kill_and_recover" \
  --logger "trx;LogFileName=recovery-soak-$kernel.trx" --logger "console;verbosity=detailed" --results-directory TestResults 2>&1 | grep --line-buffered -vE '^\s*$'
exit "${PIPESTATUS[0]}"
