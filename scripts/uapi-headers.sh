#!/usr/bin/env bash
# uapi-headers.sh - print the path of an include folder holding the newest
# Linux UAPI headers (linux/ublk_cmd.h, linux/io_uring.h, ...), taken from
# Debian sid's linux-libc-dev.
#
#   inc=$(scripts/uapi-headers.sh)   # e.g. /opt/ublk-aot/uapi/7.2.13-1/usr/include
#   gcc -I"$inc" -I"$inc/x86_64-linux-gnu" ...
#
# stdout: that one line; log lines go to stderr.  The package is fetched with
# the private apt state of suite sid ($UBLK_AOT_CACHE/apt/sid) and unpacked
# with dpkg-deb -x into $UBLK_AOT_CACHE/uapi/<version>; nothing is installed.
# Once a copy is unpacked the newest one is reused with no network I/O.
# Env: FORCE=1 asks the archive for a newer version; UAPI_SUITE=sid;
#      UBLK_AOT_CACHE=/opt/ublk-aot.
set -euo pipefail
LOG_TAG=uapi-headers
# shellcheck source=scripts/vm-common.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/vm-common.sh"

FORCE=${FORCE:-0}
UAPI_SUITE=${UAPI_SUITE:-sid}
UAPI_DIR=$UBLK_AOT_CACHE/uapi

newest_local() {
  local d best=
  for d in "$UAPI_DIR"/*/.complete; do
    [[ -e $d ]] || continue
    d=${d%/.complete}
    if [[ -z $best ]] || dpkg --compare-versions "${d##*/}" gt "${best##*/}"; then best=$d; fi
  done
  printf '%s\n' "$best"
}

fetch() {
  papt_update "$UAPI_SUITE"
  local ver dir tmp
  ver=$(papt_candidate "$UAPI_SUITE" linux-libc-dev)
  [[ -n $ver ]] || die "no linux-libc-dev in $UAPI_SUITE"
  dir=$UAPI_DIR/${ver//:/%3a}
  if [[ -e $dir/.complete ]]; then
    log "linux-libc-dev $ver already unpacked"
    return
  fi
  log "downloading linux-libc-dev $ver from $UAPI_SUITE"
  tmp=$dir.tmp
  rm -rf "$tmp"; mkdir -p "$tmp/deb"
  (cd "$tmp/deb" && papt "$UAPI_SUITE" apt-get -qq download "linux-libc-dev=$ver")
  dpkg-deb -x "$tmp"/deb/linux-libc-dev_*.deb "$tmp"
  rm -rf "$tmp/deb"
  [[ -r $tmp/usr/include/linux/ublk_cmd.h ]] || log "warning: no linux/ublk_cmd.h in linux-libc-dev $ver"
  touch "$tmp/.complete"
  rm -rf "$dir"; mv -T "$tmp" "$dir"
}

have=$(newest_local)
if [[ $FORCE == 1 || -z $have ]]; then
  with_lock "$UAPI_DIR/.lock" fetch
  have=$(newest_local)
fi
[[ -n $have && -d $have/usr/include ]] || die "no unpacked linux-libc-dev under $UAPI_DIR"
printf '%s/usr/include\n' "$have"
