#!/usr/bin/env bash
# Unary lookups against the transport's ceiling, with a C load client that leaves the server
# the CPU (h2load, Debian's nghttp2-client): grpc.health.v1 Check and Routing/LookupAddress
# alternated round by round on one server (200 prefixes, a prefix-wide and one nested binding
# each), and the lookup/health ratio of each round.
#
#   benches/h2load.sh [SERVER] [ROUNDS] [SECONDS]
#
# SERVER defaults to target/release/ipam-bindings (run with its default log level unless
# RUST_LOG is set), with --worker-threads ${WORKERS:-1}; h2load -c 4 -m 16 -t 1. With TLS=1
# the server serves TLS (a self-signed certificate made with openssl for 127.0.0.1) and h2load
# connects over it.
set -euo pipefail
cd "$(dirname "$0")/.."
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
"$server" --data-dir "$dir/data" --listen "127.0.0.1:$port" --worker-threads "${WORKERS:-1}" "${tls_flags[@]}" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$dir"' EXIT
ctl() { "$ipamctl" --server "$scheme://127.0.0.1:$port" "$@"; }
until ctl --account "$(printf "%032d" 0)" services >/dev/null 2>&1; do sleep 0.05; done
ctl bench load --prefixes 200 --bindings-per-prefix 2 --concurrency 16 >/dev/null 2>&1
# An address inside a nested binding, and the two requests as gRPC frames.
address=$(ctl --output json routes export | python3 -c '
import sys, json
nested = [r["first_address"] for r in map(json.loads, sys.stdin) if "cidrs" in r and r["cidrs"][0].endswith("/25")]
print(nested[0])')
python3 - "$dir" "$address" <<'PY'
import sys, struct
directory, address = sys.argv[1], sys.argv[2].encode()
message = b"\x0a" + bytes([len(address)]) + address   # LookupAddressRequest.address = 1
open(f"{directory}/lookup.bin", "wb").write(b"\x00" + struct.pack(">I", len(message)) + message)
open(f"{directory}/health.bin", "wb").write(b"\x00" + struct.pack(">I", 0))
PY
run() {
    h2load -c 4 -m 16 -t 1 -D "$seconds" -d "$dir/$1.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
        "$scheme://127.0.0.1:$port/$2" 2>/dev/null | sed -n 's/.*finished in .*, \([0-9.]*\) req\/s.*/\1/p'
}
for round in $(seq "$rounds"); do
    health=$(run health grpc.health.v1.Health/Check)
    lookup=$(run lookup addressing.v1.Routing/LookupAddress)
    printf "round %d: health %.0f/s, lookup %.0f/s, lookup/health %.2f\n" "$round" "$health" "$lookup" "$(echo "$lookup / $health" | bc -l)"
done
