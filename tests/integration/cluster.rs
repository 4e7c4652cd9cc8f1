//! Replicas on a real three-node NATS JetStream cluster on loopback (`--log-backend
//! jetstream`): writes on any replica, identical logs, read-your-writes across replicas,
//! races, node and replica kills, NATS outages, unsafe streams.
//!
//! nats-server comes from `NATS_SERVER` or PATH (`.ci/install-nats-server` installs the pinned
//! one). Without it these tests print that they were skipped and pass, unless
//! `IPAM_REQUIRE_NATS=1` (set by `.ci/run`), which makes a missing server a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use ipam_bindings::config::LogBackend;
use ipam_bindings::pb::api;
use ipam_bindings::server::ServerOptions;
use tonic::Code;

use crate::common::*;

/// The nats-server binary, or `None` (the test is skipped, loudly).
fn nats_server() -> Option<PathBuf> {
    let found = std::env::var_os("NATS_SERVER").map(PathBuf::from).or_else(|| {
        std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|dir| dir.join("nats-server"))
                .find(|candidate| candidate.is_file())
        })
    });
    if found.is_none() {
        assert!(
            std::env::var("IPAM_REQUIRE_NATS").is_err(),
            "IPAM_REQUIRE_NATS is set but no nats-server was found (NATS_SERVER or PATH)"
        );
        // Straight to stderr: the test harness captures `eprintln!` of passing tests.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED: no nats-server (set NATS_SERVER or run .ci/install-nats-server); the replica tests did not run"
        );
    }
    found
}

/// Three nats-server processes clustered on loopback, each with JetStream fsyncing every write.
struct NatsCluster {
    binary: PathBuf,
    dir: tempfile::TempDir,
    client_ports: Vec<u16>,
    nodes: Vec<Option<Child>>,
}

impl NatsCluster {
    async fn start(binary: PathBuf) -> NatsCluster {
        let dir = tempfile::tempdir().unwrap();
        let client_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let cluster_ports: Vec<u16> = (0..3).map(|_| free_port()).collect();
        let routes = (cluster_ports.iter())
            .map(|port| format!("nats://127.0.0.1:{port}"))
            .collect::<Vec<_>>()
            .join(", ");
        for node in 0..3 {
            let config = format!(
                "server_name: n{node}\nlisten: 127.0.0.1:{}\njetstream {{ store_dir: \"{}\", sync_interval: always }}\ncluster {{ name: ipam, listen: 127.0.0.1:{}, routes: [{routes}] }}\n",
                client_ports[node],
                dir.path().join(format!("store{node}")).display(),
                cluster_ports[node],
            );
            std::fs::write(dir.path().join(format!("n{node}.conf")), config).unwrap();
        }
        let mut cluster = NatsCluster {
            binary,
            dir,
            client_ports,
            nodes: Vec::new(),
        };
        cluster.nodes = (0..3).map(|node| Some(cluster.spawn(node))).collect();
        cluster.wait_for_meta_leader().await;
        cluster
    }

