#!/usr/bin/env bash
# Batched lookups with a C load client that leaves the server the CPU (h2load, Debian's
# nghttp2-client), beside `ipamctl bench lookup-batch[-compact]` on the same server, so the two
# clients' results can be compared in one run. The fixture is ipamctl's (1,000 prefixes, 4
# bindings each); the batch is 1,000 addresses drawn as ipamctl draws them (80% IPv4 inside a
# prefix, 10% IPv6 inside one, 10% inside none). h2load sends the same request body on every
# call, so each call asks for the same 1,000 addresses (ipamctl moves through 100,000).
#
#   benches/h2load-batch.sh [SERVER] [ROUNDS] [SECONDS] [VIEW] [SERVER-B]
#
# VIEW is compact (default) or full. SERVER defaults to target/release/ipam-bindings, run with
# RUST_LOG=warn and --worker-threads ${WORKERS:-1}; h2load -c 2 -m 2 -t 1 (4 calls in flight
# over 2 connections, as ipamctl's --concurrency 4 --connections 2).
#
# With SERVER-B, two builds side by side with h2load alone: both servers are up at once (each
# loaded alike, idle while the other is measured), every round measures A and B, the order
# swapped from round to round, with each server's CPU per call; the end prints the medians of
# B/A per round (addresses/s and server CPU per call). A side can be ahead by itself (side A by
# 7-11% in two runs with the builds swapped between them: docs/benchmarks.md, unary lookups
# served outside tonic's generated server), so run twice, swapping the builds.
set -euo pipefail
cd "$(dirname "$0")/.."
server=${1:-target/release/ipam-bindings}
rounds=${2:-3}
seconds=${3:-4}
view=${4:-compact}
ipamctl=${IPAMCTL:-target/release/ipamctl}
port=${H2LOAD_PORT:-30797}
command -v h2load >/dev/null || { echo "h2load is needed: apt-get install nghttp2-client" >&2; exit 1; }
case $view in
    compact) view_number=2 scenario=lookup-batch-compact ;;
    full) view_number=1 scenario=lookup-batch ;;
    *) echo "VIEW is compact or full" >&2; exit 2 ;;
esac
dir=$(mktemp -d)
servers=("$server") pids=()
[ -n "${5:-}" ] && servers+=("$5")
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
# ctl SIDE ARGS...: ipamctl against the server of that side.
ctl() { local side=$1; shift; IPAMCTL_WORKER_THREADS=1 "$ipamctl" --server "http://127.0.0.1:$((port + side))" "$@"; }
# Starts server $1 as side $2 on port+side and loads it.
start() {
    RUST_LOG=warn "$1" --data-dir "$dir/data$2" --listen "127.0.0.1:$((port + $2))" --worker-threads "${WORKERS:-1}" >/dev/null 2>&1 &
    pids+=($!)
    until ctl "$2" --account "$(printf "%032d" 0)" services >/dev/null 2>&1; do sleep 0.05; done
    ctl "$2" bench load --prefixes 1000 --bindings-per-prefix 4 --concurrency 16 >/dev/null 2>&1
}
for side in "${!servers[@]}"; do start "${servers[$side]}" "$side"; done
python3 - "$dir/batch.bin" "$view_number" <<'PY'
import ipaddress, struct, sys
path, view = sys.argv[1], int(sys.argv[2])
mask = (1 << 64) - 1
state = 0x853c49e6748fea9b
def next_random():
    global state
    state ^= (state << 13) & mask
    state ^= state >> 7
    state ^= (state << 17) & mask
    return state
