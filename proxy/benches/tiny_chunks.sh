#!/usr/bin/env bash
# What relaying one upload of many one-byte chunks costs a proxy: CHUNKS (default 1,000,000,
# 6 MB on the wire) `1\r\nx\r\n` chunks in one POST, gatehouse beside nginx (both routed as in
# lib.sh; nginx with its defaults, which buffer the body before sending it on). Prints each
# proxy's CPU time (user + system, from /proc) for the upload, and what the backend received.
#
#   proxy/benches/tiny_chunks.sh
#   CHUNKS=100000 proxy/benches/tiny_chunks.sh
#
# Needs nginx, python3 and the release build. Listens on 127.0.0.1 ports 18281 and 18284.
set -euo pipefail
# shellcheck source=proxy/benches/lib.sh
source "$(dirname "$0")/lib.sh"
HERE=$(cd "$(dirname "$0")" && pwd)
CHUNKS=${CHUNKS:-1000000}
BIN=${BIN:-${CARGO_TARGET_DIR:-/var/tmp/gatehouse-target}/release/gatehouse-proxy}
WORK=${WORK:-$(mktemp -d /tmp/gatehouse-tiny-chunks.XXXXXX)}
for tool in nginx python3; do
  command -v "$tool" >/dev/null || { echo "$tool is missing (apt-get install nginx python3)" >&2; exit 2; }
done
[ -x "$BIN" ] || { echo "no proxy binary at $BIN: cargo build --release -p gatehouse-proxy" >&2; exit 2; }

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

STOP_AFTER=600 python3 "$HERE/tiny_chunks.py" backend >"$WORK/backend.port" &
pids+=($!)
for _ in $(seq 50); do [ -s "$WORK/backend.port" ] && break; sleep 0.1; done
backend=127.0.0.1:$(<"$WORK/backend.port")

nginx_proxy_config 127.0.0.1:18281 "$backend" "$WORK" off >"$WORK/nginx.conf"
gatehouse_config 127.0.0.1:18284 "$backend" >"$WORK/gatehouse.yaml"
nginx -e "$WORK/nginx.err" -c "$WORK/nginx.conf" &
pids+=($!)
nginx_pid=$!
TOKIO_WORKER_THREADS=1 "$BIN" --config "$WORK/gatehouse.yaml" >"$WORK/gatehouse.log" 2>&1 &
pids+=($!)
gatehouse_pid=$!
for port in 18281 18284; do wait_for_port "$port"; done

# User + system clock ticks of a process.
ticks() { awk '{sub(/.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)

printf '%-10s %10s  %s\n' proxy "CPU s" "backend received"
for target in nginx:$nginx_pid:18281 gatehouse:$gatehouse_pid:18284; do
  IFS=: read -r name pid port <<<"$target"
  before=$(ticks "$pid")
  answer=$(python3 "$HERE/tiny_chunks.py" client "$port" "$CHUNKS")
  after=$(ticks "$pid")
  printf '%-10s %10s  %s\n' "$name" "$(python3 -c "print(f'{($after - $before) / $hz:.2f}')")" "${answer#HTTP/1.1 }"
done
