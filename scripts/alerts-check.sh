#!/usr/bin/env bash
# `make alerts-check`: `promtool check rules` and `promtool test rules` on
# deploy/prometheus/alerts.yml. Installs Debian's prometheus package (for promtool) when
# promtool is missing, without starting its service (scripts/install-quietly.sh): it
# would listen on 9090, the producer's port.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v promtool >/dev/null 2>&1 || scripts/install-quietly.sh prometheus
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts.test.yml
