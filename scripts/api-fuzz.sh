#!/usr/bin/env bash
# `make api-fuzz`: property-based requests generated from the producer's own OpenAPI
# document (schemathesis), against the real release producer on its own RabbitMQ names.
# Fails on any 5xx, on an answer that does not match the document, and when the ids
# published differ from the ids the 2xx answers accepted (a rejected request published
# something, or an accepted id is missing), messages published twice whole aside. The
# producer's log of the last run stays in target/api-fuzz/last-producer.log. Removes its queues, exchanges and spool afterwards.
#
# API_FUZZ_EXAMPLES (default 2000): test cases per operation and phase; API_FUZZ_SEED: a
# seed to replay a run. The producer runs with API keys on (every request sends one, and
# requests without a key or with a wrong one are checked to get 401 first);
# API_FUZZ_KEYS=off runs it without. The read API (tag `reads`: it needs a migrated
# database, and /events/stream never ends) is left out: e2e/tests/it/reads.rs tests each
# of its endpoints and bad parameters.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
EXAMPLES=${API_FUZZ_EXAMPLES:-2000}
SCHEMATHESIS_VERSION=4.32.5
PIKA_VERSION=1.4.4
WORK=target/api-fuzz
VENV=$WORK/venv

cargo build --release --locked -p producer
if [[ "$("$VENV/bin/pip" freeze 2>/dev/null | grep -ci -e "^schemathesis==$SCHEMATHESIS_VERSION\$" -e "^pika==$PIKA_VERSION\$")" != 2 ]]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "schemathesis==$SCHEMATHESIS_VERSION" "pika==$PIKA_VERSION"
fi
PY=$VENV/bin/python

run=apifuzz-$(date +%s)-$$
export TOPOLOGY_PREFIX=$run NOTIFICATIONS_EXCHANGE=$run.notifications-x
PORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export CALLBACK_ADDR=127.0.0.1:$PORT SPOOL_PATH=$WORK/$run/spool.redb RUST_LOG=warn
auth=()
if [ "${API_FUZZ_KEYS:-on}" != "off" ]; then
  key=apifuzz-$(head -c 18 /dev/urandom | base64 | tr -d '/+=')
  export CALLBACK_API_KEYS="rotated-out-key-0123456789,$key"
  auth=(--header "Authorization: Bearer $key")
fi
mkdir -p "$WORK/$run"
BASE=http://127.0.0.1:$PORT

"$BIN/producer" >"$WORK/$run/producer.log" 2>&1 &
producer=$!
cleanup() {
  kill -TERM "$producer" 2>/dev/null || true
  wait "$producer" 2>/dev/null || true
  cp "$WORK/$run/producer.log" "$WORK/last-producer.log" 2>/dev/null || true
  "$PY" scripts/api_fuzz_support.py cleanup "$TOPOLOGY_PREFIX" "$NOTIFICATIONS_EXCHANGE" || true
  rm -rf "${WORK:?}/$run"
}
trap cleanup EXIT

# Ready with an empty spool: every accepted id is then in the checks queue.
wait_ready() {
  for _ in $(seq 1 100); do
    curl -sf "$BASE/readyz" | grep -q '"status":"ready"' && return 0
    sleep 0.2
  done
  echo "api-fuzz: the producer did not become ready; its log:" >&2
  cat "$WORK/$run/producer.log" >&2
  return 1
}
wait_ready

if ((${#auth[@]})); then
  for header in "" "Authorization: Bearer wrong-key-0123456789abcdef" "Authorization: Basic Z3Vlc3Q6Z3Vlc3Q="; do
    code=$(curl -s -o /dev/null -w '%{http_code}' ${header:+-H "$header"} -H 'content-type: application/json' \
      -d '{"object_ids":[1]}' "$BASE/callback")
    if [ "$code" != 401 ]; then
      echo "api-fuzz: FAILED: a callback with ${header:-no Authorization header} got $code, not 401" >&2
      exit 1
    fi
  done
  echo "api-fuzz: API keys on: no key, a wrong key and Basic auth each got 401"
fi

tally_file=$WORK/$run/tally
: >"$tally_file"
set +e
API_FUZZ_TALLY=$tally_file SCHEMATHESIS_HOOKS=scripts/api_fuzz_support.py \
  "$VENV/bin/schemathesis" run "$BASE/openapi.json" \
  --checks not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance,negative_data_rejection,positive_data_acceptance \
  --phases examples,coverage,fuzzing \
  --exclude-tag reads \
  --max-examples "$EXAMPLES" \
  --workers 2 \
  --request-timeout 10 \
  "${auth[@]}" \
  --generation-database none \
  --no-color \
  ${API_FUZZ_SEED:+--seed "$API_FUZZ_SEED"}
schemathesis_status=$?
set -e

wait_ready
eval "$("$PY" scripts/api_fuzz_support.py tally "$tally_file")"
eval "$("$PY" scripts/api_fuzz_support.py published-ids "$TOPOLOGY_PREFIX")"
echo "api-fuzz: POST /callback answered $requests requests: $accepted 2xx, $rejected 4xx," \
  "$server_errors 5xx, $other other; ids accepted by the 2xx answers: $accepted_ids," \
  "ids published: $published_ids ($duplicate_ids of them in messages published twice)"
status=0
if ((schemathesis_status != 0)); then
  echo "api-fuzz: FAILED: schemathesis found failures (above)" >&2
  status=1
fi
if ((server_errors != 0)); then
  echo "api-fuzz: FAILED: $server_errors answers were 5xx" >&2
  status=1
fi
# A message published twice whole (a late confirm, then the spool's copy) is the
# at-least-once the pipeline promises; any other difference is an id lost, or one
# published for a rejected request.
if ((published_ids - duplicate_ids != accepted_ids)); then
  echo "api-fuzz: FAILED: $published_ids ids published ($duplicate_ids in messages published twice) but $accepted_ids accepted" >&2
  status=1
fi
if ((requests == 0)); then
  echo "api-fuzz: FAILED: no callback was sent" >&2
  status=1
fi
((status == 0)) && echo "api-fuzz: passed: no 5xx, answers match the document, nothing published for a rejected request"
exit "$status"
