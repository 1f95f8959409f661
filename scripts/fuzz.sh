#!/usr/bin/env bash
# `make fuzz`: runs the cargo-fuzz (libFuzzer) target `callback_body` on the callback body
# parser for FUZZ_SECS seconds (default 60), starting from fuzz/seeds and the corpus of
# earlier runs (fuzz/corpus, not committed). A crash stops it with the input saved under
# fuzz/artifacts/ and a non-zero exit; replay it with
# `cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run callback_body artifacts/callback_body/<file>`.
# FUZZ_SEED=N fixes libFuzzer's random seed: with an empty corpus/ the run then repeats the
# same inputs in the same order (CI uses it, so a landing does not depend on luck; the
# exploring runs are the unseeded ones).
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
SECS=${FUZZ_SECS:-60}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address and others); the machine has
# only the stable toolchain, whose compiler accepts them with RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1
mkdir -p corpus/callback_body
cargo fuzz run callback_body corpus/callback_body seeds/callback_body -- \
  -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
  ${FUZZ_SEED:+-seed="$FUZZ_SEED"}
