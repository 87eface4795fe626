# shellcheck shell=bash
# Shared by ./quickstart and ./run-tests: tool checks, the emulator's lifecycle, and the
# settings both need. Sourced from the repository root.

# Fresh clones share one build outside the clone (a cold build is about 5 minutes on 2 cores).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/gatehouse-target}

# Cargo keys a workspace crate's build by its path relative to the workspace and decides
# freshness by file times, so a clone older than the last build from another clone would run
# that clone's code. When the folder was last built from another tree, this tree's sources are
# made newer than anything in it: its own workspace crates are rebuilt, third-party ones kept.
claim_build_dir() {
  local root=$PWD owner="$CARGO_TARGET_DIR/.gatehouse-tree"
  mkdir -p "$CARGO_TARGET_DIR"
  if [[ $(cat "$owner" 2>/dev/null) != "$root" ]]; then
    find Cargo.toml convention proxy provisioner lab tests \( -name '*.rs' -o -name Cargo.toml \) \
      -print0 | xargs -0 -r touch
    printf '%s\n' "$root" >"$owner"
  fi
}
claim_build_dir

# A local mirror of the hashicorp/aws provider, where the machine has one (the project's do);
# without it terraform init downloads the provider from the registry as usual.
if [[ -z ${GATEHOUSE_TF_PLUGIN_DIR:-} && -d /opt/tf-plugins ]]; then
  export GATEHOUSE_TF_PLUGIN_DIR=/opt/tf-plugins
fi

step() { printf '\n==> %s\n' "$*" >&2; }
fail() { printf '%s: %s\n' "${0##*/}" "$*" >&2; exit 1; }

# Prints the first match of an extended regex in a log file (an address a process announces),
# waiting for it up to `seconds` (5); fails with the end of the log.
wait_for() { # file pattern [seconds]
  local _
  for _ in $(seq $((${3:-5} * 10))); do
    if grep -Eo "$2" "$1" 2>/dev/null | head -n 1 | grep .; then return 0; fi
    sleep 0.1
  done
  fail "timed out waiting for '$2' in $1: $(tail -n 5 "$1" 2>/dev/null)"
}

# A Debian package for a missing command: installed when this runs as root with apt-get,
# otherwise named with how to get it.
debian_tool() { # command package
  command -v "$1" >/dev/null 2>&1 && return
  command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]] || fail "$1 is missing: apt-get install $2"
  printf '%s: installing %s (Debian)\n' "${0##*/}" "$2" >&2
  apt-get install -y -qq "$2" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq "$2" >/dev/null; }
}

# The tools that cannot be installed into the clone; each missing one is named with how to get it.
require_tools() {
  local tool how
  while read -r tool how; do
    command -v "$tool" >/dev/null 2>&1 || fail "'$tool' is not installed; $how"
  done <<'TOOLS'
cargo install Rust 1.94.1+ with rustup (https://rustup.rs)
python3 install Python 3.10+ with venv (apt-get install python3 python3-venv)
curl apt-get install curl
terraform install Terraform 1.7+ (https://developer.hashicorp.com/terraform/install)
TOOLS
  python3 -c 'import sys, venv; sys.exit(sys.version_info < (3, 10))' 2>/dev/null ||
    fail "python3 must be 3.10+ with the venv module (apt-get install python3-venv)"
  local tf_version
  tf_version=$(terraform/tf version -json | python3 -c 'import json, sys; print(json.load(sys.stdin)["terraform_version"])')
  python3 -c "import sys; sys.exit(tuple(map(int, '$tf_version'.split('.')[:2])) < (1, 7))" ||
    fail "terraform $tf_version is too old: 'terraform test' with mock_provider needs 1.7+"
}

# Emulators started by this script, stopped on exit; one that was already running (started by
# you with localstack/up) is used and left running.
STARTED_EMULATORS=()
stop_started_emulators() {
  local status=$? spec
  for spec in "${STARTED_EMULATORS[@]}"; do
    GATEHOUSE_EMULATOR=${spec%:*} GATEHOUSE_EMULATOR_PORT=${spec#*:} localstack/down || true
  done
  exit "$status"
}
trap stop_started_emulators EXIT
trap 'exit 130' INT TERM

start_emulator() { # name port
  local pid_file=.run/emulator-$1-$2/pid already=""
  [[ -f $pid_file ]] && kill -0 "$(<"$pid_file")" 2>/dev/null && already=1
  GATEHOUSE_EMULATOR=$1 GATEHOUSE_EMULATOR_PORT=$2 localstack/up >/dev/null
  [[ -n $already ]] || STARTED_EMULATORS+=("$1:$2")
}
