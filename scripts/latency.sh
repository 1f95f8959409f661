#!/usr/bin/env bash
# Callback latency of 200-id batches: a release producer on its own queue names, loaded
# by `harness load` (concurrent clients, 1 s client timeout like the original tester).
# Prints the latency percentiles; cleans its queues up afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
PORT=${LATENCY_PORT:-19590}
CALLBACKS=${LATENCY_CALLBACKS:-3000}
CONCURRENCY=${LATENCY_CONCURRENCY:-8}
export TOPOLOGY_PREFIX=latency-check NOTIFICATIONS_EXCHANGE=latency-check.notifications
export CALLBACK_ADDR=127.0.0.1:$PORT RUST_LOG=warn
export SPOOL_PATH=target/latency/spool/producer.redb

"$BIN/producer" >target/latency-producer.log 2>&1 &
producer=$!
cleanup() {
  kill -TERM "$producer" 2>/dev/null || true
  wait "$producer" 2>/dev/null || true
  for q in latency-check.checks latency-check.checks.dead latency-check.notifications; do
    rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
  done
}
trap cleanup EXIT
for _ in $(seq 1 50); do
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break
  sleep 0.2
done
curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null \
  || { echo "the producer is not ready on port $PORT; see target/latency-producer.log" >&2; tail -n 3 target/latency-producer.log >&2; exit 1; }
echo "callback latency, $CALLBACKS callbacks of 200 distinct ids, $CONCURRENCY concurrent clients, release build, $(nproc) cores:"
"$BIN/harness" load --callback-url "http://127.0.0.1:$PORT/callback" \
  --callbacks "$CALLBACKS" --concurrency "$CONCURRENCY" --ids 200
