#!/usr/bin/env bash
# The restart benchmark, end to end: fills a fresh data dir with 1,100,000 events
# (100,000 prefixes, 200,000 live bindings, each prefix with four create/delete pairs of
# history), stops the server cleanly (which writes a snapshot), reports the data dir's size and
# bytes per event, then times starts to health SERVING with the snapshot and without it.
#
#   benches/restart.sh [SERVER] [DATA-DIR]
#
# SERVER defaults to target/release/ipam-bindings, DATA-DIR to a new temp dir (kept, so that
# builds can be compared on it with benches/start.sh). Uses target/release/ipamctl (or
# $IPAMCTL) and grpcurl. Takes about two minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
server=${1:-target/release/ipam-bindings}
dir=${2:-$(mktemp -d)}
ipamctl=${IPAMCTL:-target/release/ipamctl}
port=${RESTART_PORT:-30798}

RUST_LOG=warn "$server" --data-dir "$dir" --listen "127.0.0.1:$port" --provisioning-delay 100h --worker-threads 2 >/dev/null 2>&1 &
pid=$!
until "$ipamctl" --server "http://127.0.0.1:$port" --account "$(printf "%032d" 0)" services >/dev/null 2>&1; do sleep 0.05; done
"$ipamctl" --server "http://127.0.0.1:$port" bench load --prefixes 100000 --bindings-per-prefix 2 \
    --churn-per-prefix 4 --concurrency 128 2>&1 | tail -1
kill -TERM "$pid"
wait "$pid" || true

verified=$("$server" verify --data-dir "$dir" 2>&1)
echo "$verified"
head=$(echo "$verified" | sed -n 's/.*head revision \([0-9]*\).*/\1/p')
log_bytes=$(stat -c %s "$dir/db")
echo "data dir $(du -sh "$dir" | cut -f1): sled file $log_bytes bytes, $((log_bytes / head)) bytes per event; snapshot $(stat -c %s "$dir/state.snapshot") bytes"

for round in 1 2 3; do
    echo -n "with the snapshot, round $round: "
    benches/start.sh "$server" "$dir" "$port" | sed 's/.*: //'
done
for round in 1 2; do
    rm "$dir/state.snapshot"
    echo -n "without a snapshot (full replay), round $round: "
    benches/start.sh "$server" "$dir" "$port" | sed 's/.*: //'
done
echo "data dir kept: $dir"
