#!/usr/bin/env bash
# `make test`: the whole suite (unit tests, and integration tests against the real
# PostgreSQL and RabbitMQ), then one closing line with the totals over every test binary.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p target
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee target/test.log
status=${PIPESTATUS[0]}
summary=$(awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' target/test.log)
echo "$summary" | tee target/test-summary.txt
exit "$status"
