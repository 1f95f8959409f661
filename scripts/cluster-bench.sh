#!/usr/bin/env bash
# `make cluster-bench`: throughput against the three-node RabbitMQ cluster of
# `harness cluster-up` (network namespaces of its own, as root) with 1, 2 and 3 consumer
# processes at one offered load: CLUSTER_BENCH_RATE ids/s (default 3000) for
# CLUSTER_BENCH_SECS (default 30) each, with `harness bench`. Prints ids/s stored and CPU
# seconds per 1,000 ids stored of each process group; reports in target/cluster-bench/.
# Each run goes through scripts/bench.sh, which (as root, as this needs anyway for its
# namespaces) widens the ephemeral port range while the
# bench runs and waits for its ports to be free again: with 3 consumers the ceiling holds
# 36,000 connections, which the default range cannot give while the runs before are still
# in TIME_WAIT (the ceiling's calls failed 4,101 times of 14,242 on 2026-12-02). Status
# simulators: one per consumer, at least 2 (the ceiling's 36,000 calls of 3 consumers
# against 2 simulators failed 7,951 times of 69,185 with the range widened).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${CLUSTER_BENCH_OUT:-target/cluster-bench}
RATE=${CLUSTER_BENCH_RATE:-3000}
SECS=${CLUSTER_BENCH_SECS:-30}
SUBNET=${CLUSTER_SUBNET:-10.231.0}

rm -rf "$OUT"
mkdir -p "$OUT"
CLUSTER_OUT="$OUT/cluster" target/release/harness cluster-up >"$OUT/cluster-up.log" 2>&1 &
UP=$!
trap 'kill -TERM "$UP" 2>/dev/null || true; wait "$UP" || true' EXIT
for _ in $(seq 1 240); do
  [ -s "$OUT/cluster/amqp_url" ] && break
  if ! kill -0 "$UP" 2>/dev/null; then
    echo "the cluster did not come up:"; tail -20 "$OUT/cluster-up.log"; exit 1
  fi
  sleep 1
done
[ -s "$OUT/cluster/amqp_url" ] || { echo "the cluster did not come up within 240 s"; exit 1; }
URLS=$(cat "$OUT/cluster/amqp_url")

for n in 1 2 3; do
  echo "=== $n consumer process(es), $RATE ids/s offered for $SECS s ==="
  BENCH_AMQP_URL="$URLS" BENCH_MANAGEMENT_URL="http://$SUBNET.1:15672" \
    BENCH_CONSUMERS="$n" BENCH_STATUS_PROCS="$(( n > 2 ? n : 2 ))" \
    BENCH_RATE="$RATE" BENCH_SECS="$SECS" BENCH_SKIP_RAW=true \
    BENCH_OUT="$OUT/consumers-$n" scripts/bench.sh >"$OUT/consumers-$n.log" 2>&1 || {
      echo "bench with $n consumers failed:"; tail -20 "$OUT/consumers-$n.log"; exit 1; }
done

python3 - "$OUT" "$RATE" <<'PY' | tee "$OUT/result.md"
import json, sys
out, rate = sys.argv[1], int(sys.argv[2])
rows = []
for n in (1, 2, 3):
    r = json.load(open(f"{out}/consumers-{n}/result.json"))
    stored = r["ids_per_sec_stored"]
    cpu = r["cpu_percent"]
    per_k = lambda pct: pct / 100.0 / stored * 1000 if stored else float("nan")
    consumers = sum(v for k, v in cpu.items() if k.startswith("consumer"))
    total = sum(cpu.values())
    rows.append((n, stored, per_k(consumers), per_k(cpu.get("producer", 0)), per_k(cpu.get("rabbitmq", 0)),
                 per_k(cpu.get("postgresql", 0)), per_k(total), consumers / n))
print(f"## Against the 3-node cluster: {rate} ids/s offered, 1-3 consumer processes\n")
print("| consumers | ids/s stored | consumer CPU-s / 1k ids | producer | RabbitMQ (3 nodes) | PostgreSQL | all processes | CPU % per consumer |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
for n, stored, c, p, q, pg, t, each in rows:
    print(f"| {n} | {stored:.0f} | {c:.3f} | {p:.3f} | {q:.3f} | {pg:.3f} | {t:.3f} | {each:.0f} |")
PY
