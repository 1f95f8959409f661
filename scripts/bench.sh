#!/usr/bin/env bash
# `make bench`: the whole pipeline on this machine under load (harness bench).
# Settings: BENCH_SECS (60), BENCH_RATE (10000 ids/s), BENCH_RATES=a,b,c for a sweep,
# and the others in `target/release/harness bench --help`.
#
# At 10,000 ids/s with status calls of 0.3-4.3 s, ~23,000 HTTP/1.1 calls are in flight,
# each on its own connection and ephemeral port: the default range (32768-60999, and
# connect() uses half of it) is too small and makes connect() scan it. As root, this
# widens it for the machine while the bench runs and puts it back when the bench ends,
# also on a failure or Ctrl-C (not if this script is killed with SIGKILL;
# BENCH_TUNE_PORTS=0 to leave it alone); see the README.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${BENCH_TUNE_PORTS:-1}" = "1" ] && [ "$(id -u)" -eq 0 ]; then
  read -r lo hi < /proc/sys/net/ipv4/ip_local_port_range
  if [ "$lo" -gt 10000 ]; then
    echo "[bench] widening net.ipv4.ip_local_port_range from '$lo $hi' to '10000 65000' while the bench runs"
    sysctl -qw net.ipv4.ip_local_port_range="10000 65000"
    trap 'sysctl -qw net.ipv4.ip_local_port_range="$lo $hi" && echo "[bench] net.ipv4.ip_local_port_range back to '"'"'$lo $hi'"'"'"' EXIT
  fi
fi
target/release/harness bench "$@"
