#!/usr/bin/env bash
# `make run` as a user meets it, checked. Runs scripts/run.sh (status simulator,
# producer, two consumers, sweeper, driver) on its own database and queue names, with
# the driver stopping after DRIVE_COUNT callbacks (5 s apart), and checks:
#   1. 60 s after start, `objects` holds only even ids, all seen within the TTL (30 s)
#      plus the expiry's documented precision: an object is expired once the watermark
#      (every callback accepted before its deadline settled) passes its deadline, which
#      trails now by the checks in flight (up to 4.3 s of status delay) plus 0.2-0.4 s of
#      reporting (README, "Our own lag never expires an object"); 1.3 s more for a shared,
#      loaded machine: 36 s. Every expiry in the history is held to the same bound;
#   2. after the driver stops, the table empties about 30 s (the TTL) later;
#   3. Ctrl-C (SIGTERM) stops every component cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
export DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/lastseen_runcheck
export TOPOLOGY_PREFIX=runcheck NOTIFICATIONS_EXCHANGE=runcheck.notifications
export SPOOL_PATH=target/run-check/spool/producer.redb
export DRIVE_COUNT=${DRIVE_COUNT:-12}
# TTL + the status delay's 4.3 s + 0.4 s of reporting + 1.3 s of margin (see above).
FRESH_WITHIN=36
PSQL=(psql "$DATABASE_URL" -Atq)

PGOPTIONS="--client-min-messages=warning" psql postgres://postgres:postgres@127.0.0.1:5432/postgres -qc "DROP DATABASE IF EXISTS lastseen_runcheck WITH (FORCE)"
scripts/run.sh >target/run-check.log 2>&1 &
run=$!
fail() { echo "run-check FAILED: $*"; kill -TERM "$run" 2>/dev/null; wait "$run" 2>/dev/null; exit 1; }
started=$(date +%s)

sleep 60
read -r rows odd oldest < <("${PSQL[@]}" -F' ' -c \
  "SELECT count(*), count(*) FILTER (WHERE id % 2 = 1), coalesce(extract(epoch FROM max(now() - last_seen))::numeric(8,1), 0) FROM objects")
echo "at +60 s: objects holds $rows rows, $odd odd ids, the oldest seen ${oldest} s ago"
[ "$rows" -gt 0 ] || fail "no rows after 60 s"
[ "$odd" -eq 0 ] || fail "odd ids stored"
awk -v o="$oldest" -v b="$FRESH_WITHIN" 'BEGIN { exit !(o < b) }' || fail "a row seen ${oldest} s ago, longer than the TTL and the expiry's precision (${FRESH_WITHIN} s)"

# Wait for the driver to finish, then for the table to empty.
while pgrep -f "tester drive" >/dev/null; do sleep 0.5; done
stopped=$(date +%s.%N)
echo "driver stopped at +$(( $(date +%s) - started )) s"
while [ "$("${PSQL[@]}" -c 'SELECT count(*) FROM objects')" != "0" ]; do
  now=$(date +%s.%N)
  awk -v a="$now" -v b="$stopped" 'BEGIN { exit !(a - b < 45) }' || fail "table not empty 45 s after the driver stopped"
  sleep 0.5
done
emptied=$(awk -v a="$(date +%s.%N)" -v b="$stopped" 'BEGIN { printf "%.1f", a - b }')
notifications=$("${PSQL[@]}" -c "SELECT count(*) FILTER (WHERE published_at IS NOT NULL) || ' published of ' || count(*) FROM notifications")
echo "table empty ${emptied} s after the driver stopped (TTL 30 s + up to 4.3 s of status delay); notifications: $notifications"
awk -v e="$emptied" 'BEGIN { exit !(e >= 25 && e <= 40) }' || fail "emptied after ${emptied} s, expected about 30 s"
read -r expiries late_max silent_max < <("${PSQL[@]}" -F' ' -c \
  "SELECT count(*), coalesce(extract(epoch FROM max(expired_at - expires_at))::numeric(8,1), 0), coalesce(extract(epoch FROM max(expired_at - last_seen))::numeric(8,1), 0) FROM object_expiries")
echo "history: $expiries expiries, the latest ${late_max} s after its deadline (seen ${silent_max} s before it expired)"
[ "$expiries" -gt 0 ] || fail "no expiry in the history"
awk -v s="$silent_max" -v b="$FRESH_WITHIN" 'BEGIN { exit !(s < b) }' || fail "an object expired ${silent_max} s after it was last seen, longer than ${FRESH_WITHIN} s"

kill -TERM "$run"
wait "$run" || fail "run.sh exited non-zero"
grep -q "stopped." target/run-check.log || fail "run.sh did not report a clean stop"
for log in target/run/*.log; do
  if grep -qiE "panicked|ERROR" "$log"; then fail "errors in $log"; fi
done
for q in runcheck.checks runcheck.checks.dead runcheck.notifications; do
  rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
done
for q in $(rabbitmqctl -q list_queues name --no-table-headers 2>/dev/null | grep '^runcheck\.' || true); do
  rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
done
echo "run-check passed"
