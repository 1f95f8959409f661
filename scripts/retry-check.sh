#!/usr/bin/env bash
# `make retry-check`: the status service answers 500 to everything. Each check message is
# retried with growing delays (through the TTL retry queues, not an immediate requeue) and
# lands in the dead-letter queue after MAX_ATTEMPTS, with its reason and attempt count in
# its headers; the consumer's CPU stays low meanwhile (no hot loop).
# Release binaries, its own database and queue names; fails if any of that does not hold.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
OUT=target/retry-check
IDS=${RETRY_CHECK_IDS:-1000}
# A hot loop pins a core (100%); waiting on retry queues costs almost nothing.
MAX_CPU_PERCENT=${RETRY_CHECK_MAX_CPU_PERCENT:-10}
PREFIX=retry-check
export TOPOLOGY_PREFIX=$PREFIX NOTIFICATIONS_EXCHANGE=$PREFIX.notifications
export DATABASE_URL=postgres://postgres:postgres@127.0.0.1:5432/lastseen_retrycheck
export SPOOL_PATH=$OUT/spool/producer.redb CALLBACK_ADDR=127.0.0.1:19690
export STATUS_ADDR=127.0.0.1:19610 STATUS_URL=http://127.0.0.1:19610
export STATUS_FAIL_RATE=1.0 STATUS_DELAY_MIN_MS=0 STATUS_DELAY_MAX_MS=0
export MAX_ATTEMPTS=${MAX_ATTEMPTS:-10} RETRY_BASE_MS=${RETRY_BASE_MS:-250} RETRY_MAX_MS=${RETRY_MAX_MS:-4000}
export IDS_PER_MESSAGE=50 LOG_FORMAT=json RUST_LOG=info METRICS_ADDR=127.0.0.1:0
MESSAGES=$(( (IDS + IDS_PER_MESSAGE - 1) / IDS_PER_MESSAGE ))
MGMT=http://guest:guest@127.0.0.1:15672/api

rm -rf "$OUT" && mkdir -p "$OUT"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  for q in $(rabbitmqctl -q list_queues name --no-table-headers 2>/dev/null | grep "^$PREFIX\." || true); do
    rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
  done
  psql -q postgres://postgres:postgres@127.0.0.1:5432/postgres -c 'DROP DATABASE IF EXISTS lastseen_retrycheck WITH (FORCE)' >/dev/null 2>&1 || true
}
trap cleanup EXIT
start() { local name=$1; shift; "$@" >"$OUT/$name.log" 2>&1 & pids+=($!); }

start status "$BIN/tester" serve
start producer "$BIN/producer"
start consumer "$BIN/consumer"
consumer=${pids[2]}
# Up to READY_SECS for the producer to answer ready and the consumer to consume (a busy
# machine, or RabbitMQ still deleting a previous run's queues, can take a while); past
# that, or when one of them exits, fail with their logs rather than post into nothing.
READY_SECS=${RETRY_CHECK_READY_SECS:-120}
ready=no
for _ in $(seq 1 $((READY_SECS * 5))); do
  if curl -sf "http://$CALLBACK_ADDR/readyz" >/dev/null && grep -q '"consuming"' "$OUT/consumer.log"; then
    ready=yes; break
  fi
  for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || break 2; done
  sleep 0.2
done
if [ "$ready" != yes ]; then
  echo "retry-check FAILED: the producer and the consumer were not both ready within ${READY_SECS} s (or one exited)"
  for name in status producer consumer; do
    echo "--- last lines of $OUT/$name.log"; tail -n 15 "$OUT/$name.log"
  done
  exit 1
fi
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
cpu_before=$(ticks "$consumer")
started=$(date +%s.%N)

ids=$(seq -s, 0 $((IDS - 1)))
curl -sf -XPOST -H 'content-type: application/json' -d "{\"object_ids\":[$ids]}" "http://$CALLBACK_ADDR/callback"
echo
echo "posted $IDS ids ($MESSAGES messages); the status service answers 500 to every call."
echo "MAX_ATTEMPTS=$MAX_ATTEMPTS RETRY_BASE_MS=$RETRY_BASE_MS RETRY_MAX_MS=$RETRY_MAX_MS"

dead=0
for _ in $(seq 1 240); do
  dead=$(rabbitmqctl -q list_queues name messages --no-table-headers | awk -v q="$PREFIX.checks.dead" '$1 == q { print $2 }')
  [ "${dead:-0}" -ge "$MESSAGES" ] && break
  sleep 0.5
done
elapsed=$(echo "$(date +%s.%N) - $started" | bc)
cpu_after=$(ticks "$consumer")
cpu_percent=$(echo "scale=2; ($cpu_after - $cpu_before) * 100 / $hz / $elapsed" | bc)

python3 - "$OUT/consumer.log" "$MGMT" "$PREFIX" "$IDS" "$MESSAGES" "$MAX_ATTEMPTS" "$elapsed" "$cpu_percent" "$MAX_CPU_PERCENT" <<'PY'
import json, sys, urllib.request, base64, collections
log, mgmt, prefix, ids, messages, max_attempts, elapsed, cpu, max_cpu = sys.argv[1:]
ids, messages, max_attempts = int(ids), int(messages), int(max_attempts)
retries = collections.defaultdict(list)   # attempt -> delays seen
for line in open(log):
    try:
        event = json.loads(line)
    except ValueError:
        continue
    if event.get("message") == "check failed, retrying later":
        retries[event["attempt"]].append(event["delay"])
print("\n| attempt | retried messages | delay before the next attempt |")
print("|---:|---:|---|")
for attempt in sorted(retries):
    print(f"| {attempt} | {len(retries[attempt])} | {', '.join(sorted(set(retries[attempt])))} |")

url = f"{mgmt.replace('guest:guest@', '')}/queues/%2f/{prefix}.checks.dead/get"
request = urllib.request.Request(url, method="POST",
    data=json.dumps({"count": messages * 2, "ackmode": "ack_requeue_false", "encoding": "auto"}).encode(),
    headers={"content-type": "application/json",
             "authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
letters = json.load(urllib.request.urlopen(request))
dead_ids, problems = [], []
for letter in letters:
    headers = letter["properties"].get("headers", {})
    dead_ids += json.loads(letter["payload"])["object_ids"]
    if headers.get("x-attempt") != max_attempts:
        problems.append(f"x-attempt {headers.get('x-attempt')} instead of {max_attempts}")
    if "500" not in str(headers.get("x-reason", "")):
        problems.append(f"x-reason without the 500: {headers.get('x-reason')!r}")
reason = letters[0]["properties"]["headers"].get("x-reason") if letters else None
print(f"\ndead letters: {len(letters)} messages, {len(set(dead_ids))} distinct ids of {ids}; "
      f"x-attempt={letters[0]['properties']['headers'].get('x-attempt') if letters else None}; x-reason={reason!r}")
print(f"all dead-lettered after {float(elapsed):.1f} s; consumer CPU over that time: {cpu}% of one core (bound {max_cpu}%)")
if len(letters) != messages or sorted(set(dead_ids)) != list(range(ids)):
    problems.append(f"expected {messages} dead letters holding ids 0..{ids - 1}")
if sorted(retries) != list(range(1, max_attempts)):
    problems.append(f"retries seen at attempts {sorted(retries)}, expected 1..{max_attempts - 1}")
if float(cpu) > float(max_cpu):
    problems.append(f"consumer CPU {cpu}% above {max_cpu}%: a hot loop?")
if problems:
    print("retry-check FAILED:\n  " + "\n  ".join(problems))
    sys.exit(1)
print("retry-check passed")
PY
