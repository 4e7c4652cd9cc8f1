#!/usr/bin/env bash
# Unary lookups against the transport's ceiling, with a C load client that leaves the server
# the CPU (h2load, Debian's nghttp2-client): grpc.health.v1 Check and Routing/LookupAddress
# alternated round by round on one server (200 prefixes, a prefix-wide and one nested binding
# each), and the lookup/health ratio of each round.
#
#   benches/h2load.sh [SERVER] [ROUNDS] [SECONDS] [SERVER-B]
#   FRESH=N benches/h2load.sh [SERVER] [ROUNDS] [SECONDS]
#
# SERVER defaults to target/release/ipam-bindings (run with its default log level unless
# RUST_LOG is set), with --worker-threads ${WORKERS:-1}; h2load -c 4 -m 16 -t 1. With TLS=1
# the server serves TLS (a self-signed certificate made with openssl for 127.0.0.1) and h2load
# connects over it.
#
# With SERVER-B, two builds side by side: both servers are up at once (each loaded alike, idle
# while the other is measured), every round measures A and B, the order swapped from round to
# round, and the end prints each side's median ratio and the median of B/A lookups per round.
# With ABBA=1 as well, four servers (A, B, B, A: started in that order, on consecutive ports):
# one server process's lookups can cost ~10% more or less than another's running the same build
# (docs/benchmarks.md, Method notes), so each build runs in two; every round measures all four,
# starting one place later each round, and B/A compares the two builds' mean rates per round.
#
# With FRESH=N (one server), N fresh servers one after the other, ROUNDS rounds each, then each
# server's median lookup/health and the median over all rounds: a figure for a build rather
# than for one server process (the goal's check).
#
# With WRITES=N, `ipamctl bench create --rate N` (one caller) runs beside each h2load run, so
# the revision every reply carries changes N times a second while h2load's connections live
# for SECONDS: how replies cost on long-lived connections of a server that is written to.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${FRESH:-}" ]; then
    [ -z "${4:-}" ] || { echo "FRESH=N measures one build: give no SERVER-B" >&2; exit 2; }
    for n in $(seq "$FRESH"); do FRESH='' benches/h2load.sh "$@" | sed "s/^/server $n, /"; done | tee /dev/stderr | python3 -c '
import re, statistics, sys
servers = {}
for line in sys.stdin:
    n, ratio = re.match(r"server (\d+), round \d+: .*lookup/health ([\d.]+);", line).groups()
    servers.setdefault(n, []).append(float(ratio))
print("per server median lookup/health:", ", ".join(f"{statistics.median(r):.3f}" for r in servers.values()))
print(f"median over all {sum(map(len, servers.values()))} rounds: {statistics.median(x for r in servers.values() for x in r):.3f}")'
    exit
fi
server=${1:-target/release/ipam-bindings}
rounds=${2:-5}
seconds=${3:-4}
ipamctl=${IPAMCTL:-target/release/ipamctl}
port=${H2LOAD_PORT:-30796}
command -v h2load >/dev/null || { echo "h2load is needed: apt-get install nghttp2-client" >&2; exit 1; }
dir=$(mktemp -d)
tls_flags=() scheme=http
if [ -n "${TLS:-}" ]; then
    # A CA and a server certificate it signs (webpki refuses a CA as the server's own).
    key=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
    openssl req -x509 "${key[@]}" -days 1 -subj /CN=bench-ca -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
    openssl req "${key[@]}" -subj /CN=127.0.0.1 -keyout "$dir/key.pem" -out "$dir/server.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n' >"$dir/server.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 1 \
        -extfile "$dir/server.ext" -out "$dir/cert.pem" 2>/dev/null
    tls_flags=(--tls-cert "$dir/cert.pem" --tls-key "$dir/key.pem") scheme=https
    export IPAM_TLS_CA=$dir/ca.pem
