#!/usr/bin/env bash
# Durable creates against a single etcd node's puts, alternated round by round on this machine
# (its speed drifts, so only the ratio within a round means anything): one server on its sled
# log and one etcd 3.4 member (Debian etcd-server), both on loopback and both fsyncing every
# write; the same client shape for both (`ipamctl bench create` and `ipamctl bench etcd-put`,
# fresh keys with 256-byte values). Prints each round's ratio, then the median of them all.
#
#   benches/etcd.sh [SERVER] [ROUNDS] [DURATION] [CONCURRENCY]   (defaults: target/release/ipam-bindings 5 5s 64)
#
# Server worker threads: IPAM_WORKER_THREADS (default 2); the client: ipamctl's default.
# Uses target/release/ipamctl (or $IPAMCTL).
set -euo pipefail
cd "$(dirname "$0")/.."
server=${1:-target/release/ipam-bindings}
rounds=${2:-5}
duration=${3:-5s}
concurrency=${4:-64}
ipamctl=${IPAMCTL:-target/release/ipamctl}
for tool in etcd etcdctl; do
    command -v "$tool" >/dev/null || { echo "$tool is needed: apt-get install etcd-server etcd-client" >&2; exit 1; }
done
work=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"' EXIT

RUST_LOG=warn IPAM_WORKER_THREADS=${IPAM_WORKER_THREADS:-2} "$server" --data-dir "$work/data" \
    --listen 127.0.0.1:30790 --provisioning-delay 100h >"$work/server.log" 2>&1 &
pids+=($!)
etcd --name e1 --data-dir "$work/etcd" --listen-client-urls http://127.0.0.1:2391 \
    --advertise-client-urls http://127.0.0.1:2391 --listen-peer-urls http://127.0.0.1:2392 \
    --log-level error >"$work/etcd.log" 2>&1 &
pids+=($!)
until "$ipamctl" --server http://127.0.0.1:30790 --account "$(printf "%032d" 0)" services >/dev/null 2>&1; do sleep 0.05; done
until ETCDCTL_API=3 etcdctl --endpoints 127.0.0.1:2391 put /ready 1 >/dev/null 2>&1; do sleep 0.2; done

bench() {
    "$ipamctl" --server "$1" --output json bench --duration "$duration" --warmup 1s \
        --concurrency "$concurrency" --connections 4 "$2" 2>"$work/bench.err" | grep '"calls_per_s"' ||
        { cat "$work/bench.err" >&2; return 1; }
}
field() { python3 -c 'import json, sys; r = json.loads(sys.stdin.read()); print(eval(sys.argv[1]))' "$1"; }
echo "creates vs etcd puts, $concurrency callers, $duration per run, $(nproc) cores"
ratios=()
for round in $(seq 1 "$rounds"); do
    creates=$(bench http://127.0.0.1:30790 create)
    puts=$(bench 127.0.0.1:2391 etcd-put)
    c=$(field 'round(r["calls_per_s"])' <<<"$creates")
    p=$(field 'round(r["calls_per_s"])' <<<"$puts")
    ratios+=("$(echo "$c / $p" | bc -l)")
    printf "round %d: creates %d/s p99 %s ms, etcd puts %d/s p99 %s ms, ratio %.2f\n" "$round" \
        "$c" "$(field 'r["latency_ms"]["p99"]' <<<"$creates")" \
        "$p" "$(field 'r["latency_ms"]["p99"]' <<<"$puts")" "${ratios[-1]}"
done
# The goal's figure: one round carries the machine's window as much as the server.
python3 -c 'import statistics, sys; print("median ratio %.2f over %d rounds" % (statistics.median(map(float, sys.argv[1:])), len(sys.argv) - 1))' "${ratios[@]}"
