#!/usr/bin/env bash
# Runs one integration test ROUNDS times in a row under two CPU hogs (`yes`), the way races
# that depend on scheduling show up, and counts the failures; failing outputs are kept.
#
#   benches/loop.sh [FILTER] [ROUNDS]
#
# FILTER defaults to the disk-full recovery test (storage::), ROUNDS to 500 (about 2.5 minutes
# on 2 cores with the debug build).
set -euo pipefail
cd "$(dirname "$0")/.."
filter=${1:-storage::}
rounds=${2:-500}
binary=$(cargo test --test integration --no-run --message-format=json 2>/dev/null \
    | python3 -c 'import sys,json
for line in sys.stdin:
    m = json.loads(line)
    if m.get("executable") and m.get("target", {}).get("name") == "integration": print(m["executable"])')
yes >/dev/null & hog1=$!
yes >/dev/null & hog2=$!
trap 'kill $hog1 $hog2 2>/dev/null || true' EXIT
failures=0
kept=$(mktemp -d)
start=$(date +%s)
for round in $(seq "$rounds"); do
    if ! "$binary" "$filter" --test-threads 1 >"$kept/round-$round.out" 2>&1; then
        failures=$((failures + 1))
    else
        rm "$kept/round-$round.out"
    fi
done
echo "$filter: $failures failures in $rounds rounds under two CPU hogs ($(( $(date +%s) - start )) s); failing outputs in $kept"
