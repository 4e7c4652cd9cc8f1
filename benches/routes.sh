#!/usr/bin/env bash
# The routing-table benchmark: fills a fresh data dir with about 1,000,000 bindings (4,000
# prefixes of 250: the prefix-wide binding, a /25 (/49), a /26 (/50) and host routes), then
# times, on the same data and one client:
#   - ExportRoutes of the whole table (`ipamctl routes export --output json`), with its routes/s
#     and the server's resident memory before and after (peak);
#   - the first WatchRoutes (which builds the route history from the log) and the memory it keeps;
#   - ListServiceBindings of every prefix (`ipamctl bindings list --output json` per prefix),
#     minus the cost of starting ipamctl (timed with `ipamctl services`).
#
#   benches/routes.sh [SERVER]
#
# SERVER defaults to target/release/ipam-bindings; uses target/release/ipamctl (or $IPAMCTL).
set -euo pipefail
cd "$(dirname "$0")/.."
server=${1:-target/release/ipam-bindings}
ipamctl=${IPAMCTL:-target/release/ipamctl}
port=${ROUTES_PORT:-30797}
dir=$(mktemp -d)
trap 'kill $pid 2>/dev/null || true; rm -rf "$dir"' EXIT

RUST_LOG=warn "$server" --data-dir "$dir" --listen "127.0.0.1:$port" --provisioning-delay 100h --worker-threads 2 >/dev/null 2>&1 &
pid=$!
ctl() { "$ipamctl" --server "http://127.0.0.1:$port" "$@"; }
until ctl --account "$(printf "%032d" 0)" services >/dev/null 2>&1; do sleep 0.05; done
ctl bench load --prefixes 4000 --bindings-per-prefix 250 --concurrency 128 2>&1 | tail -1
rss() { grep -E "^$1:" "/proc/$pid/status" | awk '{print $2 / 1024 " MiB"}'; }
echo "server RSS after the load: $(rss VmRSS) (peak $(rss VmHWM))"

start=$(date +%s.%N)
routes=$(ctl --output json routes export | wc -l)
end=$(date +%s.%N)
routes=$((routes - 1))
seconds=$(echo "$end - $start" | bc -l)
printf "export: %d routes in %.2f s = %.0f routes/s\n" "$routes" "$seconds" "$(echo "$routes / $seconds" | bc -l)"
echo "server RSS after the export: $(rss VmRSS) (peak $(rss VmHWM))"

# The first WatchRoutes builds the route history from the log: time until the stream is open.
revision=$(ctl --output json routes export | tail -1 | python3 -c 'import sys,json; print(json.load(sys.stdin)["revision"])')
python3 - "$ipamctl" "$port" "$revision" <<'PY'
import subprocess, sys, time
ipamctl, port, revision = sys.argv[1:]
started = time.monotonic()
watch = subprocess.Popen([ipamctl, "--server", f"http://127.0.0.1:{port}", "routes", "watch", "--after-revision", revision],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
line = watch.stderr.readline()
print(f"first WatchRoutes open after {time.monotonic() - started:.2f} s (the history built from the log): {line.strip()}")
watch.kill()
PY
echo "server RSS with the route history: $(rss VmRSS) (peak $(rss VmHWM))"

account=$(ctl --output json routes export | python3 -c 'import sys,json; print(json.loads(sys.stdin.readline())["account_id"]); sys.stdin.read()')
prefixes=$(ctl --account "$account" --output json prefixes list | python3 -c 'import sys,json; [print(json.loads(l)["id"]) for l in sys.stdin]')
n_prefixes=$(echo "$prefixes" | wc -l)
start=$(date +%s.%N)
for _ in $(seq 100); do ctl --account "$account" services >/dev/null; done
end=$(date +%s.%N)
spawn=$(echo "($end - $start) / 100" | bc -l)
start=$(date +%s.%N)
listed=$(for prefix in $prefixes; do ctl --account "$account" --output json bindings list --prefix "$prefix"; done | wc -l)
end=$(date +%s.%N)
list_seconds=$(echo "$end - $start - $n_prefixes * $spawn" | bc -l)
printf "list: %d bindings of %d prefixes in %.2f s (ipamctl start-up of %.1f ms each removed) = %.0f bindings/s\n" \
    "$listed" "$n_prefixes" "$list_seconds" "$(echo "$spawn * 1000" | bc -l)" "$(echo "$listed / $list_seconds" | bc -l)"
