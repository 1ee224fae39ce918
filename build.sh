#!/usr/bin/env bash
# build.sh — build, run and test Ublk.Aot.
#
#   ./build.sh            publish the static NativeAOT binary to out/ublk-aot
#   ./build.sh run [ARGS] build, then run the main job: `serve` on the built-in default backend
#                         (mem:256M), a filesystem on the device, a file written and read back.
#                         Runs inside the VM bench when this host has no /dev/ublk-control.
#   ./build.sh test       build, host unit tests, then the VM integration suite (one boot);
#                         ends with one line "N passed, N failed"
#   ./build.sh bench      benchmarks (see docs/benchmarks.md)
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1 DOTNET_SKIP_FIRST_TIME_EXPERIENCE=1

log() { printf '[build] %s\n' "$*" >&2; }

publish() {
  command -v dotnet >/dev/null || { echo "build.sh: dotnet (.NET SDK 10) is required" >&2; exit 2; }
  log "dotnet publish (NativeAOT, static, linux-x64)"
  dotnet publish Ublk.Aot.csproj -c Release -r linux-x64 -o out -v quiet -nologo \
    -p:DebugType=none 2>&1 | grep -vE 'requires at runtime the shared libraries|^\s*$' >&2 || true
  [[ -x out/ublk-aot ]] || { echo "build.sh: publish failed (out/ublk-aot missing)" >&2; exit 1; }
  if readelf -d out/ublk-aot 2>/dev/null | grep -q NEEDED; then
    echo "build.sh: out/ublk-aot is not static" >&2; exit 1
  fi
  log "out/ublk-aot: $(stat -c %s out/ublk-aot) bytes, static"
}

cmd=${1:-publish}
[[ $# -gt 0 ]] && shift
case $cmd in
  publish|build) publish ;;
  run) publish; exec scripts/run-demo.sh "$@" ;;
  test) publish; exec scripts/test.sh "$@" ;;
  bench) publish; exec scripts/bench.sh "$@" ;;
  *) echo "usage: ./build.sh [publish|run|test|bench]" >&2; exit 2 ;;
esac
