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
# BENCH_TUNE_PORTS=0 to leave it alone); see docs/performance.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# The bench's own listeners (19100-19199) are reserved while the range is wide, or an
# outgoing connection could take one of them as its source port and the listener's bind
# would fail with "address in use".
if [ "${BENCH_TUNE_PORTS:-1}" = "1" ] && [ "$(id -u)" -eq 0 ]; then
  read -r lo hi < /proc/sys/net/ipv4/ip_local_port_range
  reserved=$(cat /proc/sys/net/ipv4/ip_local_reserved_ports)
  if [ "$lo" -gt 10000 ]; then
    echo "[bench] widening net.ipv4.ip_local_port_range from '$lo $hi' to '10000 65000' and reserving 19100-19199 for the bench's listeners while it runs"
    # A connection closed from the bench's side stays in TIME_WAIT for 60 s on its source
    # port; one outside the usual range would keep a later listener on that port (any
    # scenario's fixed port in 10000-32767) from binding. So the range goes back first
    # (no new connection takes such a port after that), then this waits until those
    # ports are free again before the reservation goes, and the machine is left as found.
    # Each setting is put back on its own (one failing must not keep the other); written
    # to /proc directly, as some sysctl versions refuse an empty value.
    restore() {
      echo "$lo $hi" >/proc/sys/net/ipv4/ip_local_port_range
      local waited=0 left
      left=$(scripts/held-ports.sh "$lo" "$hi" || echo 0)
      if [ "$left" -gt 0 ]; then
        echo "[bench] waiting for $left source ports outside '$lo $hi' to be free (TIME_WAIT, up to 90 s)"
        while [ "$left" -gt 0 ] && [ "$waited" -lt 90 ]; do
          sleep 2; waited=$((waited + 2)); left=$(scripts/held-ports.sh "$lo" "$hi" || echo 0)
        done
        echo "[bench] after ${waited} s: $left source ports outside '$lo $hi' still in use"
        [ "$left" -eq 0 ] || scripts/held-ports.sh -v "$lo" "$hi" >/dev/null || true
      fi
      echo "$reserved" >/proc/sys/net/ipv4/ip_local_reserved_ports
      echo "[bench] net.ipv4.ip_local_port_range back to '$(cat /proc/sys/net/ipv4/ip_local_port_range)', ip_local_reserved_ports back to '$(cat /proc/sys/net/ipv4/ip_local_reserved_ports)'"
    }
    trap restore EXIT
    sysctl -qw net.ipv4.ip_local_reserved_ports="${reserved:+$reserved,}19100-19199"
    sysctl -qw net.ipv4.ip_local_port_range="10000 65000"
  fi
fi
target/release/harness bench "$@"
