# shellcheck shell=bash
# What the bench scripts share: the routed configs of gatehouse, nginx and HAProxy, the tools
# they need, and reading a process's CPU time and memory from /proc.
#
# Routed alike: `Host: api.example.com` and `/bench/...` reach the backend with the prefix
# stripped (`GET /bench/ok` arrives as `GET /ok`), anything else is answered 404 by the proxy;
# access logs off; one upstream with keep-alive. The same header work as gatehouse by default:
# `Host` passed through; `X-Forwarded-For` (the peer), `-Proto` (http), `-Port` (the port the
# client connected to) and `-Host` (the `Host`) set; `X-Request-Id` kept when the client sent
# one, else generated, and returned to the client.

BENCH_OHA_VERSION=1.16.0

# gatehouse_config LISTEN BACKEND [HOST] [SEGMENT]: a proxy config on stdout. The static service
# map comes last, so a caller can append more services to it.
gatehouse_config() {
  cat <<CONF
listen: $1
admin_listen: 127.0.0.1:0
access_log: false
timeouts: { drain: 0s, shutdown: 2s }
edges:
  - host: ${3:-api.example.com}
    prefix: service.api
discovery:
  static:
    service.api.${4:-bench}: ["$2"]
CONF
}

# nginx_proxy_config LISTEN BACKEND WORK MASTER [HEADERS]: the routed nginx, one worker, with
# `master_process` on or off (off: one process, for valgrind), everything under WORK. HEADERS
# `same` (the default) does gatehouse's header work; `plain` none of it (nginx's defaults: `Host`
# rewritten to the upstream's name, nothing added), as measured before 2026-12-01.
nginx_proxy_config() {
  local listen=$1 backend=$2 work=$3 master=$4 headers=${5:-same} request_id="" header_work=""
  mkdir -p "$work/nginx-tmp"
  if [ "$headers" = same ]; then
    # The client's request id when it sent one, else nginx's own (32 hex digits, as gatehouse's).
    # The `$` names below are nginx's variables, not the shell's.
    # shellcheck disable=SC2016
    request_id='map $http_x_request_id $bench_request_id { "" $request_id; default $http_x_request_id; }'
    # shellcheck disable=SC2016
    header_work='proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-For $remote_addr;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Forwarded-Port $server_port;
      proxy_set_header X-Forwarded-Host $http_host;
      proxy_set_header X-Request-Id $bench_request_id;
      add_header X-Request-Id $bench_request_id always;'
  fi
  cat <<CONF
worker_processes 1; daemon off; master_process $master;
events { worker_connections 4096; }
pid $work/nginx.pid;
error_log $work/nginx.err;
http {
  client_body_temp_path $work/nginx-tmp/body; proxy_temp_path $work/nginx-tmp/proxy;
  fastcgi_temp_path $work/nginx-tmp/fcgi; uwsgi_temp_path $work/nginx-tmp/uwsgi; scgi_temp_path $work/nginx-tmp/scgi;
  access_log off; keepalive_requests 1000000; keepalive_timeout 75s;
  # No body limit (gatehouse has none by default either): tiny_chunks.sh sends 6 MB.
  client_max_body_size 0;
  $request_id
  upstream backend { server $backend; keepalive 128; keepalive_requests 1000000; }
  server { listen $listen backlog=4096 default_server; return 404; }
  server {
    listen $listen;
    server_name api.example.com;
    location /bench/ {
      proxy_pass http://backend/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      $header_work
    }
  }
}
CONF
}

# haproxy_config LISTEN BACKEND: the routed HAProxy, one thread. The prefix is cut with
# `bytes` (no regex: `path_beg` has already matched it).
haproxy_config() {
  cat <<CONF
global
  nbthread 1
  maxconn 4096
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 75s
  timeout server 60s
frontend bench
  bind $1
  acl routed_host req.hdr(host),field(1,:) -i api.example.com
  acl routed_path path_beg /bench/
  http-request return status 404 unless routed_host routed_path
  http-request set-var(txn.request_id) req.hdr(x-request-id) if { req.hdr(x-request-id) -m found }
  http-request set-var(txn.request_id) uuid unless { var(txn.request_id) -m found }
  http-request set-header X-Request-Id %[var(txn.request_id)]
  http-request set-header X-Forwarded-For %[src]
  http-request set-header X-Forwarded-Proto http
  http-request set-header X-Forwarded-Port %[dst_port]
  http-request set-header X-Forwarded-Host %[req.hdr(host)]
  http-request set-path %[path,bytes(6)]
  http-response set-header X-Request-Id %[var(txn.request_id)]
  default_backend upstream
backend upstream
  server backend $2
CONF
}

