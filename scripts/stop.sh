#!/usr/bin/env bash
# `make stop`: stops a running `make run` (from another terminal) as Ctrl-C would: SIGTERM
# to its script, which stops every component and waits for in-flight work. The services
# (PostgreSQL, RabbitMQ) keep running.
set -euo pipefail
cd "$(dirname "$0")/.."
pidfile=target/run/run.pid
if [ ! -f "$pidfile" ] || ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then
  echo "make run is not running"
  rm -f "$pidfile"
  exit 0
fi
pid=$(cat "$pidfile")
# A pid file left by a run that died without cleaning up may name another process now.
if ! tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'scripts/run.sh'; then
  echo "make run is not running (pid $pid in $pidfile is another process now)"
  rm -f "$pidfile"
  exit 0
fi
echo "stopping make run (pid $pid)..."
kill -TERM "$pid"
for _ in $(seq 300); do
  kill -0 "$pid" 2>/dev/null || { echo "stopped."; exit 0; }
  sleep 0.1
done
echo "make run (pid $pid) did not stop within 30 s; see target/run/*.log"
exit 1
