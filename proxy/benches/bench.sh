#!/usr/bin/env bash
# gatehouse-proxy side by side with nginx and HAProxy on loopback, in one run:
#
#   proxy/benches/bench.sh                  # direct, nginx, gatehouse, HAProxy: 5 rounds (~5 min)
#   ROUNDS=3 DURATION=3 FIXED_RATE=0 proxy/benches/bench.sh     # shorter, closed loop only
#   ROUTES=10000 proxy/benches/bench.sh     # gatehouse with 9,999 more services in its table
#   proxy/benches/bench.sh routes           # nginx, gatehouse with 1 route and with ROUTES (10,000)
#
# On 2 cores: the backend (nginx, `return 200 "ok"`) and the load generator on core LOAD_CORE
# (0), each proxy alone with one worker on core PROXY_CORE (1): gatehouse with
# TOKIO_WORKER_THREADS=1, nginx one worker process, HAProxy one thread. All three route alike and
# do the same header work (lib.sh; checked before measuring: `check_header_work`). `direct` is
# the load generator straight to the backend: the ceiling, and the proof that the generator holds
# the fixed rate.
#
# Each of ROUNDS (5) rounds gives every target a turn, the order rotating from round to round:
# a WARMUP (2 s) closed-loop run, then the closed loop (wrk, 1 thread, CONNS (50) connections,
# DURATION (5) s): requests/s, and CPU per request from the user + system clock ticks of the
# proxy's processes (/proc) over the run; then the open loop (oha at FIXED_RATE (10,000) req/s
# over CONNS connections for DURATION s, latency counted from when each request was due, not
# when a connection was free): p50 and p99. Peak RSS when the rounds are done. After each round
# one noise line: hypervisor steal (/proc/stat) and the CPU that other processes on the machine
# used, and the load average. Before each turn the script waits for the machine to be quiet
# (QUIET_MAX (10) % of a core busy at most; QUIET_WAIT (300) s at most over the run: other
# engineers' builds share it). report.py turns raw.tsv into the tables: medians (min-max) over
# rounds, and ratios against nginx taken within each round, then their median (min-max).
#
# Needs nginx, haproxy, wrk, curl, taskset (installed with apt-get when run as root, otherwise
# named), python3, and cargo (which builds the release binary, unless SKIP_BUILD=1 with BIN, and
# oha, pinned, into .tools/ on first use). Everything listens on 127.0.0.1 ports 18080-18085;
# every process started here is stopped by PID when the script ends, also on failure or Ctrl-C.
# Results: WORK (default /tmp/gatehouse-bench/run-<time>): report.md, raw.tsv, logs/.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/../.."
ROOT=$PWD
# shellcheck source=scripts/common.sh
source scripts/common.sh
# shellcheck source=proxy/benches/lib.sh
source "$HERE/lib.sh"

MODE=${1:-}
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
WARMUP=${WARMUP:-2}
CONNS=${CONNS:-50}
FIXED_RATE=${FIXED_RATE:-10000}
LOAD_CORE=${LOAD_CORE:-0}
PROXY_CORE=${PROXY_CORE:-1}
QUIET_WAIT=${QUIET_WAIT:-300}
QUIET_MAX=${QUIET_MAX:-10}
BIN=${BIN:-$CARGO_TARGET_DIR/release/gatehouse-proxy}
case $MODE in
  "") ROUTES=${ROUTES:-1} TARGETS=${TARGETS:-direct nginx gatehouse haproxy} ;;
  routes) ROUTES=${ROUTES:-10000} TARGETS=${TARGETS:-nginx gatehouse gatehouse-routes} ;;
  *) echo "usage: $0 [routes]   (settings by environment: see the top of $0)" >&2; exit 2 ;;
esac
for knob in ROUNDS DURATION WARMUP CONNS FIXED_RATE ROUTES LOAD_CORE PROXY_CORE QUIET_WAIT QUIET_MAX; do
  [[ ${!knob} =~ ^[0-9]+$ ]] || fail "$knob must be a whole number, not '${!knob}'"