# backend_config LISTEN WORK: the backend every proxy forwards to, nginx answering `200 ok`;
# `/headers` echoes what a proxy forwarded (bench.sh's check that all do the same header work).
backend_config() {
  local work=$2/backend
  mkdir -p "$work"
  cat <<CONF
worker_processes 1; daemon off; master_process on;
events { worker_connections 4096; }
pid $work/nginx.pid;
error_log $work/nginx.err;
http {
  client_body_temp_path $work/body; proxy_temp_path $work/proxy;
  fastcgi_temp_path $work/fcgi; uwsgi_temp_path $work/uwsgi; scgi_temp_path $work/scgi;
  access_log off; keepalive_requests 1000000; keepalive_timeout 75s;
  server {
    listen $1 backlog=4096;
    default_type text/plain;
    location / { return 200 "ok"; }
    location = /headers {
      return 200 "host=\$http_host xff=\$http_x_forwarded_for proto=\$http_x_forwarded_proto port=\$http_x_forwarded_port xfh=\$http_x_forwarded_host id=\$http_x_request_id";
    }
  }
}
CONF
}

# Waits until something accepts connections on 127.0.0.1:PORT, up to `seconds` (10); fails
# otherwise, rather than letting the measurement run against nothing.
wait_for_port() { # port [seconds]
  local _
  for _ in $(seq $((${2:-10} * 10))); do
    (echo >"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1 after ${2:-10} s" >&2
  return 1
}

# Debian packages the benches run: installed with apt-get when this runs as root, otherwise
# named with the command that installs them.
bench_debian_tools() { # command:package...
  local spec missing=()
  for spec in "$@"; do
    command -v "${spec%%:*}" >/dev/null 2>&1 || missing+=("${spec#*:}")
  done
  [ ${#missing[@]} = 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "missing: ${missing[*]}; install them with: apt-get install ${missing[*]}" >&2
    return 2
  fi
  echo "installing ${missing[*]} (Debian)" >&2
  apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq >/dev/null && apt-get install -y -qq "${missing[@]}" >/dev/null; }
}

# The open-loop load generator: oha, pinned, built from crates.io into ROOT/.tools/ on first
# use (several minutes on 2 cores), its build folder kept beside the workspace's so that a fresh
# clone reinstalls in seconds. Prints its path.
bench_oha() { # root
  local tools=$1/.tools/oha-$BENCH_OHA_VERSION
  if [ ! -x "$tools/bin/oha" ]; then
    command -v cargo >/dev/null || { echo "cargo is missing (https://rustup.rs): it builds oha" >&2; return 2; }
    echo "installing oha $BENCH_OHA_VERSION into .tools/ (first use)" >&2
    CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/gatehouse-target}/oha-install \
      cargo install --quiet --locked oha --version "$BENCH_OHA_VERSION" --root "$tools" >&2 ||
      { echo "oha $BENCH_OHA_VERSION did not build (above)" >&2; return 1; }
  fi
  echo "$tools/bin/oha"
}

# A process and all its descendants, one PID a line.
bench_process_tree() { # pid
  local child
  echo "$1"
  for child in $(pgrep -P "$1" || true); do bench_process_tree "$child"; done
}

# "user system" clock ticks of a process tree, its reaped children included (/proc/PID/stat
# fields 14-17: utime, stime, cutime, cstime).
bench_cpu_ticks() { # pid
  local p user=0 system=0 u s cu cs
  for p in $(bench_process_tree "$1"); do
    read -r u s cu cs < <(awk '{sub(/.*\) /, ""); print $12, $13, $14, $15}' "/proc/$p/stat" 2>/dev/null || echo 0 0 0 0)
    user=$((user + u + cu)) system=$((system + s + cs))
  done
  echo "$user $system"
}

# Peak resident memory of a process tree in KiB (VmHWM, summed: nginx's master and worker).
bench_peak_rss_kib() { # pid
  local p total=0 kib
  for p in $(bench_process_tree "$1"); do
    kib=$(awk '/^VmHWM:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
    total=$((total + ${kib:-0}))
  done
  echo "$total"
}

# Stops a process this script started: TERM, then KILL after 5 s.
bench_stop() { # pid
  local _
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$1" 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
