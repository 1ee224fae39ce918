#!/usr/bin/env bash
# uapi-headers.sh - print the path of an include folder holding the newest
# Linux UAPI headers (linux/ublk_cmd.h, linux/io_uring.h, ...), taken from the
# newest linux-libc-dev that any suite of $UAPI_SUITES offers (today sid has
# 7.2.x, trixie-backports 7.3.x).
#
#   inc=$(scripts/uapi-headers.sh)   # e.g. /opt/ublk-aot/uapi/7.3.4-1~bpo13+1/usr/include
#   gcc -I"$inc" -I"$inc/x86_64-linux-gnu" ...
#
# stdout: that one line; log lines go to stderr.  Each suite is asked for its
# candidate with its own private apt state ($UBLK_AOT_CACHE/apt/<suite>); the
# newest by dpkg --compare-versions is downloaded from its suite and unpacked
# with dpkg-deb -x into $UBLK_AOT_CACHE/uapi/<version>; nothing is installed.
# Once a copy is unpacked and every suite of the list has been asked before
# (the suites ever asked are listed in $UBLK_AOT_CACHE/uapi/.suites) the newest
# unpacked copy is reused with no network I/O.
# Env: FORCE=1 asks the archive again for a newer version;
#      UAPI_SUITES="sid trixie-backports"; UBLK_AOT_CACHE=/opt/ublk-aot.
set -euo pipefail
LOG_TAG=uapi-headers
# shellcheck source=scripts/vm-common.sh
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/vm-common.sh"

FORCE=${FORCE:-0}
UAPI_SUITES=${UAPI_SUITES:-sid trixie-backports}
UAPI_DIR=$UBLK_AOT_CACHE/uapi
read -ra suites <<<"$UAPI_SUITES"
((${#suites[@]})) || die "UAPI_SUITES is empty"

newest_local() {
  local d best=
  for d in "$UAPI_DIR"/*/.complete; do
    [[ -e $d ]] || continue
    d=${d%/.complete}
    if [[ -z $best ]] || dpkg --compare-versions "${d##*/}" gt "${best##*/}"; then best=$d; fi
  done
  printf '%s\n' "$best"
}

# all_asked: every suite of UAPI_SUITES was asked by an earlier fetch.
all_asked() {
  local s
  [[ -r $UAPI_DIR/.suites ]] || return 1
  for s in "${suites[@]}"; do grep -qxF -- "$s" "$UAPI_DIR/.suites" || return 1; done
}

fetch() {
  local suite ver best= from= dir tmp
  for suite in "${suites[@]}"; do
    papt_update "$suite"
    ver=$(papt_candidate "$suite" linux-libc-dev)
    if [[ -z $ver ]]; then
      log "no linux-libc-dev in $suite"
      continue
    fi
    log "$suite offers linux-libc-dev $ver"
    if [[ -z $best ]] || dpkg --compare-versions "$ver" gt "$best"; then best=$ver from=$suite; fi
  done
  [[ -n $best ]] || die "no linux-libc-dev in any of: ${suites[*]}"
  dir=$UAPI_DIR/${best//:/%3a}
  if [[ -e $dir/.complete ]]; then
    log "linux-libc-dev $best already unpacked"
  else
    log "downloading linux-libc-dev $best from $from"
    tmp=$dir.tmp
    rm -rf "$tmp"; mkdir -p "$tmp/deb"
    (cd "$tmp/deb" && papt "$from" apt-get -qq download "linux-libc-dev=$best")
    dpkg-deb -x "$tmp"/deb/linux-libc-dev_*.deb "$tmp"
    rm -rf "$tmp/deb"
    [[ -r $tmp/usr/include/linux/ublk_cmd.h ]] || log "warning: no linux/ublk_cmd.h in linux-libc-dev $best"
    touch "$tmp/.complete"
    rm -rf "$dir"; mv -T "$tmp" "$dir"
  fi
  { cat "$UAPI_DIR/.suites" 2>/dev/null || true; printf '%s\n' "${suites[@]}"; } | sort -u > "$UAPI_DIR/.suites.new"
  mv -f "$UAPI_DIR/.suites.new" "$UAPI_DIR/.suites"
}

have=$(newest_local)
if [[ $FORCE == 1 || -z $have ]] || ! all_asked; then
  with_lock "$UAPI_DIR/.lock" fetch
  have=$(newest_local)
fi
[[ -n $have && -d $have/usr/include ]] || die "no unpacked linux-libc-dev under $UAPI_DIR"
printf '%s/usr/include\n' "$have"
