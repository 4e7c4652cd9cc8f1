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
# Below the ephemeral ports (32768 and up): no outgoing connection holds it when a server starts.
port=${AB_PORT:-30700}
endpoint=http://127.0.0.1:$port
hz=$(getconf CLK_TCK)
# utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat).
server_cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
for round in $(seq 1 "$rounds"); do
    for side in 0 1; do
        dir=$(mktemp -d)
        # shellcheck disable=SC2086 # the server line is split into words on purpose
        env RUST_LOG=warn IPAM_DATA_DIR="$dir" IPAM_LISTEN=127.0.0.1:$port IPAM_PROVISIONING_DELAY=100h \
            ${servers[$side]} >/dev/null 2>&1 &
        pid=$!
        # A failed bench must not leave the server running.
        trap 'kill "$pid" 2>/dev/null || true' EXIT
        until "$ipamctl" --server "$endpoint" --account "$(printf "%032d" 0)" services >/dev/null 2>&1; do sleep 0.05; done
        cpu_before=$(server_cpu_ticks "$pid")
        result=$("$ipamctl" --server "$endpoint" bench "$@" 2>&1 | tail -3 | tr '\n' ' ')
        cpu=$(($(server_cpu_ticks "$pid") - cpu_before))
        calls=$(grep -o "([0-9]* calls" <<<"$result" | tr -dc 0-9 || true)
        # Server CPU time (user + system, warmup included) per measured call: steadier than
        # calls/s when client and server share the cores, and it counts threads that calls/s
        # does not show (the writer, sled's I/O pool).
        per_call=$(awk -v t="$cpu" -v hz="$hz" -v n="${calls:-0}" 'BEGIN { if (n > 0) printf "%.1f", t / hz * 1e6 / n; else print "?" }')
        echo "round $round $([ $side = 0 ] && echo A || echo B): $result server CPU ${per_call} us/call"
        kill -TERM "$pid"
        wait "$pid" || true
        rm -rf "$dir"
    done
done
