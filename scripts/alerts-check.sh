#!/usr/bin/env bash
# `make alerts-check`: `promtool check rules` and `promtool test rules` on
# deploy/prometheus/alerts.yml. Installs Debian's prometheus package (for promtool,
# without its recommended exporters) when promtool is missing; on a systemd machine the
# prometheus service the package starts is stopped and disabled again at once (it would
# listen on 9090, the producer's port).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v promtool >/dev/null 2>&1; then
  [ "$(id -u)" -eq 0 ] || { echo "alerts-check: promtool is missing; install the prometheus package (as root)"; exit 1; }
  echo "[alerts-check] installing promtool (package prometheus, no recommends)"
  apt-get update -qq || echo "[alerts-check] apt-get update failed; installing from the package lists at hand"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
  fi
fi
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml
