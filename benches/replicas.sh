#!/usr/bin/env bash
# Durable creates on replicas, side by side in one run (this machine's speed drifts, so the
# three are alternated round by round and compared within a round):
#   replicas  three replicas (--log-backend jetstream) on a three-node NATS cluster, the
#             callers spread over the three;
#   replica1  the same three replicas, every caller on the first one (no races between them);
#   single    one server on its own sled log;
#   etcd      a three-node etcd cluster, 256-byte puts of fresh keys, callers spread over the
#             three members (the anchor for a durable, replicated write);
#   etcd-gomax  a second such cluster at Go's default GOMAXPROCS (one per core), so that etcd
#             is measured at its better setting in every round.
# Every cluster runs on loopback on this machine, each node fsyncing every write (JetStream
# with sync_interval: always; etcd always does). Then the failover pause: creates at a fixed
# rate (open loop: a stall shows as latency) while the stream's leader node is SIGKILLed, and
# again while it is stopped gracefully (SIGTERM).
#
#   benches/replicas.sh [ROUNDS] [DURATION] [CONCURRENCY]      (defaults: 3 5s 64)
#
# NO_FAILOVER=1 skips the failover part. REPLICA_LOG sets the replicas' RUST_LOG (default warn);
# KEEP_LOGS=1 keeps every process's log.
# With BASELINE=path/to/another/ipam-bindings, three more replicas of that build run on their
# own stream (IPAM_BASELINE) of the same NATS cluster, and each round adds a `baseline` row:
# callers spread over those three (two builds side by side in one run; they take turns going
# first), and a `baseline1` row (every caller on the first of them, as `replica1`, so that both
# builds' logs grow alike). Every row also prints the CPU time (user + system) of the servers it
# ran on per call: the replicas' and the NATS nodes', the single server's, the etcd members'.
#
# GO_PROCS (default 1) is the GOMAXPROCS of every NATS node and of the `etcd` cluster's members:
# one thread running Go code per process, as the replicas get one tokio worker each, since
# seven servers and the client share the cores (at Go's default, two per process here, the
# NATS nodes made 3.6 context switches per create instead of 2.5, and spent 88-115 us of CPU
# per create instead of 70-93: docs/benchmarks.md, Replicas).
#
# Needs target/release/{ipam-bindings,ipamctl} (cargo build --release), nats-server (NATS_SERVER
# or .ci/install-nats-server) and etcd (Debian etcd-server). Server worker threads: IPAM_WORKER_THREADS
# (default 1 each: 3 replicas + 3 NATS nodes + the client share 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
duration=${2:-5s}
concurrency=${3:-64}
for tool in etcd etcdctl curl; do
    command -v "$tool" >/dev/null || { echo "$tool is needed: apt-get install etcd-server etcd-client curl" >&2; exit 1; }
