#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: repeatable on a busy
# machine, unlike wall-clock CPU time, so it can also guard against regressions in CI.
#
#   proxy/benches/callgrind.sh                    # gatehouse, the release build
#   proxy/benches/callgrind.sh nginx              # nginx as the proxy, the same header work
#   NGINX_HEADERS=plain proxy/benches/callgrind.sh nginx   # nginx without it (before 2026-12-01)
#   BUDGET=42000 proxy/benches/callgrind.sh       # exit 1 above 42,000 a request (./run-tests)
#
# The proxy runs under valgrind (one worker: TOKIO_WORKER_THREADS=1, or one nginx process)
# in front of a backend that answers every request as the benchmark's nginx does (`200 ok`,
# the same headers). A client sends 1,000 warm-up requests, then instructions are counted for
# exactly REQUESTS (20,000) more, over 10 keep-alive connections: `GET /bench/ok`,
# `Host: api.example.com`, routed to `/ok` by both proxies, which do the same header work
# (lib.sh: X-Forwarded-*, a generated X-Request-Id).
#
# Prints "instructions/request"; the profile is left in $WORK/cg.out.1 (callgrind_annotate).
# Needs valgrind and python3 (and nginx for `nginx`). Everything listens on 127.0.0.1 only.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TARGET=${1:-gatehouse}
BIN=$(realpath -m "${BIN:-${CARGO_TARGET_DIR:-/var/tmp/gatehouse-target}/release/gatehouse-proxy}")
REQUESTS=${REQUESTS:-20000}
WORK=$(realpath -m "${WORK:-$(mktemp -d /tmp/gatehouse-callgrind.XXXXXX)}")
mkdir -p "$WORK"
# The shared helpers expect the repository root as the working folder (paths above are absolute).
cd "$HERE/../.."
# shellcheck source=scripts/common.sh
source scripts/common.sh
# shellcheck source=proxy/benches/lib.sh
source "$HERE/lib.sh"
case $TARGET in
  gatehouse) [ -x "$BIN" ] || { echo "no proxy binary at $BIN: cargo build --release -p gatehouse-proxy" >&2; exit 2; } ;;
  nginx) command -v nginx >/dev/null || { echo "nginx is missing: apt-get install nginx" >&2; exit 2; } ;;
  *) echo "usage: $0 [gatehouse|nginx]" >&2; exit 2 ;;
esac
command -v valgrind >/dev/null || { echo "valgrind is missing: apt-get install valgrind" >&2; exit 2; }

pids=()
cleanup() { for p in "${pids[@]}"; do bench_stop "$p"; done; }
trap cleanup EXIT

# The backend: nginx's answer to `return 200 "ok"`, byte for byte apart from the date.
cat >"$WORK/backend.py" <<'PY'
import asyncio
RESPONSE = (b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 27 Nov 2026 00:00:00 GMT\r\n"
            b"Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok")
async def serve(reader, writer):
    try:
        while True:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(RESPONSE)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()
async def main():
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    print(f"backend listening on 127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()
asyncio.run(main())
PY
python3 "$WORK/backend.py" >"$WORK/backend.log" 2>&1 &
pids+=($!)
backend=$(wait_for "$WORK/backend.log" '127\.0\.0\.1:[0-9]+' 60)

rm -f "$WORK"/cg.out*
if [ "$TARGET" = gatehouse ]; then
  gatehouse_config 127.0.0.1:0 "$backend" >"$WORK/proxy.yaml"
  TOKIO_WORKER_THREADS=1 valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.out" \
    "$BIN" --config "$WORK/proxy.yaml" >"$WORK/proxy.log" 2>&1 &
  pids+=($!)
  proxy=$(wait_for "$WORK/proxy.log" 'listening on 127\.0\.0\.1:[0-9]+' 60 | grep -oE '[0-9.]+:[0-9]+')
else
  # As one process (no master), so that valgrind sees the worker.
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  proxy=127.0.0.1:$port
  nginx_proxy_config "$proxy" "$backend" "$WORK" off "${NGINX_HEADERS:-same}" >"$WORK/nginx.conf"
  valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg.out" \
    nginx -e "$WORK/nginx.err" -c "$WORK/nginx.conf" >"$WORK/proxy.log" 2>&1 &
  pids+=($!)
  wait_for_port "$port" 60
fi
vg=${pids[-1]}

client() { timeout 900 python3 "$HERE/fixed_count_client.py" "$1" 10 "${proxy##*:}"; }
client 1000
callgrind_control -i on "$vg" >/dev/null 2>&1
client "$REQUESTS"
callgrind_control -d "$vg" >/dev/null 2>&1
kill -TERM "$vg"
wait "$vg" || true
ir=$(awk '/^summary:/ {print $2}' "$WORK/cg.out.1")
per_request=$((ir / REQUESTS))
echo "$TARGET: $ir instructions for $REQUESTS requests: $per_request instructions/request ($WORK/cg.out.1)"
if [ -n "${BUDGET:-}" ]; then
  if [ "$per_request" -gt "$BUDGET" ]; then
    echo "over budget: $per_request instructions a request, the budget is $BUDGET" >&2
    echo "see where they go: callgrind_annotate --inclusive=yes $WORK/cg.out.1 | head -60" >&2
    exit 1
  fi
  echo "within budget: $per_request <= $BUDGET instructions a request"
fi
