#!/usr/bin/env bash
# Where a proxied request's CPU time goes: user space and kernel, gatehouse beside nginx.
# The shared harness reports their sum; the split shows how much of the difference user
# space can win back at all (both proxies make the same syscalls, so their kernel time is
# alike, and it is most of the total).
#
#   proxy/benches/cpu_split.sh                 # 5 rounds of 5 s, closed loop
#   ROUNDS=3 DURATION=3 proxy/benches/cpu_split.sh
#
# Same set-up as ../shared/bench/run.sh in routed mode: backend nginx (`return 200 "ok"`)
# and wrk (1 thread, 50 connections) on core 0, each proxy alone on core 1 with one worker,
# access logs off; the two proxies take turns, a 2 s warm-up before each measured run.
# Prints user and system µs per request per round, then the medians. Needs nginx, wrk,
# taskset, python3 and the release build. Listens on 127.0.0.1 ports 18180/18181/18184.
set -euo pipefail
# shellcheck source=proxy/benches/lib.sh
source "$(dirname "$0")/lib.sh"
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5}
BIN=${BIN:-${CARGO_TARGET_DIR:-/var/tmp/gatehouse-target}/release/gatehouse-proxy}
WORK=${WORK:-$(mktemp -d /tmp/gatehouse-cpu-split.XXXXXX)}
for tool in nginx wrk taskset python3; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install nginx wrk util-linux python3)" >&2; exit 2; }
done
[ -x "$BIN" ] || { echo "no proxy binary at $BIN: cargo build --release -p gatehouse-proxy" >&2; exit 2; }
mkdir -p "$WORK/tmp"

cat >"$WORK/backend.conf" <<CONF
worker_processes 1; daemon off; master_process on;
events { worker_connections 4096; }
pid $WORK/backend.pid;
error_log $WORK/backend.err;
http {
  access_log off; keepalive_requests 1000000; keepalive_timeout 75s;
  client_body_temp_path $WORK/tmp/body; proxy_temp_path $WORK/tmp/proxy;
  fastcgi_temp_path $WORK/tmp/fcgi; uwsgi_temp_path $WORK/tmp/uwsgi; scgi_temp_path $WORK/tmp/scgi;
  server { listen 127.0.0.1:18180 backlog=4096; location / { default_type text/plain; return 200 "ok"; } }
}
CONF
nginx_proxy_config 127.0.0.1:18181 127.0.0.1:18180 "$WORK" on >"$WORK/nginx.conf"
gatehouse_config 127.0.0.1:18184 127.0.0.1:18180 >"$WORK/gatehouse.yaml"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
taskset -c 0 nginx -e "$WORK/backend.err" -c "$WORK/backend.conf" &
pids+=($!)
taskset -c 1 nginx -e "$WORK/nginx.err" -c "$WORK/nginx.conf" &
pids+=($!)
nginx_pid=$!
TOKIO_WORKER_THREADS=1 taskset -c 1 "$BIN" --config "$WORK/gatehouse.yaml" >"$WORK/gatehouse.log" 2>&1 &
pids+=($!)
gatehouse_pid=$!
for port in 18180 18181 18184; do wait_for_port "$port"; done

# User and system clock ticks of a process and its children (nginx: master + worker).
ticks() {
  local pid=$1 user=0 system=0 u s
  for p in $pid $(pgrep -P "$pid" || true); do
    read -r u s < <(awk '{sub(/.*\) /, ""); print $12, $13}' "/proc/$p/stat")
    user=$((user + u)) system=$((system + s))
  done
  echo "$user $system"
}
load() { timeout $((DURATION + 10)) taskset -c 0 wrk -t1 -c50 -d"$1"s -H 'Host: api.example.com' "http://127.0.0.1:$2/bench/ok"; }

hz=$(getconf CLK_TCK)
echo "round proxy requests user_us system_us total_us" >"$WORK/raw.txt"
for round in $(seq 1 "$ROUNDS"); do
  for target in nginx:18181:$nginx_pid gatehouse:18184:$gatehouse_pid; do
    IFS=: read -r name port pid <<<"$target"
    load 2 "$port" >/dev/null
    read -r u0 s0 < <(ticks "$pid")
    out=$(load "$DURATION" "$port")
    read -r u1 s1 < <(ticks "$pid")
    requests=$(awk '/requests in/ {print $1}' <<<"$out")
    if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "$name: errors in round $round:" >&2; echo "$out" >&2; exit 1; fi
    python3 - "$round" "$name" "$requests" "$((u1 - u0))" "$((s1 - s0))" "$hz" <<'PY' | tee -a "$WORK/raw.txt"
import sys
r, name, n, u, s, hz = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
us = lambda ticks: ticks * 1e6 / hz / n
print(f"{r} {name} {n} {us(u):.2f} {us(s):.2f} {us(u + s):.2f}")
PY
  done
done

python3 - "$WORK/raw.txt" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1]).read().splitlines()[1:]]
med = {}
for name in ("nginx", "gatehouse"):
    mine = [r for r in rows if r[1] == name]
    med[name] = [statistics.median(float(r[i]) for r in mine) for i in (3, 4, 5)]
print("\nmedian µs per request      user   system   total")
for name, (u, s, t) in med.items():
    print(f"  {name:<22} {u:7.2f} {s:8.2f} {t:7.2f}")
n, g = med["nginx"], med["gatehouse"]
print(f"gatehouse/nginx: user {g[0] / n[0]:.2f}x, system {g[1] / n[1]:.2f}x, total {g[2] / n[2]:.2f}x")
print(f"gatehouse's system time alone is {g[1] / n[2]:.2f}x nginx's total; at 0.8x nginx's total, "
      f"user space would have {max(0.0, 0.8 * n[2] - g[1]):.2f} µs a request (nginx's user space: {n[0]:.2f} µs)")
PY
echo "raw: $WORK/raw.txt"
