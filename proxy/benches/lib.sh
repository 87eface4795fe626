# shellcheck shell=bash
# Configs the bench scripts share: gatehouse and nginx routing alike, as the shared harness's
# routed mode does (../shared/bench/run.sh): `Host: api.example.com`, `/bench/...` reaches the
# backend with the prefix stripped, access logs off.

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

# nginx_proxy_config LISTEN BACKEND WORK MASTER: the harness's routed nginx, one worker, with
# `master_process` on or off (off: one process, for valgrind), everything under WORK.
nginx_proxy_config() {
  local listen=$1 backend=$2 work=$3 master=$4
  mkdir -p "$work/nginx-tmp"
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
  upstream backend { server $backend; keepalive 128; keepalive_requests 1000000; }
  server { listen $listen backlog=4096 default_server; return 404; }
  server {
    listen $listen;
    server_name api.example.com;
    location /bench/ { proxy_pass http://backend/; proxy_http_version 1.1; proxy_set_header Connection ""; }
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
