#!/usr/bin/env bash
# Writes while the whole table is exported, two builds side by side: loads about 1,000,000
# bindings once (4,000 prefixes of 250, as benches/routes.sh), then, alternating the two
# servers round by round on copies of that data dir, runs creates at a fixed rate (open loop:
# a stall shows as latency) for 8 s and starts `ipamctl routes export` of the whole table 3 s
# in. Prints each round's create latency (p50/p99/max) and the export's time.
#
#   benches/export-writes.sh SERVER-A SERVER-B [ROUNDS]        (ROUNDS defaults to 3)
#
# Uses target/release/ipamctl (or $IPAMCTL) and grpcurl. Loading takes a few minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
server_a=$1
server_b=$2
rounds=${3:-3}
ipamctl=${IPAMCTL:-target/release/ipamctl}
port=${EXPORT_PORT:-30796}
work=$(mktemp -d)
pid=
trap 'kill $pid 2>/dev/null || true; rm -rf "$work"' EXIT
ctl() { "$ipamctl" --server "http://127.0.0.1:$port" "$@"; }
start() {
    RUST_LOG=warn "$1" --data-dir "$2" --listen "127.0.0.1:$port" --provisioning-delay 100h --worker-threads 2 >/dev/null 2>&1 &
    pid=$!
    until grpcurl -plaintext -max-time 1 "127.0.0.1:$port" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; do
        sleep 0.05
    done
}
stop() {
    kill -TERM "$pid"
    wait "$pid" || true
}

start "$server_a" "$work/loaded"
ctl bench load --prefixes 4000 --bindings-per-prefix 250 --concurrency 128 2>&1 | tail -1
stop

for round in $(seq "$rounds"); do
    for side in a b; do
        server=$server_a
        [ "$side" = b ] && server=$server_b
        rm -rf "$work/run"
        cp -r "$work/loaded" "$work/run"
        start "$server" "$work/run"
        ctl --output json bench create --rate 200 --duration 8s --concurrency 16 >"$work/create.json" 2>&1 &
        creates=$!
        sleep 4 # 1 s of warmup, then 3 s of creates alone
        export_start=$(date +%s.%N)
        routes=$(ctl --output json routes export | wc -l)
        export_end=$(date +%s.%N)
        wait "$creates" || { cat "$work/create.json"; exit 1; }
        python3 - "$round" "$side" "$server" "$((routes - 1))" "$(echo "$export_end - $export_start" | bc -l)" "$work/create.json" <<'PY'
import json, sys
round_, side, server, routes, seconds, path = sys.argv[1:]
result = json.loads(open(path).read().strip().splitlines()[-1])
latency = {k: round(v, 1) for k, v in result["latency_ms"].items()}
print(f"round {round_} {side} ({server}): export {routes} routes in {float(seconds):.2f} s; "
      f"creates {round(result['calls_per_s'])}/s p50 {latency.get('p50')} p99 {latency.get('p99')} max {latency.get('max')} ms"
      f" errors {result.get('errors', {})}")
PY
        stop
    done
done