done
((ROUNDS > 0 && DURATION > 0 && CONNS > 0 && ROUTES > 0)) || fail "ROUNDS, DURATION, CONNS and ROUTES must be above 0"
((LOAD_CORE != PROXY_CORE)) || fail "LOAD_CORE and PROXY_CORE must differ: the proxy gets a core to itself"

declare -A PORT=([direct]=18080 [nginx]=18081 [haproxy]=18082 [gatehouse]=18084 [gatehouse-routes]=18085)
read -r -a TARGET_LIST <<<"$TARGETS"
for target in "${TARGET_LIST[@]}"; do
  [ -n "${PORT[$target]:-}" ] || fail "unknown target '$target' in TARGETS (direct nginx gatehouse gatehouse-routes haproxy)"
done
[ "$MODE" = routes ] || [[ " $TARGETS " != *" gatehouse-routes "* ]] || fail "gatehouse-routes is the routes mode's target: $0 routes"

# ---- tools, build, folders --------------------------------------------------------------------
bench_debian_tools nginx:nginx haproxy:haproxy wrk:wrk curl:curl taskset:util-linux || exit 2
command -v python3 >/dev/null || fail "python3 is missing: apt-get install python3"
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --locked --release -p gatehouse-proxy
fi
[ -x "$BIN" ] || fail "no proxy binary at $BIN: cargo build --release -p gatehouse-proxy"
OHA=""
if ((FIXED_RATE > 0)); then OHA=$(bench_oha "$ROOT") || exit 1; fi
WORK=${WORK:-/tmp/gatehouse-bench/run-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$WORK/logs"
RAW=$WORK/raw.tsv

# ---- configs ------------------------------------------------------------------------------------
BACKEND=127.0.0.1:${PORT[direct]}
backend_config "$BACKEND" "$WORK" >"$WORK/backend.conf"
nginx_proxy_config "127.0.0.1:${PORT[nginx]}" "$BACKEND" "$WORK/nginx" on >"$WORK/nginx.conf"
haproxy_config "127.0.0.1:${PORT[haproxy]}" "$BACKEND" >"$WORK/haproxy.cfg"

# gatehouse with `routes` services: service.api.bench -> the backend, plus routes-1 more
# (service.api.svc-N) at an unused address, which only cost table size: none is requested.
write_gatehouse_config() { # port routes file
  {
    gatehouse_config "127.0.0.1:$1" "$BACKEND"
    for i in $(seq 2 "$2"); do echo "    service.api.svc-$i: [\"127.0.0.1:9\"]"; done
  } >"$3"
  "$BIN" check --config "$3" >/dev/null
}
if [ "$MODE" = routes ]; then
  write_gatehouse_config "${PORT[gatehouse]}" 1 "$WORK/gatehouse.yaml"
  write_gatehouse_config "${PORT[gatehouse-routes]}" "$ROUTES" "$WORK/gatehouse-routes.yaml"
else
  write_gatehouse_config "${PORT[gatehouse]}" "$ROUTES" "$WORK/gatehouse.yaml"
fi

# ---- processes (only those started here, stopped by PID) ----------------------------------------
declare -A PID=()
stop_all() {
  local name
  for name in "${!PID[@]}"; do bench_stop "${PID[$name]}"; done
  PID=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM

start() { # name core command...
  local name=$1 core=$2
  shift 2
  taskset -c "$core" "$@" >"$WORK/logs/$name.log" 2>&1 &
  PID[$name]=$!
}

url_of() { # target
  if [ "$1" = direct ]; then echo "http://$BACKEND/ok"; else echo "http://127.0.0.1:${PORT[$1]}/bench/ok"; fi
}

# Until the target answers its benchmark request with 200 (10 s at most).
wait_ready() { # target
  local _
  for _ in $(seq 100); do
    [ "$(curl -s -m 1 -o /dev/null -w '%{http_code}' -H 'Host: api.example.com' "$(url_of "$1")")" = 200 ] && return 0
    [ "$1" = direct ] || kill -0 "${PID[$1]}" 2>/dev/null || fail "$1 exited: $(tail -n 5 "$WORK/logs/$1.log")"
    sleep 0.1
  done
  fail "$1 does not answer 200 on $(url_of "$1") after 10 s: $(tail -n 5 "$WORK/logs/$1.log")"
}

# Every proxy routes alike and forwards the same headers: each must answer 404 itself for
# another host and for another prefix, and forward to the backend `Host` as sent, X-Forwarded-For
# 127.0.0.1, -Proto http, -Port its own port, -Host the `Host`, and a request id that it also
# returns to the client (the client's own when it sent one). Fails on the first difference.
check_header_work() { # target
  local port=${PORT[$1]} base="http://127.0.0.1:${PORT[$1]}" got want response id
  for probe in "other.example.com /bench/ok" "api.example.com /nope/ok"; do
    got=$(curl -s -m 2 -o /dev/null -w '%{http_code}' -H "Host: ${probe% *}" "$base${probe#* }")
    [ "$got" = 404 ] || fail "$1 answers $got, not 404, to Host ${probe% *} ${probe#* }: it must route like the others"
  done
  response=$(curl -s -m 2 -D - -H 'Host: api.example.com' "$base/bench/headers" | tr -d '\r')
  id=$(awk 'tolower($1) == "x-request-id:" {print $2}' <<<"$response")
  want="host=api.example.com xff=127.0.0.1 proto=http port=$port xfh=api.example.com id=$id"
  got=$(tail -n 1 <<<"$response")
  [ -n "$id" ] && [ "$got" = "$want" ] ||
    fail "$1 forwards other headers than the rest: the backend saw '$got', expected '$want' (id = the X-Request-Id returned)"
  got=$(curl -s -m 2 -H 'Host: api.example.com' -H 'X-Request-Id: bench-check-1' "$base/bench/headers")
  [ "${got##* }" = id=bench-check-1 ] || fail "$1 does not keep the client's X-Request-Id: the backend saw '$got'"
  echo "$1: $want" >>"$WORK/header-work.txt"
}

[ -z "$(ss -Hltn 'sport >= :18080 and sport <= :18085')" ] ||
  fail "something already listens on 127.0.0.1:18080-18085 (it would be measured instead): $(ss -Hltnp 'sport >= :18080 and sport <= :18085')"
start backend "$LOAD_CORE" nginx -e "$WORK/logs/backend.err" -c "$WORK/backend.conf"
export TOKIO_WORKER_THREADS=1
for target in "${TARGET_LIST[@]}"; do
  case $target in
    direct) ;;
    nginx) start nginx "$PROXY_CORE" nginx -e "$WORK/logs/nginx.err" -c "$WORK/nginx.conf" ;;
    haproxy) start haproxy "$PROXY_CORE" haproxy -db -f "$WORK/haproxy.cfg" ;;
    gatehouse*) start "$target" "$PROXY_CORE" "$BIN" --config "$WORK/$target.yaml" ;;
  esac
