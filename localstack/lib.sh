# shellcheck shell=bash
# Shared by localstack/up and localstack/down: where an emulator instance lives and how to tell
# that a recorded PID is still the process we started.
#
# One instance = one (emulator, port) pair, recorded in .run/emulator-<name>-<port>/:
#   pid   the PID `up` started (the server itself, or the `docker run` client for LocalStack)
#   log   the server's stdout and stderr
#   tmp/  the server's TMPDIR (MiniStack keeps its own pid file and scratch data there)

GATEHOUSE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
EMULATOR_HOST=127.0.0.1

log() { printf 'localstack: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Validates GATEHOUSE_EMULATOR / GATEHOUSE_EMULATOR_PORT and sets EMULATOR, PORT, RUN_DIR.
emulator_select() {
  EMULATOR=${GATEHOUSE_EMULATOR:-ministack}
  PORT=${GATEHOUSE_EMULATOR_PORT:-4566}
  case $EMULATOR in
    ministack | moto | localstack) ;;
    *) die "GATEHOUSE_EMULATOR='$EMULATOR' is not one of: ministack (default), moto, localstack" ;;
  esac
  if ! [[ $PORT =~ ^[0-9]+$ ]] || ((PORT < 1 || PORT > 65535)); then
    die "GATEHOUSE_EMULATOR_PORT='$PORT' is not a TCP port"
  fi
  # shellcheck disable=SC2034 # read by up and down
  RUN_DIR=$GATEHOUSE_ROOT/.run/emulator-$EMULATOR-$PORT
}

# The string that must appear in /proc/<pid>/cmdline for a PID to count as ours. It guards against
# a recycled PID: `down` never signals a process that is not the emulator it started.
emulator_marker() {
  case $1 in
    ministack | moto) printf '%s' "$GATEHOUSE_ROOT/.tools/venv-$1/" ;;
    localstack) printf '%s' "gatehouse-localstack-$2" ;;
  esac
}

# True when the PID recorded in run dir $1 is alive and is the emulator $2 on port $3.
recorded_pid_alive() {
  local pid
  pid=$(recorded_pid "$1") || return 1
  kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$(emulator_marker "$2" "$3")"
}

recorded_pid() {
  local pid
  [[ -f $1/pid ]] || return 1
  pid=$(<"$1/pid")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  printf '%s' "$pid"
}

# Health endpoint that identifies each emulator (a 200 there means "this emulator answers").
health_path() {
  case $1 in
    ministack) printf '/_ministack/health' ;;
    moto) printf '/moto-api/data.json' ;;
    localstack) printf '/_localstack/health' ;;
  esac
}

answers() { # emulator port
  curl -fsS -o /dev/null --max-time 2 "http://$EMULATOR_HOST:$2$(health_path "$1")" 2>/dev/null
}

port_in_use() { # port
  (exec 3<>"/dev/tcp/$EMULATOR_HOST/$1") 2>/dev/null
}
