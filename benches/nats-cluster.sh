# shellcheck shell=bash
# Sourced by the replicas benchmarks: a three-node NATS cluster on loopback (client ports
# 4301-4303, monitoring 8301-8303, routes 6301-6303), each node fsyncing every write
# (`sync_interval: always`) and running Go code on $go_procs threads (default 1).
# Expects: $work (a directory), $nats (nats-server), and a `pids` array (every process started,
# for the caller's cleanup). Sets nats_pids[1..3].

declare -a nats_pids

# Starts (or restarts) node $1.
nats_node() {
    local i=$1
    cat >"$work/n$i.conf" <<EOF
server_name: n$i
listen: 127.0.0.1:$((4300 + i))
http: 127.0.0.1:$((8300 + i))
jetstream { store_dir: "$work/nats$i", sync_interval: always }
cluster { name: bench, listen: 127.0.0.1:$((6300 + i)), routes: [nats://127.0.0.1:6301, nats://127.0.0.1:6302, nats://127.0.0.1:6303] }
EOF
    GOMAXPROCS=${go_procs:-1} "$nats" -c "$work/n$i.conf" >"$work/n$i.log" 2>&1 &
    nats_pids[i]=$!
    pids+=($!)
}

# Starts the three nodes and waits for a JetStream meta leader.
nats_cluster() {
    local i
    for i in 1 2 3; do nats_node "$i"; done
    until curl -sf "http://127.0.0.1:8301/jsz" | grep -q '"meta_leader"\|"leader"'; do sleep 0.2; done
}

# A replica's --nats-url: node $1 first, then all three.
nats_urls() { echo "nats://127.0.0.1:$((4300 + $1)),nats://127.0.0.1:4301,nats://127.0.0.1:4302,nats://127.0.0.1:4303"; }
