#!/usr/bin/env bash
# A durable create's instructions on the server, counted by valgrind's callgrind: unlike time,
# the count hardly moves with this machine's speed, so two builds compare within a percent
# (the writer's share still depends on the group sizes a run happens to form). Each build: a
# server under callgrind, 5 s of `ipamctl bench create` (64 callers, 4 connections) to warm
# it, the counters zeroed, DURATION more, then the total over the creates made. Prints the
# instructions per create of each build, then, for every function whose name contains one
# of FUNCTIONS (a comma-separated list), its inclusive instructions per create in each build.
#
#   benches/instructions.sh SERVER-A [SERVER-B] [DURATION] [FUNCTIONS]   (defaults: -, 20, none)
#
# Needs valgrind (apt-get install valgrind). Uses target/release/ipamctl (or $IPAMCTL).
set -euo pipefail
cd "$(dirname "$0")/.."
servers=("$1")
[ -n "${2:-}" ] && [ "$2" != - ] && servers+=("$2")
duration=${3:-20}
functions=${4:-}
ipamctl=${IPAMCTL:-target/release/ipamctl}
port=${PORT:-30798}
command -v callgrind_control >/dev/null || { echo "valgrind is needed: apt-get install valgrind" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT
bench() {
    "$ipamctl" --server "http://127.0.0.1:$port" --output json bench --duration "$1" --warmup 0s \
        --concurrency 64 --connections 4 create
}
for side in "${!servers[@]}"; do
    out="$work/$side"
    mkdir -p "$out"
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.%p" "${servers[$side]}" \
        --data-dir "$out/data" --listen "127.0.0.1:$port" --worker-threads 2 --provisioning-delay 100h \
        >"$out/server.log" 2>&1 &
    pid=$!
    until "$ipamctl" --server "http://127.0.0.1:$port" --account "$(printf "%032d" 0)" services >/dev/null 2>&1; do
        sleep 0.5
    done
    bench 5s >/dev/null
    callgrind_control --zero "$pid" >/dev/null 2>&1
    bench "${duration}s" >"$out/bench.json"
    callgrind_control --dump "$pid" >/dev/null 2>&1
    kill -TERM "$pid"
    wait "$pid" || true
    callgrind_annotate --inclusive=yes --threshold=100 "$out"/callgrind.*.1 >"$out/inclusive.txt" 2>/dev/null
done
python3 - "$work" "${#servers[@]}" "$functions" "${servers[@]}" <<'PY'
import json, re, sys
work, count, functions, *servers = sys.argv[1:]
sides = []
for side in range(int(count)):
    creates = json.load(open(f"{work}/{side}/bench.json"))["calls"]
    text = open(f"{work}/{side}/inclusive.txt").read()
    total = int(re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS", text).group(1).replace(",", ""))
    by_function = {}
    for line in text.splitlines():
        match = re.match(r"\s*([\d,]+) \([\s\d.]+%\)\s+\S+?:(.*?)( \[.*\])?$", line)
        if match:
            name, value = match.group(2).strip(), int(match.group(1).replace(",", ""))
            by_function[name] = max(by_function.get(name, 0), value)
    sides.append((creates, by_function))
    print(f"{servers[side]}: {creates} creates, {total / creates:.0f} instructions per create")
wanted = [f for f in functions.split(",") if f]
names = sorted({n for _, b in sides for n in b if any(f in n for f in wanted)},
               key=lambda n: -sides[0][1].get(n, 0) / sides[0][0])
for name in names:
    print(" ".join(f"{b.get(name, 0) / c:9.0f}" for c, b in sides), " ", name[:140])
PY
