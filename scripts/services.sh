#!/usr/bin/env bash
# Makes sure PostgreSQL and RabbitMQ are installed (from the distribution's packages),
# running, and set up for the pipeline: a password for the postgres user (so the
# default DATABASE_URL works on a fresh machine), and RabbitMQ's management and
# Prometheus plugins. Safe to run again and again.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

log() { printf '[services] %s\n' "$*"; }

missing=()
command -v pg_lsclusters >/dev/null 2>&1 || missing+=(postgresql)
[ -x /usr/sbin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} from the distribution's packages"
  $SUDO apt-get update -qq
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# PostgreSQL: start the first cluster if it is down.
# The cluster on port 5432 (other clusters, such as the chaos suite's, are not ours to
# start); the first one if none listens there.
read -r pg_version pg_cluster _ pg_status _ < <(pg_lsclusters -h | awk '$3 == 5432' | head -n 1)
if [ -z "${pg_cluster:-}" ]; then
  read -r pg_version pg_cluster _ pg_status _ < <(pg_lsclusters -h | head -n 1)
fi
if [ "$pg_status" != "online" ]; then
  log "starting PostgreSQL $pg_version/$pg_cluster"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$pg_version" "$pg_cluster" start
fi
for _ in $(seq 1 30); do
  pg_isready -q -h 127.0.0.1 -p 5432 && break
  sleep 1
done
if ! PGPASSWORD=postgres psql -h 127.0.0.1 -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  log "setting the postgres user's password to 'postgres' (local development default)"
  $SUDO runuser -u postgres -- psql -qc "ALTER USER postgres PASSWORD 'postgres'" >/dev/null
fi

# The analysts' login: read-only through the lastseen_analyst role (created by the
# migrations; created here too so the login works before the first migration).
$SUDO runuser -u postgres -- psql -q >/dev/null 2>&1 <<'SQL' || log "could not create the analyst login (the README's SQL section uses it)"
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'lastseen_analyst') THEN
    CREATE ROLE lastseen_analyst NOLOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'analyst') THEN
    CREATE ROLE analyst LOGIN PASSWORD 'analyst' IN ROLE lastseen_analyst;
  END IF;
END
$$;
SQL

# RabbitMQ: start it if it is down, then enable the plugins admins use.
if ! $SUDO rabbitmqctl -q status >/dev/null 2>&1; then
  log "starting RabbitMQ"
  $SUDO rabbitmq-server -detached >/dev/null 2>&1 || true
  $SUDO rabbitmqctl -q await_startup --timeout 60 >/dev/null 2>&1 || $SUDO rabbitmqctl -q wait --timeout 60 --pid "$($SUDO cat /var/lib/rabbitmq/mnesia/*.pid 2>/dev/null | head -n 1)" >/dev/null
fi
enabled=$($SUDO rabbitmq-plugins -q list -e -m 2>/dev/null || true)
for plugin in rabbitmq_management rabbitmq_prometheus; do
  if ! grep -qx "$plugin" <<<"$enabled"; then
    log "enabling $plugin"
    $SUDO rabbitmq-plugins -q enable "$plugin" >/dev/null
  fi
done
log "PostgreSQL and RabbitMQ are ready"