# ipamctl's lookup fixture for 1,000 prefixes: 750 IPv4 /24s of 20.0.0.0/6, 250 IPv6 /48s.
n_v6, n_v4 = 250, 750
def v4_prefix(index): return 0x14000000 + (index % 262144) * 256
def v6_prefix(index): return (0x20010db80000 << 80) | ((index % 65536) << 80)
body = b""
for _ in range(1000):
    kind = next_random() % 10
    if kind == 0:
        address = str(ipaddress.IPv4Address(0xc6120000 | (next_random() & 0xffff)))
    elif kind == 1:
        prefix = v6_prefix(next_random() % n_v6)
        address = str(ipaddress.IPv6Address(prefix | (next_random() & 0xffff)))
    else:
        prefix = v4_prefix(next_random() % n_v4)
        address = str(ipaddress.IPv4Address(prefix | (next_random() & 0xff)))
    encoded = address.encode()
    body += b"\x0a" + bytes([len(encoded)]) + encoded   # addresses = 1
body += b"\x18" + bytes([view])                         # view = 3
open(path, "wb").write(b"\x00" + struct.pack(">I", len(body)) + body)
PY
hz=$(getconf CLK_TCK)
# utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat).
server_cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# h2load_run SIDE: the calls per second of one h2load run, and the server's CPU per call in
# microseconds. With H2LOAD_VERBOSE set, h2load's whole report goes to stderr too.
h2load_run() {
    local before rate
    before=$(server_cpu_ticks "${pids[$1]}")
    rate=$(h2load -c 2 -m 2 -t 1 -D "$seconds" -d "$dir/batch.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$((port + $1))/addressing.v1.Routing/LookupAddresses" 2>/dev/null |
        if [ -n "${H2LOAD_VERBOSE:-}" ]; then tee /dev/stderr; else cat; fi |
        sed -n 's/.*finished in .*, \([0-9.]*\) req\/s.*/\1/p')
    echo "$rate $(echo "($(server_cpu_ticks "${pids[$1]}") - $before) / $hz * 1000000 / ($rate * $seconds)" | bc -l)"
}
ipamctl_run() {
    ctl 0 bench "$scenario" --batch 1000 --duration "${seconds}s" --concurrency 4 --connections 2 2>&1 |
        sed -n 's/.* \([0-9]*\) ops\/s.*/\1/p' | tail -1
}
names=(A B)
for round in $(seq "$rounds"); do
    if [ ${#servers[@]} = 1 ]; then
        read -r calls cpu < <(h2load_run 0)
        addresses=$(echo "$calls * 1000" | bc -l)
        ipamctl_addresses=$(ipamctl_run)
        printf "round %d (%s): h2load %.2f M addresses/s (server CPU %.0f us per call), ipamctl %.2f M addresses/s, h2load/ipamctl %.2f\n" \
            "$round" "$view" "$(echo "$addresses / 1000000" | bc -l)" "$cpu" "$(echo "$ipamctl_addresses / 1000000" | bc -l)" \
            "$(echo "$addresses / $ipamctl_addresses" | bc -l)"
        continue
    fi
    order=(0 1)
    if [ $((round % 2)) = 0 ]; then order=(1 0); fi
    for side in "${order[@]}"; do
        read -r calls cpu < <(h2load_run "$side")
        printf "round %d %s (%s): h2load %.2f M addresses/s, server CPU %.1f us per call\n" \
            "$round" "${names[$side]}" "$view" "$(echo "$calls / 1000" | bc -l)" "$cpu"
    done
done | tee "$dir/rounds"
if [ ${#servers[@]} = 2 ]; then python3 - "$dir/rounds"; fi <<'PY'
import re, statistics, sys
rounds = {}
for line in open(sys.argv[1]):
    n, side, rate, cpu = re.match(r"round (\d+) (\w) .*h2load ([\d.]+) M addresses/s, server CPU ([\d.]+) us", line).groups()
    rounds.setdefault(n, {})[side] = (float(rate), float(cpu))
ratios = [(r["B"][0] / r["A"][0], r["B"][1] / r["A"][1]) for r in rounds.values()]
print(f"B/A addresses/s per round, median {statistics.median(a for a, _ in ratios):.3f}; "
      f"server CPU per call B/A, median {statistics.median(c for _, c in ratios):.3f}")
PY