done
wait_ready direct
for target in "${TARGET_LIST[@]}"; do
  wait_ready "$target"
  [ "$target" = direct ] || check_header_work "$target"
done

# ---- measuring ----------------------------------------------------------------------------------
cat >"$WORK/result.lua" <<'LUA'
-- One machine-readable line at the end of a wrk run: requests, seconds, errors.
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %.6f %d\n", summary.requests, summary.duration / 1e6,
    e.connect + e.read + e.write + e.timeout + e.status))
end
LUA

# "busy steal total" clock ticks of one core (cpuN) or of all of them (cpu), from /proc/stat.
core_ticks() { awk -v c="$1" '$1 == c {print $2 + $3 + $4 + $7 + $8, $9, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9}' /proc/stat; }
# User, nice and system ticks of the whole machine: what processes ran (interrupts not included).
process_ticks() { awk '$1 == "cpu" {print $2 + $3 + $4}' /proc/stat; }

# measure PHASE ROUND TARGET: one load run; a row of raw.tsv unless PHASE is warmup.
measure() {
  local phase=$1 round=$2 target=$3 seconds=$DURATION out=$WORK/last.out timing=$WORK/last.time
  local pu0=0 ps0=0 pu1=0 ps1=0 bu0 bs0 bu1 bs1 m0 m1 l0 l1 p0 p1 result
  [ "$phase" = warmup ] && seconds=$WARMUP
  [ "$target" = direct ] || read -r pu0 ps0 < <(bench_cpu_ticks "${PID[$target]}")
  read -r bu0 bs0 < <(bench_cpu_ticks "${PID[backend]}")
  m0=$(process_ticks) l0=$(core_ticks "cpu$LOAD_CORE") p0=$(core_ticks "cpu$PROXY_CORE")
  TIMEFORMAT='%3U %3S' # `time`: the load generator's own CPU seconds
  if [ "$phase" = fixed ]; then
    { time timeout $((seconds + 30)) taskset -c "$LOAD_CORE" "$OHA" -z "${seconds}s" -c "$CONNS" -q "$FIXED_RATE" \
        --latency-correction -w --no-tui --worker-threads 1 --output-format json -H 'Host: api.example.com' \
        "$(url_of "$target")" >"$out" 2>&1 || true; } 2>"$timing"
    result=$(python3 "$HERE/report.py" --oha-result <"$out" || true)
  else
    { time timeout $((seconds + 30)) taskset -c "$LOAD_CORE" wrk -t1 -c"$CONNS" -d"${seconds}s" --latency \
        -s "$WORK/result.lua" -H 'Host: api.example.com' "$(url_of "$target")" >"$out" 2>&1 || true; } 2>"$timing"
    result=$(awk '/^RESULT/ {print $2, $3, 0, 0, $4}' "$out")
  fi
  [ "$target" = direct ] || read -r pu1 ps1 < <(bench_cpu_ticks "${PID[$target]}")
  read -r bu1 bs1 < <(bench_cpu_ticks "${PID[backend]}")
  m1=$(process_ticks) l1=$(core_ticks "cpu$LOAD_CORE") p1=$(core_ticks "cpu$PROXY_CORE")
  [ -n "$result" ] || fail "the $phase run against $target gave no result: $(tail -n 5 "$out")"
  [ "$phase" = warmup ] && return 0
  # Other processes' CPU: what ran on the machine minus the proxy, the backend and the load
  # generator (its CPU seconds from `time`).
  echo "$phase $round $target $result $((pu1 - pu0)) $((ps1 - ps0)) $(getconf CLK_TCK)" \
    "$l0 $l1 $p0 $p1 $((m1 - m0 - (pu1 - pu0) - (ps1 - ps0) - (bu1 - bu0) - (bs1 - bs0))) $(<"$timing")" |
    awk -v OFS='\t' '{
      # $1-3 phase round target, $4-8 requests seconds p50_us p99_us errors, $9-11 proxy user and
      # system ticks and HZ, $12-14 / $15-17 load core busy steal total before / after,
      # $18-20 / $21-23 the same for the proxy core, $24 machine ticks not ours yet, $25-26 the
      # load generator user and system seconds
      load = $17 - $14; proxy = $23 - $20
      other = $24 - ($25 + $26) * $11; if (other < 0) other = 0
      steal = ($16 - $13) / load; if (($22 - $19) / proxy > steal) steal = ($22 - $19) / proxy
      print $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, ($15 - $12) / load, ($21 - $18) / proxy, steal, other / load
    }' >>"$RAW"
  tail -n 1 "$RAW" | awk -F'\t' '{
    printf "  %-6s %-17s %8.0f req/s  CPU %5.1f us/req", $1, $3, $4 / $5, ($9 + $10) / $11 * 1e6 / $4
    if ($1 == "fixed") printf "  p50 %.3f ms  p99 %.3f ms", $6 / 1000, $7 / 1000
    printf "  errors %d  steal %.1f%%  other %.0f%%\n", $8, 100 * $14, 100 * $15 }' >&2
}

