#!/usr/bin/env bash
# soak.sh — long runs of the stress harnesses in the VM bench (the test command runs them short).
#
#   scripts/soak.sh [DURATION] [FILTER]
#
# DURATION (default 30m; a number with s, m or h) is each torture case's run time (mem and file backends, one after
# the other) and each ordering case's; FILTER (default FullyQualifiedName~StressTorture) picks the tests. Needs
# `./build.sh` and `dotnet build Ublk.Aot.Tests -c Release` done first (scripts/test.sh does both). Exit status:
# dotnet test's; results in TestResults/soak.trx.
set -uo pipefail
cd "$(dirname "$0")/.."
dur=${1:-30m}
filter=${2:-FullyQualifiedName~StressTorture}
[[ $dur =~ ^([0-9]+)([smh])$ ]] || { echo "soak.sh: DURATION must be a number with s, m or h (got '$dur')" >&2; exit 2; }
case ${BASH_REMATCH[2]} in s) secs=${BASH_REMATCH[1]} ;; m) secs=$((BASH_REMATCH[1] * 60)) ;; h) secs=$((BASH_REMATCH[1] * 3600)) ;; esac
[[ -x out/ublk-aot && -f Ublk.Aot.Tests/bin/Release/net10.0/Ublk.Aot.Tests.dll ]] || { echo "soak.sh: build first: ./build.sh && dotnet build Ublk.Aot.Tests -c Release" >&2; exit 2; }
scripts/vm-setup.sh || exit 1
export UBLK_TORTURE_DURATION=$dur UBLK_ORDERING_DURATION=$dur
mkdir -p TestResults
# Every matching case runs DURATION; allow for four of them plus boot and set-up.
VM_TIMEOUT=$((secs * 4 + 1800)) VM_CPUS=${VM_CPUS:-4} VM_PASSENV="UBLK_TORTURE_DURATION UBLK_ORDERING_DURATION UBLK_STRESS_SEED" \
  scripts/vm-run.sh -w "$PWD" -- dotnet test Ublk.Aot.Tests -c Release --no-build --filter "Category=Integration&$filter" \
  --logger "trx;LogFileName=soak.trx" --logger "console;verbosity=detailed" --results-directory TestResults 2>&1 | grep --line-buffered -vE '^\s*$'
exit "${PIPESTATUS[0]}"
