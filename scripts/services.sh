#!/usr/bin/env bash
# Makes sure PostgreSQL and RabbitMQ are installed (from the distribution's packages),
# running, and set up for the pipeline, on Debian 12 or Ubuntu 24.04, with or without
# systemd, as root or through sudo. Safe to run again and again; a machine whose services
# already run and accept the pipeline's logins is left as it is.
#
# What it may change, and only when needed (the README says the same):
# - installs the packages postgresql and rabbitmq-server when they are missing;
# - starts a stopped PostgreSQL cluster (the one on port 5432) or RabbitMQ node;
# - gives the postgres user the password 'postgres' when it has no password at all
#   (the default DATABASE_URL logs in with it); a password of its own is never changed;
# - creates the read-only analyst login (analyst / analyst) if missing;
# - enables RabbitMQ's management and Prometheus plugins.
set -euo pipefail

log() { printf '[services] %s\n' "$*"; }
fail() { printf '[services] error: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || fail "run as root, or install sudo: installing and starting services needs root"
  SUDO=(sudo)
fi
as_root() { "${SUDO[@]}" "$@"; }
# From /, which the postgres user may read (the clone may sit where it may not).
as_postgres() { (cd / && as_root runuser -u postgres -- "$@"); }

# systemd manages the services when it is the init system; elsewhere (containers, WSL,
# chroots) they are started directly.
if [ -d /run/systemd/system ]; then SYSTEMD=1; else SYSTEMD=0; fi

wait_for() { # wait_for SECONDS WHAT COMMAND...: polls COMMAND once a second
  local limit=$1 what=$2; shift 2
  for ((i = 0; i < limit; i++)); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 1
  done
  return 1
}

# --- packages ----------------------------------------------------------------------
missing=()
command -v pg_lsclusters >/dev/null 2>&1 || missing+=(postgresql)
[ -x /usr/sbin/rabbitmq-server ] || command -v rabbitmq-server >/dev/null 2>&1 || missing+=(rabbitmq-server)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing ${missing[*]} from the distribution's packages (apt-get)"
  if ! as_root apt-get update -qq; then
    log "apt-get update failed (offline?); installing from the package lists at hand"
  fi
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null \
    || fail "apt-get install ${missing[*]} failed (see its output above)"
fi

# --- PostgreSQL ----------------------------------------------------------------------
# The cluster on port 5432 (other clusters, such as the chaos suite's, are not ours to
# start); the first one if none listens there; a new 'main' cluster if there is none.
cluster_line() {
  pg_lsclusters -h | awk '$3 == 5432' | head -n 1
}
line=$(cluster_line)
[ -n "$line" ] || line=$(pg_lsclusters -h | head -n 1)
if [ -z "$line" ]; then
  version=$(ls /usr/lib/postgresql | sort -n | tail -n 1)
  log "creating PostgreSQL cluster $version/main on port 5432"
  as_root pg_createcluster -p 5432 "$version" main >/dev/null
  line=$(cluster_line)
fi
read -r pg_version pg_cluster pg_port pg_status _ <<<"$line"
if [ "$pg_status" != "online" ]; then
  log "starting PostgreSQL $pg_version/$pg_cluster"
  if [ "$SYSTEMD" = 1 ]; then
    as_root systemctl start "postgresql@$pg_version-$pg_cluster"
  else
    as_root pg_ctlcluster --skip-systemctl-redirect "$pg_version" "$pg_cluster" start
  fi
fi
wait_for 60 "PostgreSQL" pg_isready -q -h 127.0.0.1 -p "$pg_port" \
  || fail "PostgreSQL $pg_version/$pg_cluster does not accept connections on 127.0.0.1:$pg_port after 60 s; see /var/log/postgresql/"

# The default DATABASE_URL logs in as postgres with the password 'postgres'. Where
# 127.0.0.1 is trusted any password works; elsewhere the user needs that one.
if ! PGPASSWORD=postgres psql -h 127.0.0.1 -p "$pg_port" -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
  has_password=$(as_postgres psql -p "$pg_port" -Atqc "SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = 'postgres'")
  if [ "$has_password" = "t" ]; then
    fail "PostgreSQL's postgres user has a password other than 'postgres': put yours in DATABASE_URL (in .env, or the environment)"
  fi
  log "setting the postgres user's password to 'postgres' (it had none; the local development default)"
  as_postgres psql -p "$pg_port" -qc "ALTER USER postgres PASSWORD 'postgres'" >/dev/null
fi

# The analysts' login: read-only through the lastseen_analyst role (created by the
# migrations; created here too so the login works before the first migration). The same
# file sets it up in the compose file's PostgreSQL.
as_postgres psql -p "$pg_port" -q >/dev/null 2>&1 <"$(dirname "$0")/../deploy/postgres/analyst.sql" || log "could not create the analyst login (the README's SQL section and the read API use it)"

# --- RabbitMQ ------------------------------------------------------------------------
# `rabbitmqctl status` answers once the node runs; `await_startup` then waits for its
# applications. Both fail at once while the node is still booting, hence the polling.
if ! as_root rabbitmqctl -q status >/dev/null 2>&1; then
  log "starting RabbitMQ"
  if [ "$SYSTEMD" = 1 ]; then
    as_root systemctl start rabbitmq-server
  else
    as_root rabbitmq-server -detached >/dev/null 2>&1 || true
  fi
  log "waiting for RabbitMQ to boot (up to 120 s)"
  wait_for 120 "RabbitMQ" as_root rabbitmqctl -q status \
    || fail "RabbitMQ did not start within 120 s; see /var/log/rabbitmq/"
fi
as_root rabbitmqctl -q await_startup --timeout 120 >/dev/null \
  || fail "RabbitMQ did not finish booting within 120 s; see /var/log/rabbitmq/"
enabled=$(as_root rabbitmq-plugins -q list -e -m 2>/dev/null || true)
for plugin in rabbitmq_management rabbitmq_prometheus; do
  if ! grep -qx "$plugin" <<<"$enabled"; then
    log "enabling $plugin"
    as_root rabbitmq-plugins -q enable "$plugin" >/dev/null
  fi
done
wait_for 60 "RabbitMQ" bash -c 'exec 3<>/dev/tcp/127.0.0.1/5672' \
  || fail "RabbitMQ runs but does not listen on 127.0.0.1:5672"
log "PostgreSQL and RabbitMQ are ready"
