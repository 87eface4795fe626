#!/usr/bin/env bash
# Where a proxied request's CPU time goes, user space and kernel, gatehouse beside nginx: the
# closed loop of bench.sh alone, whose table splits each proxy's CPU per request into user and
# system time (clock ticks from /proc).
#
#   proxy/benches/cpu_split.sh                 # 5 rounds of 5 s
#   ROUNDS=3 DURATION=3 proxy/benches/cpu_split.sh
#
# Both proxies make the same syscalls per request (2 recvfrom + 2 writev under `strace -c`), so
# their kernel time is alike and most of the total: the split says how much of the difference
# user space can win back at all. Everything else as in bench.sh (pinning, ports, knobs).
set -euo pipefail
TARGETS=${TARGETS:-nginx gatehouse} FIXED_RATE=0 exec "$(dirname "$0")/bench.sh"
