#!/usr/bin/env bash
# A/B benchmark for a machine whose speed drifts: alternates two server command lines round by
# round (a fresh server and data dir each time) and runs the same `ipamctl bench` arguments
# against each, so drift hits both sides alike. Compare A and B within a round, never with
# numbers from another run.
#
#   benches/ab.sh ROUNDS 'SERVER A' 'SERVER B' BENCH-ARGS...
#
# e.g. (an older build copied to /tmp/ipam-old against the current one):
#   benches/ab.sh 3 '/tmp/ipam-old --worker-threads 1' 'target/release/ipam-bindings --worker-threads 1' \
#       lookup-batch --batch 1000 --duration 4s --concurrency 4 --connections 2
#
# A SERVER line may start with VAR=value words (passed as environment). The data dir, listen
# address and a provisioning delay of 100h come from IPAM_* variables, so the flags stay free.
# Uses target/release/ipamctl (or $IPAMCTL).
set -euo pipefail
rounds=$1
servers=("$2" "$3")
shift 3
ipamctl=${IPAMCTL:-target/release/ipamctl}
port=${AB_PORT:-50700}
endpoint=http://127.0.0.1:$port
for round in $(seq 1 "$rounds"); do
    for side in 0 1; do
        dir=$(mktemp -d)
        # shellcheck disable=SC2086 # the server line is split into words on purpose
        env RUST_LOG=warn IPAM_DATA_DIR="$dir" IPAM_LISTEN=127.0.0.1:$port IPAM_PROVISIONING_DELAY=100h \
            ${servers[$side]} >/dev/null 2>&1 &
        pid=$!
        until "$ipamctl" --server "$endpoint" --account "$(printf "%032d" 0)" services >/dev/null 2>&1; do sleep 0.05; done
        result=$("$ipamctl" --server "$endpoint" bench "$@" 2>&1 | tail -3 | tr '\n' ' ')
        echo "round $round $([ $side = 0 ] && echo A || echo B): $result"
        kill -TERM "$pid"
        wait "$pid" || true
        rm -rf "$dir"
    done
done