printf 'phase\tround\ttarget\trequests\tseconds\tp50_us\tp99_us\terrors\tuser_ticks\tsystem_ticks\thz\tload_busy\tproxy_busy\tsteal\tother\n' >"$RAW"
{
  printf 'mode\t%s\n' "${MODE:-default}"
  printf 'settings\tROUNDS=%s DURATION=%s WARMUP=%s CONNS=%s FIXED_RATE=%s ROUTES=%s QUIET_WAIT=%s QUIET_MAX=%s\n' \
    "$ROUNDS" "$DURATION" "$WARMUP" "$CONNS" "$FIXED_RATE" "$ROUTES" "$QUIET_WAIT" "$QUIET_MAX"
  printf 'date\t%s\n' "$(date -u '+%Y-%m-%d %H:%M UTC')"
  printf 'gatehouse\t%s%s\n' "$(git rev-parse --short HEAD 2>/dev/null || echo '?')" \
    "$(git diff --quiet HEAD -- proxy/src convention 2>/dev/null || echo ' (with uncommitted changes)')"
  printf 'tools\t%s, %s, %s%s\n' "$(nginx -v 2>&1 | cut -d' ' -f3)" "$(haproxy -v | head -n 1 | cut -d' ' -f1-3)" \
    "$(wrk -v 2>&1 | head -n 1 | cut -d' ' -f1-2)" "${OHA:+, $("$OHA" --version)}"
  printf 'machine\t%s cores, %s, kernel %s\n' "$(nproc)" "$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)" "$(uname -r)"
  printf 'pinning\tbackend and load generator on core %s, each proxy on core %s\n' "$LOAD_CORE" "$PROXY_CORE"
} >"$WORK/settings.tsv"

