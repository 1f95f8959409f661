#!/usr/bin/env bash
# `make browser-check`: the status page in a real headless browser (e2e
# status_page::the_status_page_shows_the_database_live_and_an_objects_history): Debian's
# chromium driven through chromedriver over WebDriver. Installs chromium and
# chromium-driver when missing (scripts/install-quietly.sh). `make test` leaves this test
# out (it needs the browser); CI runs this target.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] || scripts/install-quietly.sh "${missing[@]}"
cargo test --locked -p e2e --test it -- --ignored --exact status_page::the_status_page_shows_the_database_live_and_an_objects_history
