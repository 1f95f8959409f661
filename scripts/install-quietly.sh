#!/usr/bin/env bash
# `scripts/install-quietly.sh PACKAGE...`: installs Debian packages (as root, no
# recommends) without starting the services they ship: a policy-rc.d that refuses every
# start is in place while apt-get runs (unless the machine has one of its own), and on a
# systemd machine each service the packages enabled is disabled again. The scenarios
# that need etcd, HAProxy or promtool run their own instances, on their own ports.
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 PACKAGE..."; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "installing $* needs root (apt-get)"; exit 1; }
policy=/usr/sbin/policy-rc.d
placed=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\n# Placed by %s while it installs packages.\nexit 101\n' "$0" >"$policy"
  chmod +x "$policy"
  placed=1
fi
trap 'if [ "$placed" = 1 ]; then rm -f "$policy"; fi' EXIT
echo "[install] $* (from the distribution's packages, without starting their services)"
apt-get update -qq || echo "[install] apt-get update failed; installing from the package lists at hand"
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
if [ -d /run/systemd/system ]; then
  for package in "$@"; do
    for unit in $(dpkg -L "$package" 2>/dev/null | grep -E '^/(usr/)?lib/systemd/system/[^/]+\.service$' | xargs -r -n1 basename); do
      systemctl disable --now "$unit" >/dev/null 2>&1 || true
    done
  done
fi
