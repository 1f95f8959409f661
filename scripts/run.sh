#!/usr/bin/env bash
# Starts the pipeline from release binaries: the status simulator (unless TESTER=off),
# the producer, two consumers, the sweeper and the callback driver (unless TESTER=off).
# Logs go to target/run/*.log. Ctrl-C (or SIGTERM, or `make stop` from another terminal)
# stops everything cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release}
LOGS=target/run
mkdir -p "$LOGS"
TESTER=${TESTER:-on}
pids=()

start() {
  local name=$1; shift
  "$@" >"$LOGS/$name.log" 2>&1 &
  pids+=($!)
  printf '  %-10s pid %-7s log %s\n' "$name" "$!" "$LOGS/$name.log"
}

stop() {
  trap - INT TERM
  echo
  echo "stopping (SIGTERM, waiting for in-flight work)..."
  # The driver first, so nothing new arrives, then the rest.
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait || true
  rm -f "$LOGS/run.pid"
  echo "stopped."
  exit 0
}
trap stop INT TERM
if [ -f "$LOGS/run.pid" ] && kill -0 "$(cat "$LOGS/run.pid")" 2>/dev/null; then
  echo "make run is already running (pid $(cat "$LOGS/run.pid")); make stop stops it"
  exit 1
fi
echo $$ >"$LOGS/run.pid"

echo "starting the last-seen pipeline:"
if [ "$TESTER" != "off" ]; then
  start status "$BIN/tester" serve
fi
start producer "$BIN/producer"
METRICS_ADDR=${CONSUMER_1_METRICS_ADDR:-127.0.0.1:9101} start consumer-1 "$BIN/consumer"
METRICS_ADDR=${CONSUMER_2_METRICS_ADDR:-127.0.0.1:9103} start consumer-2 "$BIN/consumer"
METRICS_ADDR=${SWEEPER_METRICS_ADDR:-127.0.0.1:9102} start sweeper "$BIN/sweeper"
if [ "$TESTER" != "off" ]; then
  sleep 1
  start driver "$BIN/tester" drive
fi

cat <<INFO

Where to look:
  status page    http://127.0.0.1:9090/status   (what is online, events live, any object's history)
  callbacks      POST http://127.0.0.1:9090/callback   e.g.
                 curl -XPOST -H 'content-type: application/json' -d '{"object_ids":[1,2,3]}' http://127.0.0.1:9090/callback
  RabbitMQ UI    http://127.0.0.1:15672  (login guest / guest)
  PostgreSQL     psql postgres://analyst:analyst@127.0.0.1:5432/lastseen -c 'SELECT * FROM objects ORDER BY last_seen DESC'
  metrics        http://127.0.0.1:9090/metrics (producer), :9101 and :9103 (consumers), :9102 (sweeper);
                 each also serves /healthz and /readyz
  status service http://127.0.0.1:9010/objects/42 $( [ "$TESTER" = "off" ] && echo "(TESTER=off: bring your own)" )

Ctrl-C stops everything (make stop does too, from another terminal).
INFO

# If any component dies, say so (and keep the others running).
while true; do
  alive=()
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      alive+=("$pid")
    else
      wait "$pid" && code=0 || code=$?
      echo "a component (pid $pid) exited with code $code; see $LOGS/*.log"
    fi
  done
  pids=("${alive[@]}")
  sleep 2 & wait $! || true
done
