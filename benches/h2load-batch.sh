#!/usr/bin/env bash
# Batched lookups with a C load client that leaves the server the CPU (h2load, Debian's
# nghttp2-client), beside `ipamctl bench lookup-batch[-compact]` on the same server, so the two
# clients' results can be compared in one run. The fixture is ipamctl's (1,000 prefixes, 4
# bindings each); the batch is 1,000 addresses drawn as ipamctl draws them (80% IPv4 inside a
# prefix, 10% IPv6 inside one, 10% inside none). h2load sends the same request body on every
# call, so each call asks for the same 1,000 addresses (ipamctl moves through 100,000).
#
#   benches/h2load-batch.sh [SERVER] [ROUNDS] [SECONDS] [VIEW]
#
# VIEW is compact (default) or full. SERVER defaults to target/release/ipam-bindings, run with
# RUST_LOG=warn and --worker-threads ${WORKERS:-1}; h2load -c 2 -m 2 -t 1 (4 calls in flight
# over 2 connections, as ipamctl's --concurrency 4 --connections 2).
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
RUST_LOG=warn "$server" --data-dir "$dir/data" --listen "127.0.0.1:$port" --worker-threads "${WORKERS:-1}" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
ctl() { IPAMCTL_WORKER_THREADS=1 "$ipamctl" --server "http://127.0.0.1:$port" "$@"; }
until ctl --account "$(printf "%032d" 0)" services >/dev/null 2>&1; do sleep 0.05; done
ctl bench load --prefixes 1000 --bindings-per-prefix 4 --concurrency 16 >/dev/null 2>&1
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
# Calls/s; with H2LOAD_VERBOSE set, h2load's whole report goes to stderr too.
h2load_run() {
    h2load -c 2 -m 2 -t 1 -D "$seconds" -d "$dir/batch.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
        "http://127.0.0.1:$port/addressing.v1.Routing/LookupAddresses" 2>/dev/null |
        if [ -n "${H2LOAD_VERBOSE:-}" ]; then tee /dev/stderr; else cat; fi |
        sed -n 's/.*finished in .*, \([0-9.]*\) req\/s.*/\1/p'
}
ipamctl_run() {
    ctl bench "$scenario" --batch 1000 --duration "${seconds}s" --concurrency 4 --connections 2 2>&1 |
        sed -n 's/.* \([0-9]*\) ops\/s.*/\1/p' | tail -1
}
for round in $(seq "$rounds"); do
    calls=$(h2load_run)
    addresses=$(echo "$calls * 1000" | bc -l)
    ipamctl_addresses=$(ipamctl_run)
    printf "round %d (%s): h2load %.2f M addresses/s, ipamctl %.2f M addresses/s, h2load/ipamctl %.2f\n" "$round" "$view" \
        "$(echo "$addresses / 1000000" | bc -l)" "$(echo "$ipamctl_addresses / 1000000" | bc -l)" \
        "$(echo "$addresses / $ipamctl_addresses" | bc -l)"
done
