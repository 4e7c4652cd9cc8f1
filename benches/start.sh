#!/usr/bin/env bash
# Start-up time: starts SERVER on DATA-DIR, polls grpc.health.v1 Check every 20 ms until
# SERVING, prints the seconds from launch and the server's RSS, then stops it with SIGTERM
# (a clean stop, which writes a snapshot). Alternate two builds on copies of one data dir to
# compare them (this machine's speed drifts).
#
#   benches/start.sh SERVER DATA-DIR [PORT]
#
# Needs grpcurl on PATH.
set -euo pipefail
server=$1
dir=$2
port=${3:-30799}
start=$(date +%s.%N)
RUST_LOG=warn "$server" --data-dir "$dir" --listen "127.0.0.1:$port" --provisioning-delay 100h --worker-threads 1 >/dev/null 2>&1 &
pid=$!
until grpcurl -plaintext -max-time 1 "127.0.0.1:$port" grpc.health.v1.Health/Check 2>/dev/null | grep -q '"SERVING"'; do
    kill -0 "$pid" 2>/dev/null || { echo "$server exited before SERVING" >&2; exit 1; }
    sleep 0.02
done
end=$(date +%s.%N)
echo "$server $dir: SERVING after $(echo "$end - $start" | bc) s, RSS $(ps -o rss= -p "$pid") KB"
kill -TERM "$pid"
wait "$pid" || true