fi
servers=("$server") pids=() names=(A B)
[ -n "${4:-}" ] && servers+=("$4")
if [ -n "${4:-}" ] && [ -n "${ABBA:-}" ]; then servers=("$server" "$4" "$4" "$server") names=(A1 B1 B2 A2); fi
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"' EXIT
# Starts server $1 as side $2 on port+side, loads it, and writes its two requests as gRPC frames.
start() {
    local side=$2 address
    local url=$scheme://127.0.0.1:$((port + side))
    "$1" --data-dir "$dir/data$side" --listen "127.0.0.1:$((port + side))" --worker-threads "${WORKERS:-1}" "${tls_flags[@]}" >/dev/null 2>&1 &
    pids+=($!)
    until "$ipamctl" --server "$url" --account "$(printf "%032d" 0)" services >/dev/null 2>&1; do sleep 0.05; done
    "$ipamctl" --server "$url" bench load --prefixes 200 --bindings-per-prefix 2 --concurrency 16 >/dev/null 2>&1
    # An address inside a nested binding.
    address=$("$ipamctl" --server "$url" --output json routes export | python3 -c '
import sys, json
nested = [r["first_address"] for r in map(json.loads, sys.stdin) if "cidrs" in r and r["cidrs"][0].endswith("/25")]
print(nested[0])')
    python3 - "$dir" "$address" "$side" <<'PY'
import sys, struct
directory, address, side = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
message = b"\x0a" + bytes([len(address)]) + address   # LookupAddressRequest.address = 1
open(f"{directory}/lookup{side}.bin", "wb").write(b"\x00" + struct.pack(">I", len(message)) + message)
open(f"{directory}/health{side}.bin", "wb").write(b"\x00" + struct.pack(">I", 0))
PY
}
for side in "${!servers[@]}"; do start "${servers[$side]}" "$side"; done
hz=$(getconf CLK_TCK)
# utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat).
server_cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }
# run SIDE KIND PATH: the calls per second of one h2load run, and the server's CPU per call in
# microseconds (time the VM's host took from the server is not counted, unlike in the rate).
run() {
    local before rate
    local writes=''
    if [ -n "${WRITES:-}" ]; then
        "$ipamctl" --server "$scheme://127.0.0.1:$(($1 + port))" bench create --rate "$WRITES" \
            --duration "$((seconds + 5))s" --warmup 0s --concurrency 1 --connections 1 >/dev/null 2>&1 &
        writes=$!
    fi
    before=$(server_cpu_ticks "${pids[$1]}")
    rate=$(h2load -c 4 -m 16 -t 1 -D "$seconds" -d "$dir/$2$1.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
        "$scheme://127.0.0.1:$(($1 + port))/$3" 2>/dev/null | sed -n 's/.*finished in .*, \([0-9.]*\) req\/s.*/\1/p')
    echo "$rate $(echo "($(server_cpu_ticks "${pids[$1]}") - $before) / $hz * 1000000 / ($rate * $seconds)" | bc -l)"
    if [ -n "$writes" ]; then kill "$writes" 2>/dev/null || true; wait "$writes" 2>/dev/null || true; fi
}
for round in $(seq "$rounds"); do
    order=("${!servers[@]}")
    if [ $((round % 2)) = 0 ] && [ ${#servers[@]} = 2 ]; then order=(1 0); fi
    if [ ${#servers[@]} = 4 ]; then
        first=$(((round - 1) % 4)) order=()
        for place in 0 1 2 3; do order+=($(((first + place) % 4))); done
    fi
    for side in "${order[@]}"; do
        read -r health health_us < <(run "$side" health grpc.health.v1.Health/Check)
        read -r lookup lookup_us < <(run "$side" lookup addressing.v1.Routing/LookupAddress)
        label=$([ ${#servers[@]} -gt 1 ] && echo " ${names[$side]}" || true)
        printf "round %d%s: health %.0f/s, lookup %.0f/s, lookup/health %.2f; server CPU per call: health %.2f us, lookup %.2f us\n" \
            "$round" "$label" "$health" "$lookup" "$(echo "$lookup / $health" | bc -l)" "$health_us" "$lookup_us"
    done
done | tee "$dir/rounds"
if [ ${#servers[@]} -gt 1 ]; then python3 - "$dir/rounds"; fi <<'PY'
import re, statistics, sys
rounds = {}
for line in open(sys.argv[1]):
    n, side, *numbers = re.match(r"round (\d+) (\w+): health (\d+)/s, lookup (\d+)/s.*health ([\d.]+) us, lookup ([\d.]+) us", line).groups()
    rounds.setdefault(n, {})[side] = [float(number) for number in numbers]
median = lambda values: statistics.median(list(values))
places = sorted(next(iter(rounds.values())))
for place in places:
    sides = [r[place] for r in rounds.values()]
    print(f"{place}: median lookup/health {median(l / h for h, l, _, _ in sides):.3f}, "
          f"median server CPU per call health/lookup {median(hu / lu for _, _, hu, lu in sides):.3f}")
# Each build's mean over its places, per round (one place each without ABBA).
build = lambda r, b, i: statistics.mean(v[i] for place, v in r.items() if place.startswith(b))
print(f"B/A lookups per round, median {median(build(r, 'B', 1) / build(r, 'A', 1) for r in rounds.values()):.3f}; "
      f"server CPU per lookup B/A, median {median(build(r, 'B', 3) / build(r, 'A', 3) for r in rounds.values()):.3f}")
PY
