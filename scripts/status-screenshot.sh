#!/usr/bin/env bash
# `make status-screenshot`: a screenshot of the status page of a running `make run`, with
# an object's history searched, into docs/status-page.png (STATUS_PAGE_URL,
# STATUS_OBJECT_ID and SCREENSHOT_OUT change them). Drives headless chromium through
# chromedriver with plain WebDriver requests (curl); installs both when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
url=${STATUS_PAGE_URL:-http://127.0.0.1:9090/status}
object=${STATUS_OBJECT_ID:-42}
out=${SCREENSHOT_OUT:-docs/status-page.png}
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] || scripts/install-quietly.sh "${missing[@]}"
curl -fsS -o /dev/null "$url" || { echo "nothing answers at $url: start make run first"; exit 1; }

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
chromedriver --port="$port" >/dev/null 2>&1 &
driver_pid=$!
trap 'kill $driver_pid 2>/dev/null || true' EXIT
wd="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -fsS -o /dev/null "$wd/status" 2>/dev/null && break; sleep 0.1; done
call() { curl -fsS -X "$1" -H 'content-type: application/json' "$wd$2" ${3:+-d "$3"}; }
value() { python3 -c 'import json,sys; print(json.load(sys.stdin)["value"]'"$1"')'; }
session=$(call POST /session '{"capabilities":{"alwaysMatch":{"goog:chromeOptions":{"args":["--headless=new","--no-sandbox","--disable-gpu","--window-size=1280,1250"]}}}}' | value '["sessionId"]')
s="/session/$session"
trap 'call DELETE "$s" >/dev/null 2>&1 || true; kill $driver_pid 2>/dev/null || true' EXIT
call POST "$s/url" "{\"url\":\"$url\"}" >/dev/null
element() { call POST "$s/element" "{\"using\":\"css selector\",\"value\":\"$1\"}" | value '.popitem()[1]'; }
input=$(element '#object-id')
call POST "$s/element/$input/value" "{\"text\":\"$object\"}" >/dev/null
call POST "$s/element/$(element '#search button')/click" '{}' >/dev/null
sleep "${SCREENSHOT_WAIT_SECS:-6}"   # a few live events and a refresh
call GET "$s/screenshot" | value '' | base64 -d >"$out"
echo "status page of $url (object $object searched) -> $out"