done
nats=${NATS_SERVER:-$(bash .ci/install-nats-server)}
server=target/release/ipam-bindings
ipamctl=target/release/ipamctl
export IPAM_WORKER_THREADS=${IPAM_WORKER_THREADS:-1}
go_procs=${GO_PROCS:-1}
work=$(mktemp -d)
pids=()
cleanup() {
    disown -a
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    if [ -n "${KEEP_LOGS:-}" ]; then echo "logs kept in $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

# --- a three-node NATS cluster (client ports 4301-4303, monitoring 8301-8303)
# shellcheck source=benches/nats-cluster.sh
source benches/nats-cluster.sh
nats_cluster

# --- three replicas (gRPC 30801-30803) and one single node (30800): below the ephemeral ports
# (32768 and up), so that no outgoing connection holds one when a server starts
declare -a replica_pids baseline_pids
for i in 1 2 3; do
    RUST_LOG=${REPLICA_LOG:-warn} "$server" --data-dir "$work/replica$i" --listen 127.0.0.1:$((30800 + i)) \
        --log-backend jetstream --nats-url "$(nats_urls $i)" --provisioning-delay 100h \
        --metrics-listen 127.0.0.1:$((9800 + i)) >"$work/replica$i.log" 2>&1 &
    pids+=($!)
    replica_pids+=($!)
done
if [ -n "${BASELINE:-}" ]; then
    for i in 1 2 3; do
        RUST_LOG=warn "$BASELINE" --data-dir "$work/baseline$i" --listen 127.0.0.1:$((30810 + i)) \
            --log-backend jetstream --nats-url "$(nats_urls $i)" --nats-stream IPAM_BASELINE --provisioning-delay 100h \
            --metrics-listen 127.0.0.1:$((9810 + i)) >"$work/baseline$i.log" 2>&1 &
        pids+=($!)
        baseline_pids+=($!)
    done
fi
RUST_LOG=warn "$server" --data-dir "$work/single" --listen 127.0.0.1:30800 --provisioning-delay 100h \
    >"$work/single.log" 2>&1 &
pids+=($!)
single_pid=$!

# --- two three-node etcd clusters: `etcd` at GO_PROCS (clients 2401-2403, peers 2411-2413),
# `etcd-gomax` at Go's default (clients 2421-2423, peers 2431-2433)
declare -a etcd_pids etcd_gomax_pids
# etcd_cluster BASE TOKEN PIDS: three members on ports from BASE, their pids appended to the
# array named PIDS.
etcd_cluster() {
    local base=$1 token=$2 cluster="" i
    local -n started=$3
    for i in 1 2 3; do cluster+="e$i=http://127.0.0.1:$((base + 10 + i)),"; done
    for i in 1 2 3; do
        etcd --name "e$i" --data-dir "$work/$token$i" \
            --listen-client-urls "http://127.0.0.1:$((base + i))" --advertise-client-urls "http://127.0.0.1:$((base + i))" \
            --listen-peer-urls "http://127.0.0.1:$((base + 10 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
            --initial-cluster "${cluster%,}" --initial-cluster-state new --initial-cluster-token "$token" \
            --log-level error >"$work/$token$i.log" 2>&1 &
        pids+=($!)
        started+=($!)
    done
}
GOMAXPROCS=$go_procs etcd_cluster 2400 etcd etcd_pids
etcd_cluster 2420 etcdgomax etcd_gomax_pids

account=$(printf "%032d" 0)
ports="30800 30801 30802 30803"
[ -z "${BASELINE:-}" ] || ports+=" 30811 30812 30813"
for port in $ports; do
    until "$ipamctl" --server "127.0.0.1:$port" --account "$account" prefixes list >/dev/null 2>&1; do sleep 0.1; done
done
for port in 2401 2421; do
    until ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:$port put /ready 1 >/dev/null 2>&1; do sleep 0.2; done
done

replicas=127.0.0.1:30801,127.0.0.1:30802,127.0.0.1:30803
baseline=127.0.0.1:30811,127.0.0.1:30812,127.0.0.1:30813
members=127.0.0.1:2401,127.0.0.1:2402,127.0.0.1:2403
gomax_members=127.0.0.1:2421,127.0.0.1:2422,127.0.0.1:2423
bench() { "$ipamctl" --output json --worker-threads 1 bench --duration "$duration" --warmup 1s \
    --concurrency "$concurrency" --connections 6 "$@" 2>"$work/bench.err" | grep '"calls_per_s"' ||
    { cat "$work/bench.err" >&2; return 1; }; }
cat >"$work/summary.py" <<'EOF'
import json, sys
r = json.loads(sys.stdin.read())
l = r["latency_ms"]
line = (f"{sys.argv[1]:9s} {r['calls_per_s']:8.0f}/s  p50 {l['p50']:6.2f}  p99 {l['p99']:7.2f}"
        f"  p99.9 {l['p99.9']:7.2f}  max {l['max']:8.2f} ms  errors {r['errors']}")
if len(sys.argv) > 2 and r["calls"]:
    # CPU time (user + system, the 1 s warm-up included) per measured call, of each group of
    # processes named after the clock rate: NAME TICKS ...
    hz, groups = int(sys.argv[2]), sys.argv[3:]
    per_call = lambda ticks: int(ticks) / hz * 1e6 / r["calls"]
    line += "\n          CPU per call: " + ", ".join(
        f"{name} {per_call(ticks):.0f} us" for name, ticks in zip(groups[::2], groups[1::2]))
print(line)
EOF
summary() { python3 "$work/summary.py" "$@"; }
hz=$(getconf CLK_TCK)
# Appends that lost a race so far, summed over three replicas (the port their metrics ports
# count from).
conflicts() {
    for i in 1 2 3; do curl -sf "http://127.0.0.1:$(($1 + i))/metrics" | awk '/^ipam_replica_write_conflicts_total/ { print $2 }'; done |
        awk '{ s += $1 } END { print s }'
}
# utime + stime of processes, in clock ticks (fields 14 and 15 of /proc/PID/stat), summed.
cpu_ticks() { for pid in "$@"; do awk '{ print $14 + $15 }' "/proc/$pid/stat"; done | awk '{ s += $1 } END { print s }'; }
# Creates spread over three replicas (their gRPC addresses, the port their metrics ports
# count from, their pids), with the replicas' and the NATS nodes' CPU per create, then how
# many of their appends lost a race so far.
bench_replicas() {
    local label=$1 servers=$2 metrics_base=$3 result replicas_before nats_before
    shift 3
    replicas_before=$(cpu_ticks "$@")
    nats_before=$(cpu_ticks "${nats_pids[@]}")
    result=$(bench --server "$servers" create)
    summary "$label" "$hz" replicas $(($(cpu_ticks "$@") - replicas_before)) "NATS nodes" $(($(cpu_ticks "${nats_pids[@]}") - nats_before)) <<<"$result"
    echo "          (appends that lost a race, all $label so far: $(conflicts "$metrics_base"))"
}
# Puts spread over an etcd cluster's members (their client addresses, their pids), with the
# members' CPU per put.
bench_etcd() {
    local label=$1 members=$2 before result
    shift 2
    before=$(cpu_ticks "$@")
    result=$(bench --server "$members" etcd-put)
    summary "$label" "$hz" "etcd members" $(($(cpu_ticks "$@") - before)) <<<"$result"
}
echo "durable creates, $concurrency callers, $duration per run, $(nproc) cores, server worker threads $IPAM_WORKER_THREADS, GOMAXPROCS $go_procs (etcd-gomax: Go's default)"
for round in $(seq 1 "$rounds"); do
    echo "round $round ($(date +%T))"
    # With a baseline, the two builds take turns going first (what ran just before a run,
    # such as etcd's, can still be busy when it starts).
    turn=$((round % 2))
    if [ -n "${BASELINE:-}" ] && [ $turn = 0 ]; then bench_replicas baseline "$baseline" 9810 "${baseline_pids[@]}"; fi
    bench_replicas replicas "$replicas" 9800 "${replica_pids[@]}"
    if [ -n "${BASELINE:-}" ] && [ $turn = 1 ]; then bench_replicas baseline "$baseline" 9810 "${baseline_pids[@]}"; fi
    bench_replicas replica1 127.0.0.1:30801 9800 "${replica_pids[@]}"
    # The baseline's replicas take as many creates as these (their logs and snapshots grow alike).
    if [ -n "${BASELINE:-}" ]; then bench_replicas baseline1 127.0.0.1:30811 9810 "${baseline_pids[@]}"; fi
    single_before=$(cpu_ticks "$single_pid")
    result=$(bench --server 127.0.0.1:30800 create)
    summary single "$hz" server $(($(cpu_ticks "$single_pid") - single_before)) <<<"$result"
    bench_etcd etcd "$members" "${etcd_pids[@]}"
    bench_etcd etcd-gomax "$gomax_members" "${etcd_gomax_pids[@]}"
done

# --- failover: creates at 200/s (open loop) while the stream's leader node goes away
stream_leader() {
    curl -sf "http://127.0.0.1:830$1/jsz?streams=true" |
        python3 -c 'import json,sys
d=json.load(sys.stdin)
for a in d.get("account_details", []):
    for s in a.get("stream_detail", []):
        if s["name"] == "IPAM_EVENTS": print(s["cluster"]["leader"][1:])'
}
failover() {
    local signal=$1 node
    node=$(stream_leader 1)
    [ -n "$node" ] || node=$(stream_leader 2)
    (sleep 3; kill "-$signal" "${nats_pids[$node]}") &
    local killer=$!
    "$ipamctl" --output json --worker-threads 1 bench --server "$replicas" --rate 200 --duration 10s \
        --warmup 1s --concurrency 64 --connections 6 create 2>/dev/null | grep '"calls_per_s"' | summary "$signal n$node"
    wait "$killer"
    sleep 1
    nats_node "$node"
    sleep 5
}
[ -z "${NO_FAILOVER:-}" ] || exit 0
echo "failover: creates at 200/s over the replicas, the stream leader's node killed after 3 s (max = the write pause)"
failover KILL
failover TERM