# Other engineers' builds share the machine: before each target's turn, wait until the machine
# is nearly idle (at most QUIET_MAX % of a core busy over a second, while ours are idle), 30 s
# at most a turn and QUIET_WAIT seconds over the whole run; past that, measure anyway (the
# noise lines say how it went).
quiet_left=$QUIET_WAIT
wait_quiet() {
  local before after turn=30
  while ((quiet_left > 0 && turn > 0)); do
    turn=$((turn - 1))
    before=$(process_ticks)
    sleep 1
    after=$(process_ticks)
    quiet_left=$((quiet_left - 1)) waited=$((waited + 1))
    (((after - before) * 100 <= QUIET_MAX * $(getconf CLK_TCK))) && return 0
  done
  return 0
}

echo "bench: $TARGETS; $ROUNDS rounds; results in $WORK" >&2
for round in $(seq "$ROUNDS"); do
  # The order rotates, so no target always runs first or right after another.
  shift_by=$(((round - 1) % ${#TARGET_LIST[@]}))
  order=("${TARGET_LIST[@]:shift_by}" "${TARGET_LIST[@]:0:shift_by}")
  echo "round $round/$ROUNDS: ${order[*]}" >&2
  waited=0
  for target in "${order[@]}"; do
    wait_quiet
    measure warmup "$round" "$target"
    measure closed "$round" "$target"
    ((FIXED_RATE == 0)) || measure fixed "$round" "$target"
  done
  # The load average counts our own runnable processes too: about 2 while measuring (the
  # proxy, the load generator, the backend), so only what is above that is someone else's.
  awk -F'\t' -v r="$round" -v waited="$waited" -v load="$(cut -d' ' -f1-3 /proc/loadavg)" '$2 == r {
      if ($14 > steal) steal = $14
      if ($15 > other) { other = $15; busiest = $1 " " $3 }
    } END { printf "round %d noise: hypervisor steal at most %.1f%% of a core, other processes at most %.0f%% of a core%s; load average %s (ours about 2); waited %d s for quiet\n",
      r, 100 * steal, 100 * other, (other > 0.05 ? " (" busiest ")" : ""), load, waited }' "$RAW" | tee -a "$WORK/noise.txt" >&2
done

for target in "${TARGET_LIST[@]}"; do
  [ "$target" = direct ] || printf '%s\t%s\n' "$target" "$(bench_peak_rss_kib "${PID[$target]}")"
done >"$WORK/rss.tsv"
stop_all

python3 "$HERE/report.py" "$WORK" | tee "$WORK/report.md"
echo "raw data: $WORK" >&2
errors=$(awk -F'\t' 'NR > 1 {n += $8} END {print n + 0}' "$RAW")
[ "$errors" = 0 ] || fail "$errors requests failed: the rows with errors do not measure what they say"
