#!/usr/bin/env bash
# User-space instructions per proxied request, with callgrind: repeatable on a busy machine,
# unlike wall-clock CPU time. Starts a backend nginx (`return 200 "ok"`, 127.0.0.1:18180) and
# the proxy under valgrind (one tokio worker, 127.0.0.1:18184), sends 1,000 warm-up requests,
# then counts instructions for exactly N requests (10 keep-alive connections).
#
#   proxy/benches/callgrind.sh [BINARY] [N]     # default: the release build, N=20000
#
# Prints "instructions/request"; the profile is left in $WORK/cg.out.1 (callgrind_annotate).
# Needs valgrind, nginx, python3. Ports 18180/18184 must be free.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${1:-${CARGO_TARGET_DIR:-/var/tmp/gatehouse-target}/release/gatehouse-proxy}
N=${2:-20000}
WORK=${WORK:-/tmp/gatehouse-callgrind}
mkdir -p "$WORK"
cat >"$WORK/backend.conf" <<CONF
worker_processes 1;
daemon off;
pid $WORK/backend.pid;
error_log $WORK/backend.err;
events { worker_connections 1024; }
http {
  access_log off;
  keepalive_requests 1000000;
  server { listen 127.0.0.1:18180; location / { return 200 "ok"; } }
}
CONF
cat >"$WORK/proxy.yaml" <<CONF
listen: 127.0.0.1:18184
admin_listen: 127.0.0.1:0
access_log: false
timeouts: { drain: 0s, shutdown: 2s }
edges:
  - host: api.example.com
    prefix: service.api
discovery:
  static:
    service.api.bench: ["127.0.0.1:18180"]
CONF
rm -f "$WORK"/cg.out*
setsid nginx -c "$WORK/backend.conf" </dev/null >/dev/null 2>&1 &
NGINX=$!
TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.out" \
  "$BIN" --config "$WORK/proxy.yaml" >"$WORK/proxy.log" 2>&1 &
VG=$!
cleanup() { kill "$VG" 2>/dev/null || true; kill "$NGINX" 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 1 100); do (echo >/dev/tcp/127.0.0.1/18184) 2>/dev/null && break; sleep 0.3; done
timeout 300 python3 "$HERE/fixed_count_client.py" 1000 10
callgrind_control -i on "$VG" >/dev/null
timeout 900 python3 "$HERE/fixed_count_client.py" "$N" 10
callgrind_control -d "$VG" >/dev/null
kill -TERM "$VG"; wait "$VG" || true
ir=$(awk '/^summary:/ {print $2}' "$WORK/cg.out.1")
echo "instructions: $ir for $N requests: $((ir / N)) instructions/request ($WORK/cg.out.1)"
