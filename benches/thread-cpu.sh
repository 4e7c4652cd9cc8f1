#!/usr/bin/env bash
# Where a durable create's server CPU goes, by thread: the writer (`ipam-writer`), the tokio
# workers, sled's I/O pool and the rest, each in microseconds per create. Alternates two
# server builds round by round (a fresh server and data dir each time), since this machine's
# speed drifts (in the order ABBA, so that neither build always runs second); prints each
# run, then the median B/A ratio of each column.
#
#   benches/thread-cpu.sh ROUNDS SERVER-A SERVER-B
#
# Each run: `ipamctl bench create` at 64 callers over 4 connections (its client at one tokio
# worker), the server at two; over a 3 s window inside it, each thread's CPU time from
# /proc/PID/task/TID/schedstat and the commands committed from `ipam_log_group_commands_sum`
# on /metrics. Uses target/release/ipamctl (or $IPAMCTL).
set -euo pipefail
rounds=$1
servers=("$2" "$3")
ipamctl=${IPAMCTL:-target/release/ipamctl}
port=${AB_PORT:-30700}
metrics_port=$((port + 1))
endpoint=http://127.0.0.1:$port
work=$(mktemp -d)
trap 'kill "${pid:-}" 2>/dev/null || true; rm -rf "$work"' EXIT

committed() { curl -s "127.0.0.1:$metrics_port/metrics" | awk '/^ipam_log_group_commands_sum/ { print $2 }'; }
# Each thread's name and its CPU time in nanoseconds (the first field of schedstat); a thread
# that ends while it is read is left out.
threads() {
    for task in /proc/"$1"/task/*; do
        { comm=$(tr ' ' _ <"$task/comm") && ns=$(cut -d' ' -f1 "$task/schedstat") &&
            echo "$(basename "$task") $comm $ns"; } 2>/dev/null || true
    done
}

for round in $(seq 1 "$rounds"); do
    # A then B in odd rounds, B then A in even ones: with A always first, two runs with the
    # builds swapped both found the second side ~3% dearer, whichever build it was.
    for side in $( ((round % 2)) && echo 0 1 || echo 1 0); do
        name=$([ $side = 0 ] && echo A || echo B)
        RUST_LOG=warn "${servers[$side]}" --data-dir "$work/data" --listen "127.0.0.1:$port" \
            --metrics-listen "127.0.0.1:$metrics_port" --provisioning-delay 100h --worker-threads 2 >/dev/null 2>&1 &
        pid=$!
        until "$ipamctl" --server "$endpoint" --account "$(printf "%032d" 0)" services >/dev/null 2>&1; do sleep 0.05; done
        IPAMCTL_WORKER_THREADS=1 "$ipamctl" --server "$endpoint" bench create --duration 6s --warmup 1s \
            --concurrency 64 --connections 4 >"$work/bench.txt" 2>&1 &
        bench=$!
        sleep 2
        before=$(committed)
        threads "$pid" >"$work/before.txt"
        sleep 3
        threads "$pid" >"$work/after.txt"
        after=$(committed)
        wait "$bench"
        python3 - "$round" "$name" "$before" "$after" "$work" <<'PY' | tee -a "$work/runs.txt"
import collections, sys
round_, name, before, after, work = sys.argv[1:]
creates = float(after) - float(before)
start = {line.split()[0]: int(line.split()[2]) for line in open(f"{work}/before.txt")}
by_group = collections.Counter()
for line in open(f"{work}/after.txt"):
    tid, comm, ns = line.split()
    if tid in start:
        group = "writer" if comm == "ipam-writer" else "workers" if comm == "tokio-rt-worker" \
            else "sled-io" if comm.startswith("sled-io") else "other"
        by_group[group] += int(ns) - start[tid]
per_create = {group: by_group[group] / 1e3 / creates for group in ("writer", "workers", "sled-io", "other")}
total = sum(per_create.values())
print(f"round {round_} {name}: {creates / 3:.0f} creates/s; us per create: " +
      " ".join(f"{group} {value:.2f}" for group, value in per_create.items()) + f" all {total:.2f}")
PY
        kill -TERM "$pid"
        wait "$pid" || true
        rm -rf "$work/data"
    done
done
python3 - "$work/runs.txt" <<'PY'
import re, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    round_, name = re.match(r"round (\d+) (\w):", line).groups()
    runs[(round_, name)] = {key: float(value) for key, value in re.findall(r"([a-z-]+) ([\d.]+)", line.split(":", 1)[1])}
rounds = sorted({round_ for round_, _ in runs}, key=int)
for column in ("writer", "workers", "sled-io", "all"):
    ratios = [runs[(r, "B")][column] / runs[(r, "A")][column] for r in rounds if runs[(r, "A")][column] > 0]
    print(f"{column} B/A per create: " + ", ".join(f"{ratio:.2f}" for ratio in ratios) +
          f" (median {statistics.median(ratios):.3f})")
PY
