#!/usr/bin/env bash
# Watch fan-out, two server builds alternated round by round (a fresh server and data dir each
# time): `ipamctl bench watch` (1,000 watchers, 50 creates/s for 10 s, then the stalled-watcher
# check) against each, and the server's CPU while it fans out, which the client cannot see.
# The server's utime + stime is sampled once a second; the ten samples after the first (the
# watchers connecting) cover the 50 creates/s, before the stalled-watcher check runs creates
# flat out. Compare A and B within a round, never with numbers from another run.
#
#   bash benches/fanout.sh ROUNDS 'SERVER A' 'SERVER B'
#
# e.g. bash benches/fanout.sh 3 /tmp/ipam-old target/release/ipam-bindings
# Uses target/release/ipamctl (or $IPAMCTL) for both. SCENARIO=watch-routes watches the
# account's routing table (WatchRoutes) instead of its binding events.
set -euo pipefail
rounds=$1
servers=("$2" "$3")
ipamctl=${IPAMCTL:-target/release/ipamctl}
port=${AB_PORT:-30711}
endpoint=http://127.0.0.1:$port
hz=$(getconf CLK_TCK)
watchers=1000
rate=50
scenario=${SCENARIO:-watch}
for round in $(seq 1 "$rounds"); do
    for side in 0 1; do
        dir=$(mktemp -d)
        samples=$(mktemp)
        # shellcheck disable=SC2086 # the server line is split into words on purpose
        env RUST_LOG=warn IPAM_DATA_DIR="$dir" IPAM_LISTEN=127.0.0.1:$port IPAM_PROVISIONING_DELAY=100h \
            ${servers[$side]} >/dev/null 2>&1 &
        pid=$!
        trap 'kill "$pid" 2>/dev/null || true' EXIT
        until "$ipamctl" --server "$endpoint" --account "$(printf "%032d" 0)" services >/dev/null 2>&1; do sleep 0.05; done
        (
            previous=$(awk '{ print $14 + $15 }' "/proc/$pid/stat")
            while sleep 1; do
                now=$(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null) || break
                echo $((now - previous))
                previous=$now
            done
        ) >"$samples" &
        sampler=$!
        result=$("$ipamctl" --server "$endpoint" bench "$scenario" --watchers $watchers --rate $rate --duration 10s \
            --connections 8 --concurrency 64 --rounds 1 2>&1 | grep -E "deliveries|lag|ratio" | tr -s ' \n' ' ')
        kill "$sampler" 2>/dev/null || true
        wait "$sampler" 2>/dev/null || true
        # CPU per delivery over the fan-out's seconds: ticks/s over deliveries/s.
        per_delivery=$(awk -v hz="$hz" -v d=$((watchers * rate)) 'NR >= 2 && NR <= 11 { t += $1; n++ }
            END { if (n == 10) printf "%.2f", t / n / hz * 1e6 / d; else print "?" }' "$samples")
        echo "round $round $([ $side = 0 ] && echo A || echo B): $result server CPU ${per_delivery} us/delivery"
        kill -TERM "$pid"
        wait "$pid" || true
        rm -rf "$dir" "$samples"
    done
done