    fn spawn(&self, node: usize) -> Child {
        Command::new(&self.binary)
            .arg("-c")
            .arg(self.dir.path().join(format!("n{node}.conf")))
            .arg("--log")
            .arg(self.dir.path().join(format!("n{node}.log")))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Every node's URL, `first` first (a replica connects there and fails over to the rest).
    fn urls(&self, first: usize) -> String {
        (0..3)
            .map(|offset| format!("nats://127.0.0.1:{}", self.client_ports[(first + offset) % 3]))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Waits until JetStream answers (a meta leader was elected), instead of sleeping.
    async fn wait_for_meta_leader(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(client) = self.connect().await {
                let jetstream = async_nats::jetstream::new(client);
                if jetstream.query_account().await.is_ok() {
                    return;
                }
            }
            if Instant::now() >= deadline {
                let log = std::fs::read_to_string(self.dir.path().join("n0.log")).unwrap_or_default();
                panic!("no JetStream meta leader in time; node 0's log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn connect(&self) -> Result<async_nats::Client, async_nats::ConnectError> {
        let urls: Vec<async_nats::ServerAddr> = self.urls(0).split(',').map(|url| url.parse().unwrap()).collect();
        async_nats::connect(urls).await
    }

    async fn jetstream(&self) -> async_nats::jetstream::Context {
        async_nats::jetstream::new(self.connect().await.unwrap())
    }

    /// The node that leads the stream `name`.
    async fn stream_leader(&self, name: &str) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(mut stream) = self.jetstream().await.get_stream(name).await
                && let Ok(info) = stream.info().await
                && let Some(leader) = info.cluster.as_ref().and_then(|cluster| cluster.leader.clone())
            {
                return leader.trim_start_matches('n').parse().unwrap();
            }
            assert!(Instant::now() < deadline, "no leader for the stream");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    fn restart(&mut self, node: usize) {
        self.kill(node);
        self.nodes[node] = Some(self.spawn(node));
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for node in 0..self.nodes.len() {
            self.kill(node);
        }
    }
}

fn replica_options(dir: &Path, cluster: &NatsCluster, node: usize) -> ServerOptions {
    let mut options = ServerOptions::new(dir.to_path_buf(), Duration::from_secs(3600));
    options.log_backend = LogBackend::Jetstream;
    options.nats.url = cluster.urls(node);
    options.nats.timeout = Duration::from_secs(1);
    options
}

/// Three replicas, replica i connected to node i first.
struct Replicas {
    servers: Vec<TestServer>,
    dirs: Vec<tempfile::TempDir>,
}

impl Replicas {
    async fn start(cluster: &NatsCluster) -> Replicas {
        Replicas::start_with_delay(cluster, Duration::from_secs(3600)).await
    }

    async fn start_with_delay(cluster: &NatsCluster, provisioning_delay: Duration) -> Replicas {
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let mut servers = Vec::new();
        for (node, dir) in dirs.iter().enumerate() {
            let mut options = replica_options(dir.path(), cluster, node);
            options.provisioning_delay = provisioning_delay;
            servers.push(TestServer::start_with_options(options).await);
        }
        Replicas { servers, dirs }
    }

    /// Stops every replica and exports each one's data directory with the offline tool.
    async fn stop_and_export(mut self) -> Vec<String> {
        let mut exports = Vec::new();
        for (server, dir) in self.servers.iter_mut().zip(&self.dirs) {
            server.stop().await.unwrap();
            wait_until_unlocked(dir.path()).await;
            let exported = Command::new(env!("CARGO_BIN_EXE_ipam-bindings"))
                .arg("--data-dir")
                .arg(dir.path())
                .arg("export")
                .output()
                .unwrap();
            assert!(
                exported.status.success(),
                "{}",
                String::from_utf8_lossy(&exported.stderr)
            );
            exports.push(String::from_utf8(exported.stdout).unwrap());
        }
        exports
    }
}

fn with_min_revision<T>(message: T, revision: u64) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request
        .metadata_mut()
        .insert("x-ipam-min-revision", revision.to_string().parse().unwrap());
    request
}

fn revision_of<T>(response: &tonic::Response<T>) -> u64 {
    response
        .metadata()
        .get("x-ipam-revision")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// What a replica holds for `account_id`, as of at least `revision`: every prefix with its
/// bindings, in list order.
async fn contents(server: &Api, account_id: &str, revision: u64) -> Vec<(api::Prefix, Vec<api::ServiceBinding>)> {
    let listed = server
        .prefixes()
        .list_prefixes(with_min_revision(
            api::ListPrefixesRequest {
                account_id: account_id.into(),
                page_size: 1000,
                ..Default::default()
            },
            revision,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.next_page_token.is_empty());
    let mut contents = Vec::new();
    for prefix in listed.prefixes {
        let bindings = server.list_all_bindings(&prefix, 1000).await;
        contents.push((prefix, bindings));
    }
    contents
}

/// Every binding event a replica's watch replays from revision 0 up to `head`.
async fn binding_events(server: &Api, head: u64) -> Vec<(u64, i32, String, String)> {
    let mut stream = server
        .bindings()
        .watch_service_bindings(api::WatchServiceBindingsRequest {
            after_revision: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut events: Vec<(u64, i32, String, String)> = Vec::new();
    while events.last().is_none_or(|(revision, ..)| *revision < head) {
        let next = tokio::time::timeout(PATIENCE, stream.next()).await;
        let Ok(Some(Ok(event))) = next else { break };
        let binding = event.binding.unwrap_or_default();
        events.push((
            event.revision,
            event.kind,
            binding.id,
            format!("{:?}", binding.provisioning),
        ));
        if event.revision >= head {
            break;
        }
    }
    events
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_write_on_one_replica_is_read_and_watched_on_the_others() {
    let Some(nats) = nats_server() else { return };
    let cluster = NatsCluster::start(nats).await;
    let replicas = Replicas::start(&cluster).await;
    let [a, b, c] = [&replicas.servers[0], &replicas.servers[1], &replicas.servers[2]];
    let owner = account();

    // B watches from the start; every binding change made through A reaches it in order.
    let mut watch_on_b = b
        .bindings()
        .watch_service_bindings(api::WatchServiceBindingsRequest {
            account_id: owner.clone(),
            after_revision: Some(0),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();

    let created = a
        .prefixes()
        .create_prefix(api::CreatePrefixRequest {
            account_id: owner.clone(),
            cidr: "192.0.2.0/24".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let revision = revision_of(&created);
    let prefix = created.into_inner();
    assert_eq!(revision, 1, "revisions start at 1 on a fresh stream");
    for replica in [b, c] {
        let read = replica
            .prefixes()
            .get_prefix(with_min_revision(
                api::GetPrefixRequest {
                    account_id: owner.clone(),
                    prefix_id: prefix.id.clone(),
                },
                revision,
            ))
            .await
            .expect("read-your-writes with x-ipam-min-revision");
        assert!(revision_of(&read) >= revision);
        assert_eq!(read.into_inner(), prefix);
    }

    let mut written = vec![a.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await];
    for host in 1..=20 {
        written.push(a.bind(&prefix, &format!("192.0.2.{host}/32"), CDN).await);
    }
    for expected_revision in 2..=22u64 {
        let event = tokio::time::timeout(PATIENCE, watch_on_b.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(event.revision, expected_revision, "in order, without gaps");
        assert_eq!(event.binding.unwrap().id, written[(expected_revision - 2) as usize].id);
    }

    // A revision up to the stream's head is a valid watch start on every replica; beyond it
    // is OUT_OF_RANGE.
    let head = 22;
    let from_head = c
        .bindings()
        .watch_service_bindings(api::WatchServiceBindingsRequest {
            account_id: owner.clone(),
            after_revision: Some(head),
            ..Default::default()
        })
        .await;
    assert!(from_head.is_ok(), "{from_head:?}");
    let beyond = c
        .bindings()
        .watch_service_bindings(api::WatchServiceBindingsRequest {
            account_id: owner.clone(),
            after_revision: Some(head + 10),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(beyond.code(), Code::OutOfRange);

    // A revision no replica has: NOT_READY once the call's deadline is near.
    let mut request = with_min_revision(
        api::GetPrefixRequest {
            account_id: owner.clone(),
            prefix_id: prefix.id.clone(),
        },
        head + 1000,
    );
    request.set_timeout(Duration::from_millis(300));
    let not_yet = b.prefixes().get_prefix(request).await.unwrap_err();
    assert_error(&not_yet, Code::Unavailable, "NOT_READY", 1301, None);

    // The same contents everywhere.
    let on_a = contents(a, &owner, head).await;
    assert_eq!(on_a.len(), 1);
    assert_eq!(on_a[0].1.len(), 21);
    for replica in [b, c] {
        assert_eq!(contents(replica, &owner, head).await, on_a);
    }

    // B's metrics: connected, caught up (lag 0), at the stream's last sequence.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let metrics = scrape_metrics(b.metrics_address).await;
        let value = |name: &str| metrics.get(name).copied().unwrap_or(-1.0);
        let caught_up = value("ipam_replica_nats_connected") == 1.0
            && value("ipam_replica_lag_events") == 0.0
            && value("ipam_replica_lag_seconds") == 0.0
            && value("ipam_replica_applied_sequence") > 0.0
            && value("ipam_replica_applied_sequence") == value("ipam_replica_stream_sequence");
        if caught_up {
            break;
        }
        assert!(Instant::now() < deadline, "B's replica metrics: {metrics:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The offline export of every replica's data directory is the same.
    let exports = replicas.stop_and_export().await;
    assert_eq!(exports[0].lines().count(), head as usize);
    assert!(exports.iter().all(|export| *export == exports[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racers_on_three_replicas_one_wins() {
    let Some(nats) = nats_server() else { return };
    let cluster = NatsCluster::start(nats).await;
    let replicas = Replicas::start(&cluster).await;
    let owner = account();
    let prefix = replicas.servers[0].create_prefix(&owner, "198.51.100.0/24").await;
    let revision = 1;
    for server in &replicas.servers {
        contents(server, &owner, revision).await;
    }

    // 64 racers over three replicas for the prefix's first binding: one wins.
    let mut racers = tokio::task::JoinSet::new();
    for racer in 0..64 {
        let api = Api::new(replicas.servers[racer % 3].channel.clone());
        let prefix = prefix.clone();
        let service = [MAGIC_TRANSIT, CDN, SPECTRUM][racer % 3];
        racers.spawn(async move { api.try_bind(&prefix, "198.51.100.0/24", service).await });
    }
    let results = racers.join_all().await;
    let winners = results.iter().filter(|result| result.is_ok()).count();
    assert_eq!(winners, 1, "{results:?}");
    for loser in results.iter().filter_map(|result| result.as_ref().err()) {
        assert_eq!(loser.code(), Code::AlreadyExists, "{loser:?}");
    }

    // Overlapping prefixes created on different replicas at once: one is accepted per round.
    for round in 0..10 {
        let mut racers = tokio::task::JoinSet::new();
        for (index, cidr) in [
            format!("10.{round}.0.0/16"),
            format!("10.{round}.0.0/20"),
            format!("10.{round}.1.0/24"),
        ]
        .into_iter()
        .enumerate()
        {
            let api = Api::new(replicas.servers[index].channel.clone());
            let owner = account();
            racers.spawn(async move { api.try_create_prefix(&owner, &cidr).await });
        }
        let results = racers.join_all().await;
        let accepted = results.iter().filter(|result| result.is_ok()).count();
        assert_eq!(accepted, 1, "round {round}: {results:?}");
        for refused in results.iter().filter_map(|result| result.as_ref().err()) {
            assert_error(refused, Code::AlreadyExists, "PREFIX_OVERLAPS", 1100, Some("cidr"));
        }
    }
}

/// Writers spread over the replicas, each recording what was acknowledged.
fn spawn_writers(
    servers: &[&TestServer],
    owner: &str,
    per_writer: usize,
    tag: u8,
) -> tokio::task::JoinSet<Vec<(String, String)>> {
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..6u8 {
        let api = Api::new(servers[writer as usize % servers.len()].channel.clone());
        let owner = owner.to_string();
        writers.spawn(async move {
            let mut acknowledged = Vec::new();
            for n in 0..per_writer {
                let cidr = format!("{}.{writer}.{n}.0/24", 20 + tag);
                if let Ok(prefix) = api.try_create_prefix(&owner, &cidr).await {
                    acknowledged.push((prefix.id, cidr));
                }
            }
            acknowledged
        });
    }
    writers
}

/// Waits until every replica applied `head` and returns their contents, checked equal.
async fn converged(servers: &[&TestServer], owner: &str, head: u64) -> Vec<(api::Prefix, Vec<api::ServiceBinding>)> {
    let first = contents(servers[0], owner, head).await;
    let events = binding_events(servers[0], head).await;
    for server in &servers[1..] {
        assert_eq!(contents(server, owner, head).await, first);
        assert_eq!(binding_events(server, head).await, events);
    }
    first
}

/// Creates the prefix as soon as writes resume: until then every attempt must be UNAVAILABLE.
/// Such an attempt may still have landed (the stream took it after the replica gave up
/// waiting; its error says to read before retrying): a retry then finds it, and it is read.
async fn create_once_writable(server: &TestServer, owner: &str, cidr: &str) -> api::Prefix {
    let deadline = Instant::now() + PATIENCE;
    loop {
        match server.try_create_prefix(owner, cidr).await {
            Ok(prefix) => return prefix,
            Err(status) if status.code() == Code::AlreadyExists => {
                let head = head_of(server).await;
                let listed = contents(server, owner, head).await;
                let landed = listed
                    .into_iter()
                    .map(|(prefix, _)| prefix)
                    .find(|prefix| prefix.cidr == cidr);
                return landed.unwrap_or_else(|| panic!("{cidr} exists but is not listed: {status:?}"));
            }
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                assert!(Instant::now() < deadline, "writes did not resume: {status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn head_of(server: &TestServer) -> u64 {
    let listed = server
        .prefixes()
        .list_prefixes(api::ListPrefixesRequest {
            account_id: account(),
            ..Default::default()
        })
        .await
        .unwrap();
    revision_of(&listed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_the_stream_leader_under_writes_loses_nothing() {
    let Some(nats) = nats_server() else { return };
    let mut cluster = NatsCluster::start(nats).await;
    let replicas = Replicas::start(&cluster).await;
    let servers: Vec<&TestServer> = replicas.servers.iter().collect();
    let owner = account();
    servers[0].create_prefix(&owner, "192.0.2.0/24").await;

    let writers = spawn_writers(&servers, &owner, 60, 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leader = cluster.stream_leader("IPAM_EVENTS").await;
    cluster.kill(leader);
    let acknowledged: Vec<(String, String)> = writers.join_all().await.into_iter().flatten().collect();
    // Writes resume on the two nodes left (a new leader is elected).
    let after = create_once_writable(servers[leader], &owner, "192.0.3.0/24").await;
    cluster.restart(leader);

    let head = head_of(servers[leader]).await;
    let contents = converged(&servers, &owner, head).await;
    let held: std::collections::HashMap<String, String> = (contents.iter())
        .map(|(prefix, _)| (prefix.id.clone(), prefix.cidr.clone()))
        .collect();
    for (id, cidr) in &acknowledged {
        assert_eq!(held.get(id), Some(cidr), "an acknowledged write was lost");
    }
    assert!(held.contains_key(&after.id));
    assert!(acknowledged.len() > 20, "writes went through: {}", acknowledged.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_replica_catches_up_and_the_others_go_on() {
    let Some(nats) = nats_server() else { return };
    let cluster = NatsCluster::start(nats).await;
    let replicas = Replicas::start(&cluster).await;
    let owner = account();
    let dir = tempfile::tempdir().unwrap();
    let urls = cluster.urls(2);
    // A checkpoint every 20 events: the killed replica restarts from a snapshot, the deltas
    // after it (most of the time) and its local log, then catches up from the stream.
    let args = [
        "--log-backend",
        "jetstream",
        "--nats-url",
        urls.as_str(),
        "--provisioning-delay",
        "1h",
        "--snapshot-every",
        "20",
    ];
    let mut killed = ServerProcess::start(dir.path(), &args, &[]).await;
    let servers: Vec<&TestServer> = replicas.servers.iter().collect();

    let writers = spawn_writers(&servers, &owner, 40, 2);
    let on_killed = killed.api();
    let mut written_there = Vec::new();
    for n in 0..10 {
        if let Ok(prefix) = on_killed.try_create_prefix(&owner, &format!("22.99.{n}.0/24")).await {
            written_there.push(prefix.id);
        }
    }
    killed.child.kill().unwrap();
    killed.child.wait().unwrap();
    let acknowledged: Vec<(String, String)> = writers.join_all().await.into_iter().flatten().collect();
    assert!(acknowledged.len() > 100, "the others went on: {}", acknowledged.len());

    let restarted = ServerProcess::start(dir.path(), &args, &[]).await;
    let head = head_of(servers[0]).await;
    let expected = converged(&servers, &owner, head).await;
    let on_restarted = contents(&restarted.api(), &owner, head).await;
    assert_eq!(on_restarted, expected, "the restarted replica caught up");
    for id in written_there {
        assert!(expected.iter().any(|(prefix, _)| prefix.id == id));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_a_quorum_writes_fail_reads_go_on_and_writes_resume() {
    let Some(nats) = nats_server() else { return };
    let mut cluster = NatsCluster::start(nats).await;
    let replicas = Replicas::start(&cluster).await;
    let owner = account();
    let server = &replicas.servers[0];
    let prefix = server.create_prefix(&owner, "203.0.113.0/24").await;
    // Every replica holds it before the quorum goes (a tail cut off with it stays behind).
    let head = head_of(server).await;
    for replica in &replicas.servers {
        contents(replica, &owner, head).await;
    }

    cluster.kill(1);
    cluster.kill(2);
    let refused = server.try_create_prefix(&owner, "203.0.114.0/24").await.unwrap_err();
    assert_error(&refused, Code::Unavailable, "STORAGE_UNAVAILABLE", 1300, None);
    // It names the cause: the stream's missing acknowledgement, seen here or by the lease
    // holder this replica forwarded to, or the holder not answering (NATS is down too).
    let causes = [
        "did not acknowledge",
        "did not answer",
        "forwarding to the writing replica failed",
    ];
    assert!(
        causes.iter().any(|cause| refused.message().contains(cause)),
        "{}",
        refused.message()
    );
    for replica in &replicas.servers {
        let read = replica
            .prefixes()
            .get_prefix(api::GetPrefixRequest {
                account_id: owner.clone(),
                prefix_id: prefix.id.clone(),
            })
            .await
            .expect("reads go on");
        assert_eq!(read.into_inner(), prefix);
    }

    cluster.restart(1);
    cluster.restart(2);
    let created = create_once_writable(server, &owner, "203.0.115.0/24").await;
    let head = head_of(server).await;
    let servers: Vec<&TestServer> = replicas.servers.iter().collect();
    let everywhere = converged(&servers, &owner, head).await;
    assert!(everywhere.iter().any(|(prefix, _)| prefix.id == created.id));
    // The refused create either never landed or, if NATS took it after all, landed once.
    let refused_copies = (everywhere.iter())
        .filter(|(prefix, _)| prefix.cidr == "203.0.114.0/24")
        .count();
    assert!(refused_copies <= 1);
}

/// A write through a replica is traced like one on a single node: the call's server span under
/// the caller's, and the writer's queue, decide, append (the stream's acknowledgement) and
/// apply spans under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_replica_records_the_writers_spans() {
    let Some(nats) = nats_server() else { return };
    let cluster = NatsCluster::start(nats).await;
    let (collector, collector_address) = crate::tracing::Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let urls = cluster.urls(0);
    let args = ["--log-backend", "jetstream", "--nats-url", urls.as_str()];
    let replica = crate::tracing::traced_server(dir.path(), collector_address, &args).await;
    let trace_id = "6bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(api::CreatePrefixRequest {
        account_id: account(),
        cidr: "192.0.2.0/24".into(),
        ..Default::default()
    });
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    replica.api().prefixes().create_prefix(request).await.unwrap();

    let trace = crate::tracing::hex(trace_id);
    let call = collector.span(&trace, "CreatePrefix").await;
    collector.write_spans_under(&trace, &call).await;

    // A second replica forwards its writes to the first (the lease holder): its spans are the
    // wait in its queue, the holder's round trip and the wait for its own tail, and the
    // holder's decide and append join them. Its first writes may be appended directly, until
    // it has read who holds the lease.
    let other_dir = tempfile::tempdir().unwrap();
    let other = crate::tracing::traced_server(other_dir.path(), collector_address, &args).await;
    let deadline = Instant::now() + PATIENCE;
    for attempt in 1u32.. {
        let trace_id = format!("7bf92f3577b34da6a3ce929d{attempt:08x}");
        let mut request = tonic::Request::new(api::CreatePrefixRequest {
            account_id: account(),
            cidr: format!("198.51.{}.0/24", attempt % 256),
            ..Default::default()
        });
        let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
        other.api().prefixes().create_prefix(request).await.unwrap();
        let trace = crate::tracing::hex(&trace_id);
        let call = collector.span(&trace, "CreatePrefix").await;
        // The writer's spans are recorded once the write is applied, and may come in a later
        // export than the call's: give them a moment (none come for a write appended here).
        let waited = Instant::now();
        while collector.received(&trace, "write.forward").is_none() && waited.elapsed() < Duration::from_secs(2) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        if collector.received(&trace, "write.forward").is_some() {
            (collector.spans_under(&trace, &call, &["write.queue", "write.forward", "write.apply"])).await;
            // The holder's spans of the command join the trace, under the same call.
            (collector.spans_under(&trace, &call, &["write.decide", "write.append"])).await;
            break;
        }
        assert!(Instant::now() < deadline, "the second replica never forwarded a write");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_could_lose_events_is_refused() {
    let Some(nats) = nats_server() else { return };
    let cluster = NatsCluster::start(nats).await;
    cluster
        .jetstream()
        .await
        .create_stream(async_nats::jetstream::stream::Config {
            name: "IPAM_EVENTS".into(),
            subjects: vec!["IPAM_EVENTS.events".into()],
            max_age: Duration::from_secs(86_400),
            num_replicas: 3,
            ..Default::default()
        })
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let options = replica_options(dir.path(), &cluster, 0);
    let (_shutdown, signal) = tokio::sync::oneshot::channel::<()>();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served = ipam_bindings::server::serve(options, listener, async move {
        let _ = signal.await;
    });
    let error = tokio::time::timeout(PATIENCE, served).await.unwrap().unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("would lose data") && message.contains("size or age limit"),
        "{message}"
    );
}

/// Which replicas say they hold the lease.
async fn lease_holders(servers: &[&TestServer]) -> Vec<usize> {
    let mut holders = Vec::new();
    for (index, server) in servers.iter().enumerate() {
        let metrics = scrape_metrics(server.metrics_address).await;
        if metrics.get("ipam_replica_lease_held") == Some(&1.0) {
            holders.push(index);
        }
    }
    holders
}

/// Waits until exactly one replica holds the lease (never two at once) and returns it.
async fn lease_holder(servers: &[&TestServer]) -> usize {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let holders = lease_holders(servers).await;
        assert!(holders.len() <= 1, "one lease holder at most: {holders:?}");
        if let [holder] = holders[..] {
            return holder;
        }
        assert!(Instant::now() < deadline, "no replica took the lease");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A replica's counter, summed over its label sets (0 when it has none yet).
async fn counter(server: &TestServer, name: &str) -> f64 {
    let metrics = scrape_metrics(server.metrics_address).await;
    (metrics.iter())
        .filter(|(sample, _)| sample.as_str() == name || sample.starts_with(&format!("{name}{{")))
        .map(|(_, value)| value)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_on_every_replica_are_appended_by_the_lease_holder() {
    let Some(nats) = nats_server() else { return };
    let cluster = NatsCluster::start(nats).await;
    let replicas = Replicas::start(&cluster).await;
    let servers: Vec<&TestServer> = replicas.servers.iter().collect();
    let owner = account();
    let holder = lease_holder(&servers).await;
    let others: Vec<&TestServer> = (servers.iter().enumerate())
        .filter(|(index, _)| *index != holder)
        .map(|(_, server)| *server)
        .collect();

    // The others forward once they read who holds the lease (a third of its TTL at most). A
    // forwarded create is answered once this replica applied it: read here at once, with no
    // x-ipam-min-revision.
    let mut created = 0;
    let mut probed = None;
    for (index, server) in others.iter().enumerate() {
        let deadline = Instant::now() + PATIENCE;
        while counter(server, "ipam_replica_forwarded_commands_total").await < 1.0 {
            created += 1;
            let prefix = server
                .create_prefix(&owner, &format!("1{index}.{}.{}.0/24", created / 256, created % 256))
                .await;
            let read = server
                .prefixes()
                .get_prefix(api::GetPrefixRequest {
                    account_id: owner.clone(),
                    prefix_id: prefix.id.clone(),
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(read, prefix);
            probed = Some(prefix);
            assert!(
                Instant::now() < deadline,
                "replica {index} never forwarded to the lease holder"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Writers on all three at once: every create lands, and no append loses a race.
    let mut conflicts_before = 0.0;
    for server in &servers {
        conflicts_before += counter(server, "ipam_replica_write_conflicts_total").await;
    }
    let forwarded_before = counter(others[0], "ipam_replica_forwarded_commands_total").await;
    let forwards_before = counter(others[0], "ipam_replica_forwards_total").await;
    let writers = spawn_writers(&servers, &owner, 10, 3);
    let acknowledged: Vec<(String, String)> = writers.join_all().await.into_iter().flatten().collect();
    assert_eq!(acknowledged.len(), 6 * 10);
    let mut conflicts_after = 0.0;
    for server in &servers {
        conflicts_after += counter(server, "ipam_replica_write_conflicts_total").await;
    }
    assert_eq!(
        conflicts_after, conflicts_before,
        "appends raced although one replica holds the lease"
    );
    let forwarded = counter(others[0], "ipam_replica_forwarded_commands_total").await - forwarded_before;
    let forwards = counter(others[0], "ipam_replica_forwards_total").await - forwards_before;
    assert!(forwarded >= 20.0);
    // Each request carries at least one command.
    assert!(
        (1.0..=forwarded).contains(&forwards),
        "{forwards} requests for {forwarded} commands"
    );
    // A binding last, so that the replicas' watches end at the head.
    let prefix = probed.expect("a prefix created through a forwarding replica");
    others[1].bind(&prefix, &prefix.cidr, MAGIC_TRANSIT).await;
    let head = head_of(servers[holder]).await;
    let listed = converged(&servers, &owner, head).await;
    assert_eq!(listed.len(), created + acknowledged.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_rollout_runs_on_one_replica_and_activates_each_binding_once() {
    let Some(nats) = nats_server() else { return };
    let cluster = NatsCluster::start(nats).await;
    let mut replicas = Replicas::start_with_delay(&cluster, Duration::from_millis(200)).await;
    let owner = account();
    let prefix = replicas.servers[0].create_prefix(&owner, "192.0.2.0/24").await;
    let mut bindings = vec![replicas.servers[0].bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await];
    for host in 1..=15 {
        let server = &replicas.servers[host % 3];
        contents(server, &owner, 1).await;
        bindings.push(server.bind(&prefix, &format!("192.0.2.{host}/32"), CDN).await);
    }

    let servers: Vec<&TestServer> = replicas.servers.iter().collect();
    let holder = lease_holder(&servers).await;
    let deadline = Instant::now() + PATIENCE;
    let all_active = |listed: &[api::ServiceBinding]| {
        listed.len() == bindings.len()
            && listed.iter().all(|binding| {
                binding
                    .provisioning
                    .is_some_and(|p| p.state == api::ProvisioningState::Active as i32)
            })
    };
    loop {
        if all_active(&servers[0].list_all_bindings(&prefix, 100).await) {
            break;
        }
        assert!(Instant::now() < deadline, "the rollout did not activate every binding");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let head = head_of(servers[0]).await;
    let events = binding_events(servers[0], head).await;
    for binding in &bindings {
        let activations = (events.iter())
            .filter(|(_, kind, id, _)| {
                *kind == api::ServiceBindingEventKind::ProvisioningStateChanged as i32 && *id == binding.id
            })
            .count();
        assert_eq!(activations, 1, "one activation for {}", binding.cidr);
    }
    converged(&servers, &owner, head).await;

    // The holder stops (and lets the lease go): another replica takes over the rollout.
    replicas.servers[holder].stop().await.unwrap();
    let others: Vec<&TestServer> = (replicas.servers.iter().enumerate())
        .filter(|(index, _)| *index != holder)
        .map(|(_, server)| server)
        .collect();
    let later = others[0].bind(&prefix, "192.0.2.100/32", SPECTRUM).await;
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = others[1].list_all_bindings(&prefix, 100).await;
        let activated = now.iter().any(|binding| {
            binding.id == later.id
                && binding
                    .provisioning
                    .is_some_and(|p| p.state == api::ProvisioningState::Active as i32)
        });
        if activated {
            break;
        }
        assert!(Instant::now() < deadline, "no replica took the rollout over");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_that_is_not_a_prefix_of_the_stream_is_refused() {
    let Some(nats) = nats_server() else { return };
    let cluster = NatsCluster::start(nats).await;
    let start = |options: ServerOptions| async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (_shutdown, signal) = tokio::sync::oneshot::channel::<()>();
        let served = ipam_bindings::server::serve(options, listener, async move {
            let _ = signal.await;
        });
        tokio::time::timeout(PATIENCE, served)
            .await
            .unwrap()
            .unwrap_err()
            .to_string()
    };

    // A single node's log: its events did not come from the stream.
    let single = tempfile::tempdir().unwrap();
    let mut server = TestServer::start_on(single.path(), Duration::from_secs(3600)).await;
    server.create_prefix(&account(), "192.0.2.0/24").await;
    server.stop().await.unwrap();
    wait_until_unlocked(single.path()).await;
    let refused = start(replica_options(single.path(), &cluster, 0)).await;
    assert!(refused.contains("did not come from a stream"), "{refused}");

    // A replica's log, then the stream deleted and made afresh: the log is ahead of it.
    let dir = tempfile::tempdir().unwrap();
    let mut replica = TestServer::start_with_options(replica_options(dir.path(), &cluster, 1)).await;
    replica.create_prefix(&account(), "198.51.100.0/24").await;
    let metrics = scrape_metrics(replica.metrics_address).await;
    assert_eq!(metrics.get("ipam_replica_nats_connected"), Some(&1.0), "{metrics:?}");
    replica.stop().await.unwrap();
    wait_until_unlocked(dir.path()).await;
    cluster.jetstream().await.delete_stream("IPAM_EVENTS").await.unwrap();
    let refused = start(replica_options(dir.path(), &cluster, 1)).await;
    assert!(refused.contains("ahead of the stream"), "{refused}");
}

/// A forwarded group is decided only once the lease holder applied the stream as far as its
/// sender had: a refusal appends nothing, so no compare-and-set would catch a decision made on
/// an older state. Sent straight to the holder's subject: a group claiming a sequence the
/// stream never reaches is refused NOT_READY unrun; one at the stream's head runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwarded_group_waits_for_what_its_sender_had_applied() {
    use ipam_bindings::pb::forward as wire;
    use prost::Message;
    let Some(nats) = nats_server() else { return };
    let cluster = NatsCluster::start(nats).await;
    let replicas = Replicas::start(&cluster).await;
    let servers: Vec<&TestServer> = replicas.servers.iter().collect();
    let holder = lease_holder(&servers).await;
    let owner = account();
    let prefix = servers[holder].create_prefix(&owner, "198.51.100.0/24").await;

    let client = cluster.connect().await.unwrap();
    let jetstream = async_nats::jetstream::new(client.clone());
    let leases = jetstream.get_key_value("IPAM_EVENTS_LEASES").await.unwrap();
    let writer_id = String::from_utf8(leases.get("writer").await.unwrap().unwrap().to_vec()).unwrap();
    let mut stream = jetstream.get_stream("IPAM_EVENTS").await.unwrap();
    let head = stream.info().await.unwrap().state.last_sequence;
    let id = |hex: &str| uuid::Uuid::parse_str(hex).unwrap().as_bytes().to_vec();
    let bind = |after_sequence: u64| {
        let command = wire::forwarded_command::Command::CreateBinding(wire::CreateBinding {
            id: uuid::Uuid::new_v4().as_bytes().to_vec(),
            account_id: id(&owner),
            prefix_id: id(&prefix.id),
            cidr: "198.51.100.0/24".into(),
            service_id: id(MAGIC_TRANSIT),
            request_id: None,
        });
        let group = wire::ForwardedGroup {
            commands: vec![wire::ForwardedCommand {
                actor: Some(Default::default()),
                command: Some(command),
            }],
            traceparents: vec![String::new()],
            after_sequence,
        };
        bytes::Bytes::from(group.encode_to_vec())
    };
    let subject = format!("IPAM_EVENTS.writes.{writer_id}");
    let ask = |payload: bytes::Bytes| {
        let (client, subject) = (client.clone(), subject.clone());
        async move {
            let answer = client.request(subject, payload).await.unwrap();
            let answer = wire::ForwardedAnswer::decode(answer.payload).unwrap();
            answer.results.into_iter().next().unwrap().result.unwrap()
        }
    };

    match ask(bind(head + 1000)).await {
        wire::forwarded_result::Result::Refusal(refusal) => {
            assert_eq!(refusal.code, 1301, "NOT_READY: {}", refusal.message)
        }
        other => panic!("decided before the holder reached the sender's sequence: {other:?}"),
    }
    assert!(
        servers[holder].list_all_bindings(&prefix, 100).await.is_empty(),
        "a refused group ran"
    );
    match ask(bind(head)).await {
        wire::forwarded_result::Result::Binding(_) => {}
        other => panic!("a group at the stream's head was not run: {other:?}"),
    }
    assert_eq!(servers[holder].list_all_bindings(&prefix, 100).await.len(), 1);
}
