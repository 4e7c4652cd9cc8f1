#!/usr/bin/env bash
# Coverage-guided fuzzing (libFuzzer through cargo-fuzz, nightly toolchain): runs every target
# (or the ones named) for a bounded time, starting from the seed corpus in fuzz/corpus/ and
# growing a working corpus beside it (fuzz/corpus-working/, not committed). A crash leaves its
# input in fuzz/artifacts/<target>/: copy it to fuzz/regressions/<target>/ once fixed, and
# `cargo test` replays it for good (tests/integration/fuzz_corpus.rs).
#
#   fuzz/run.sh [SECONDS-PER-TARGET] [TARGET...]        (default: 120, every target)
#
# Prints libFuzzer's last status line per target: executions, coverage (cov: edges, ft:
# features), corpus size, and whether it found anything. Results: docs/fuzzing.md.
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-120}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then targets=(record snapshot stream_message page_token fields lookup_batch lookup_request lookup_answer ipamctl_args); fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for target in "${targets[@]}"; do
    mkdir -p "corpus-working/$target"
    log=$(mktemp)
    status=ok
    cargo +nightly fuzz run "$target" "corpus-working/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=512 -print_final_stats=1 >"$log" 2>&1 || status=FOUND
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    last=$(grep -E '^#[0-9]+' "$log" | tail -1)
    echo "$target: $status, $runs executions in ${seconds}s; last: $last"
    if [ "$status" = FOUND ]; then grep -E 'panicked|ERROR|artifact' "$log" | head -5; fi
    rm -f "$log"
done
