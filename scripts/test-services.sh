#!/usr/bin/env bash
# Runs scripts/services.sh against stand-ins for the PostgreSQL and RabbitMQ tools
# (pg_lsclusters, pg_createcluster, psql, rabbitmqctl, ...) on PATH, so its paths through
# a machine's states are walked without touching the machine's services:
#   1. no PostgreSQL cluster at all: one is created on port 5432 and started;
#   2. a stopped cluster on another port only: that one is started;
#   3. everything up already: nothing is changed.
# Each must end with "PostgreSQL and RabbitMQ are ready" and exit 0. `make test` runs it.
set -euo pipefail
cd "$(dirname "$0")/.."

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
stubs=$work/bin
mkdir -p "$stubs"

# The stand-ins keep the clusters in $work/clusters (pg_lsclusters -h format) and log
# every call that would change the machine to $work/calls.
stub() { printf '#!/bin/bash\n%s\n' "$2" >"$stubs/$1"; chmod +x "$stubs/$1"; }
stub pg_lsclusters 'cat "$STUB_DIR/clusters" 2>/dev/null || true'
stub pg_createcluster 'echo "pg_createcluster $*" >>"$STUB_DIR/calls"; echo "$3 $4 $2 down postgres /var/lib/postgresql/$3/$4 /var/log/x.log" >>"$STUB_DIR/clusters"'
stub pg_ctlcluster 'echo "pg_ctlcluster $*" >>"$STUB_DIR/calls"; sed -i "s/^$3 $4 \([0-9]*\) down/$3 $4 \1 online/" "$STUB_DIR/clusters"'
stub systemctl 'echo "systemctl $*" >>"$STUB_DIR/calls"'
stub pg_isready 'exit 0'
stub psql 'cat >/dev/null 2>&1 || true; exit 0'
stub runuser 'shift 3; exec "$@"'
stub rabbitmqctl 'exit 0'
stub rabbitmq-plugins 'if [ "$2" = list ]; then printf "rabbitmq_management\nrabbitmq_prometheus\n"; else echo "rabbitmq-plugins $*" >>"$STUB_DIR/calls"; fi'
stub rabbitmq-server 'echo "rabbitmq-server $*" >>"$STUB_DIR/calls"'
stub sudo 'exec "$@"'
stub apt-get 'echo "apt-get $*" >>"$STUB_DIR/calls"; exit 1'
# The script's last check connects to 127.0.0.1:5672; the stand-in answers for it.
stub bash 'if [ "${1:-}" = -c ] && [[ "${2:-}" == *"/dev/tcp/"* ]]; then exit 0; fi; exec /bin/bash "$@"'

failures=0
scenario() { # scenario NAME CLUSTERS EXPECTED-CALL: runs services.sh, checks the outcome
  local name=$1 clusters=$2 expected=$3
  printf '%s' "$clusters" >"$work/clusters"
  : >"$work/calls"
  local output status=0
  output=$(STUB_DIR=$work PATH="$stubs:$PATH" scripts/services.sh 2>&1) || status=$?
  if [ "$status" -ne 0 ] || ! grep -q "PostgreSQL and RabbitMQ are ready" <<<"$output"; then
    printf 'FAIL %s: exit %s\n%s\n' "$name" "$status" "$output"
    failures=$((failures + 1))
    return
  fi
  if [ -n "$expected" ] && ! grep -q -- "$expected" "$work/calls"; then
    printf 'FAIL %s: expected a call like "%s"; calls:\n%s\n' "$name" "$expected" "$(cat "$work/calls")"
    failures=$((failures + 1))
    return
  fi
  if [ -z "$expected" ] && [ -s "$work/calls" ]; then
    printf 'FAIL %s: changed the machine on a ready one; calls:\n%s\n' "$name" "$(cat "$work/calls")"
    failures=$((failures + 1))
    return
  fi
  printf 'ok   %s\n' "$name"
}

version=$(ls /usr/lib/postgresql 2>/dev/null | sort -n | tail -n 1)
[ -n "$version" ] || { echo "test-services: no /usr/lib/postgresql/<version> here" >&2; exit 1; }
if [ -d /run/systemd/system ]; then start_call="systemctl start postgresql@"; else start_call="pg_ctlcluster"; fi

scenario "no cluster: one is created on 5432 and started" "" "pg_createcluster -p 5432 $version main"
scenario "a stopped cluster on 5433 only: it is started" \
  "$version other 5433 down postgres /var/lib/postgresql/$version/other /var/log/x.log
" "$start_call"
scenario "everything up: nothing changes" \
  "$version main 5432 online postgres /var/lib/postgresql/$version/main /var/log/x.log
" ""

if [ "$failures" -gt 0 ]; then
  echo "test-services: $failures of 3 scenarios failed"
  exit 1
fi
echo "test-services: 3 of 3 scenarios passed"
