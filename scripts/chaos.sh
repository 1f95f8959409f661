#!/usr/bin/env bash
# `make chaos`: the chaos suite (`harness chaos`). The whole pipeline from the release
# binaries, on its own RabbitMQ node (port 5673) and PostgreSQL cluster (port 5499) so the
# machine's shared ones are never stopped, under callback load while a consumer, the
# producer and the sweeper are killed with SIGKILL and RabbitMQ and PostgreSQL are each
# stopped for 10 s. Fails if any accepted id was lost or a queue did not drain.
#
# CHAOS_RUNS=N runs it N times in a row, each a fresh run, stopping at the first failure;
# each run's report and logs are kept in target/chaos/runs/<n>/. Other settings
# (CHAOS_RATE, CHAOS_MAX_IDS, ports, ...): `target/release/harness chaos --help`.
#
# `scripts/chaos.sh cluster-chaos` (`make cluster-chaos`) runs the cluster scenario the
# same way: CLUSTER_RUNS times, reports in target/cluster-chaos/runs/<n>/ (settings:
# `target/release/harness cluster-chaos --help`).
#
# `scripts/chaos.sh pg-failover` (`make pg-failover`) runs the PostgreSQL failover
# scenario: PG_FAILOVER_RUNS times, reports in target/pg-failover/runs/<n>/ (settings:
# `target/release/harness pg-failover --help`). It first installs Patroni, etcd and
# HAProxy from the distribution's packages when missing, without starting their services
# (scripts/install-quietly.sh): the scenario runs its own, on its own ports.
set -euo pipefail
cd "$(dirname "$0")/.."
SCENARIO=chaos

# Installs the failover scenario's tools when missing (as root).
failover_tools() {
  local missing=()
  command -v patroni >/dev/null 2>&1 || missing+=(patroni)
  command -v etcd >/dev/null 2>&1 || missing+=(etcd-server)
  command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
  [ ${#missing[@]} -eq 0 ] && return 0
  scripts/install-quietly.sh "${missing[@]}"
}

if [ "${1:-}" = cluster-chaos ]; then
  SCENARIO=cluster-chaos
  shift
  RUNS=${CLUSTER_RUNS:-1}
  OUT=${CLUSTER_OUT:-target/cluster-chaos}
elif [ "${1:-}" = pg-failover ]; then
  SCENARIO=pg-failover
  shift
  RUNS=${PG_FAILOVER_RUNS:-1}
  OUT=${PG_FAILOVER_OUT:-target/pg-failover}
  failover_tools
else
  RUNS=${CHAOS_RUNS:-1}
  OUT=${CHAOS_OUT:-target/chaos}
fi

rm -rf "$OUT/runs"
for i in $(seq 1 "$RUNS"); do
  echo "=== $SCENARIO run $i of $RUNS ==="
  started=$(date +%s)
  status=0
  target/release/harness "$SCENARIO" "$@" || status=$?
  mkdir -p "$OUT/runs/$i"
  for f in result.md result.json logs; do
    if [ -e "$OUT/$f" ]; then cp -r "$OUT/$f" "$OUT/runs/$i/"; fi
  done
  echo "$SCENARIO run $i of $RUNS took $(( $(date +%s) - started )) s"
  if [ "$status" -ne 0 ]; then
    echo "$SCENARIO run $i of $RUNS FAILED; its report and logs: $OUT/runs/$i/"
    exit "$status"
  fi
done
echo "$SCENARIO: $RUNS of $RUNS runs passed, 0 lost ids"
