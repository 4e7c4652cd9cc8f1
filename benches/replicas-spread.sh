#!/usr/bin/env bash
# Creates spread over three replicas, and nothing else, run after run on one cluster: per run
# the throughput, p99, the NATS nodes' CPU per create and each replica's (with whether it held
# the lease, and the commands and groups it forwarded). As the state grows, the runs that hold a
# background checkpoint (named at the end of the line, with its size) show what they cost,
# without the other rows of benches/replicas.sh in between.
#
#   benches/replicas-spread.sh [RUNS]        (default 10; 5 s of creates each, 64 callers)
#
# SERVER (default target/release/ipam-bindings) is the replicas' build, EXTRA more flags for
# them (e.g. `--snapshot-every 100000000`: no background snapshot). With BURST=MB, every odd run
# writes three files of MB MiB (zeros) with an fsync each, 3 s into the run: the disk traffic of
# three replicas' snapshots, without their CPU.
#
# Needs target/release/ipamctl, nats-server (NATS_SERVER or .ci/install-nats-server) and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}
server=${SERVER:-target/release/ipam-bindings}
ipamctl=target/release/ipamctl
nats=${NATS_SERVER:-$(bash .ci/install-nats-server | tail -1)}
export IPAM_WORKER_THREADS=${IPAM_WORKER_THREADS:-1}
work=$(mktemp -d)
pids=()
trap 'disown -a; for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done; rm -rf "$work"' EXIT

# shellcheck source=benches/nats-cluster.sh
source benches/nats-cluster.sh
nats_cluster
declare -a replica_pids
for i in 1 2 3; do
    # shellcheck disable=SC2086 # EXTRA is split into flags on purpose
    RUST_LOG=warn,ipam_bindings::engine::checkpoint=info "$server" --data-dir "$work/replica$i" --listen 127.0.0.1:$((30800 + i)) \
        --log-backend jetstream --nats-url "$(nats_urls "$i")" --provisioning-delay 100h \
        --metrics-listen 127.0.0.1:$((9800 + i)) ${EXTRA:-} >"$work/replica$i.log" 2>&1 &
    pids+=($!)
    replica_pids+=($!)
done
account=$(printf "%032d" 0)
for port in 30801 30802 30803; do
    until "$ipamctl" --server "127.0.0.1:$port" --account "$account" prefixes list >/dev/null 2>&1; do sleep 0.1; done
done

# utime + stime of processes, in clock ticks, summed.
ticks() { for pid in "$@"; do awk '{ print $14 + $15 }' "/proc/$pid/stat"; done | awk '{ s += $1 } END { print s }'; }
# A counter or gauge of replica $1's metrics.
metric() { curl -sf "http://127.0.0.1:$((9800 + $1))/metrics" | awk -v name="$2" '$1 == name { print int($2) }'; }
us_per_call() { echo $(($1 * 1000000 / $(getconf CLK_TCK) / $2)); }
for run in $(seq 1 "$runs"); do
    declare -A cpu_before forwarded_before forwards_before
    for i in 1 2 3; do
        cpu_before[$i]=$(ticks "${replica_pids[$((i - 1))]}")
        forwarded_before[$i]=$(metric "$i" ipam_replica_forwarded_commands_total)
        forwards_before[$i]=$(metric "$i" ipam_replica_forwards_total)
    done
    nats_before=$(ticks "${nats_pids[@]}")
    log_lines=$(cat "$work"/replica1.log | wc -l)
    burst=
    if [ -n "${BURST:-}" ] && [ $((run % 2)) = 1 ]; then
        (sleep 3; for k in 1 2 3; do dd if=/dev/zero of="$work/burst$k" bs=1M count="$BURST" conv=fsync 2>/dev/null & done; wait; rm -f "$work"/burst*) &
        burst=$!
    fi
    result=$("$ipamctl" --output json --worker-threads 1 bench --duration 5s --warmup 1s --concurrency 64 --connections 6 \
        --server 127.0.0.1:30801,127.0.0.1:30802,127.0.0.1:30803 create 2>"$work/bench.err" | grep '"calls_per_s"') ||
        { cat "$work/bench.err" >&2; exit 1; }
    [ -z "$burst" ] || wait "$burst"
    calls=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["calls"])' "$result")
    line=$(python3 -c 'import json, sys; r = json.loads(sys.argv[1]); print("%.0f/s p99 %.1f ms" % (r["calls_per_s"], r["latency_ms"]["p99"]))' "$result")
    line+=", NATS $(us_per_call $(($(ticks "${nats_pids[@]}") - nats_before)) "$calls") us/create"
    [ -z "${BURST:-}" ] || [ $((run % 2)) = 0 ] || line+=" (burst)"
    for i in 1 2 3; do
        cpu=$(us_per_call $(($(ticks "${replica_pids[$((i - 1))]}") - cpu_before[$i])) "$calls")
        forwarded=$(($(metric "$i" ipam_replica_forwarded_commands_total) - forwarded_before[$i]))
        forwards=$(($(metric "$i" ipam_replica_forwards_total) - forwards_before[$i]))
        line+=" | r$i $cpu us, lease $(metric "$i" ipam_replica_lease_held), forwarded $forwarded in $forwards"
    done
    # The checkpoints replica 1 wrote during the run (the others write theirs at the same revisions).
    checkpoints=$(tail -n +$((log_lines + 1)) "$work/replica1.log" |
        sed -nE 's/.*(snapshot|snapshot delta) written.* bytes=([0-9]+).*/\1 \2/p' |
        awk '{ printf " + %s %.1f MB", ($2 == "delta" ? "delta" : "snapshot"), $NF / 1e6 }')
    echo "run $run: $line$checkpoints"
done
