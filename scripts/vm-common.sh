# shellcheck shell=bash disable=SC2034
# (SC2034: VM_DIR is used by the scripts that source this file)
# vm-common.sh - helpers sourced by vm-setup.sh, vm-run.sh and uapi-headers.sh.
# Not meant to be executed.
#
# State lives under $UBLK_AOT_CACHE (default /opt/ublk-aot):
#   apt/<suite>/   private apt state for one Debian suite (apt.conf,
#                  sources.list, lists/, cache/); the system's /etc/apt and
#                  /var/lib/apt are never written by it
#   vm/            virtme-ng .deb, unpacked kernels, kernel-<profile> links
#   uapi/<ver>/    unpacked linux-libc-dev (see uapi-headers.sh)
#
# The package mirror is the one the machine already uses: the URI of the
# bookworm entry of /etc/apt/sources.list.d/debian.sources (or of the legacy
# /etc/apt/sources.list), read at run time; only the suite name changes.
# UBLK_AOT_MIRROR=<uri> overrides it (keep mirror host names out of files).

UBLK_AOT_CACHE=${UBLK_AOT_CACHE:-/opt/ublk-aot}
VM_DIR=$UBLK_AOT_CACHE/vm
: "${LOG_TAG:=vm}"

log() { printf '%s: %s\n' "$LOG_TAG" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Print the URI of the machine's bookworm Debian mirror.
mirror_uri() {
  local uri=${UBLK_AOT_MIRROR:-}
  local f=/etc/apt/sources.list.d/debian.sources
  if [[ -z $uri && -r $f ]]; then
    # deb822: stanzas split by blank lines; take the first enabled "deb"
    # stanza whose Suites list has plain "bookworm".
    uri=$(awk '
      function flush() { if (deb && suite && on && u != "") { print u; found = 1; exit } deb = suite = 0; on = 1; u = "" }
      BEGIN { on = 1 }
      /^[[:space:]]*#/ { next }
      /^[[:space:]]*$/ { flush(); next }
      tolower($1) == "types:"   { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
      tolower($1) == "suites:"  { for (i = 2; i <= NF; i++) if ($i == "bookworm") suite = 1 }
      tolower($1) == "uris:"    { u = $2 }
      tolower($1) == "enabled:" { if (tolower($2) == "no") on = 0 }
      END { if (!found) flush() }' "$f")
  fi
  if [[ -z $uri && -r /etc/apt/sources.list ]]; then
    uri=$(awk '$1 == "deb" { for (i = 2; i < NF; i++) if ($i ~ /^[a-z+]+:\/\// && $(i+1) == "bookworm") { print $i; exit } }' \
      /etc/apt/sources.list)
  fi
  [[ -n $uri ]] || die "no bookworm entry found in /etc/apt (set UBLK_AOT_MIRROR)"
  printf '%s\n' "${uri%/}"
}

# papt_dir SUITE: the private apt folder of SUITE.
papt_dir() { printf '%s/apt/%s\n' "$UBLK_AOT_CACHE" "$1"; }

# papt_conf SUITE: create/refresh the private apt config of SUITE.
# Read after the system's apt.conf.d, so it can override and #clear.
papt_conf() {
  local suite=$1 d uri conf
  d=$(papt_dir "$suite")
  mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
  uri=$(mirror_uri)
  printf 'deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
    "$uri" "$suite" > "$d/sources.list.new"
  mv -f "$d/sources.list.new" "$d/sources.list"
  conf=$(cat <<EOF
// private apt state for suite $suite (written by scripts/vm-common.sh)
Dir::Etc::SourceList "$d/sources.list";
Dir::Etc::SourceParts "/dev/null";
Dir::State::Lists "$d/lists";
Dir::Cache "$d/cache";
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
Acquire::Languages "none";
APT::Sandbox::User "root";
Acquire::IndexTargets::deb::DEP-11::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled "false";
Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled "false";
Acquire::IndexTargets::deb::CNF::DefaultEnabled "false";
Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled "false";
#clear APT::Update::Pre-Invoke;
#clear APT::Update::Post-Invoke;
#clear APT::Update::Post-Invoke-Success;
#clear DPkg::Pre-Invoke;
#clear DPkg::Post-Invoke;
EOF
)
  [[ -r $d/apt.conf && $(<"$d/apt.conf") == "$conf" ]] || printf '%s\n' "$conf" > "$d/apt.conf"
}

# papt SUITE apt-get|apt-cache ARGS...: run an apt tool on the private state.
papt() {
  local suite=$1 tool=$2; shift 2
  "$tool" -c "$(papt_dir "$suite")/apt.conf" "$@"
}

# papt_update SUITE: refresh the private package lists of SUITE (network).
papt_update() {
  local suite=$1
  papt_conf "$suite"
  log "apt-get update (private, suite $suite)"
  if ! papt "$suite" apt-get -qq update; then
    # An old debian-archive-keyring may lack the newer release keys.
    log "private apt-get update failed; upgrading debian-archive-keyring and retrying"
    apt-get -qq update
    DEBIAN_FRONTEND=noninteractive apt-get -y -qq install debian-archive-keyring >/dev/null
    papt "$suite" apt-get -qq update
  fi
}

# papt_candidate SUITE PKG: version of PKG that SUITE offers (empty if none).
papt_candidate() {
  papt "$1" apt-cache madison "$2" 2>/dev/null |
    awk -F'|' 'NR == 1 { gsub(/[[:space:]]/, "", $2); print $2 }'
}

# with_lock FILE CMD...: run CMD holding an exclusive flock on FILE.
with_lock() {
  local f=$1; shift
  mkdir -p "$(dirname "$f")"
  ( flock -x 9; "$@" ) 9>"$f"
}
