//! ipamctl against a real server: create -> list -> lookup -> delete in JSON, an error path,
//! watch printing events and resuming across restarts (also a live watch), what a new user
//! meets: service names, a missing account, a server given without a scheme or not running;
//! and the watch fan-out benchmarks at a small scale.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::*;

fn ipamctl(server: &TestServer, account_id: &str, args: &[&str]) -> (bool, String, String) {
    let output = ipamctl_json(server.address, account_id)
        .args(args)
        .output()
        .expect("run ipamctl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into(),
        String::from_utf8_lossy(&output.stderr).into(),
    )
}

fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{line:?}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_list_lookup_delete_and_an_error() {
    let server = TestServer::start().await;
    let account_id = account();
    let (ok, stdout, _) = ipamctl(
        &server,
        &account_id,
        &["prefixes", "create", "192.0.2.0/24", "--description", "cli"],
    );
    assert!(ok);
    let prefix = &json_lines(&stdout)[0];
    let prefix_id = prefix["id"].as_str().unwrap().to_string();
    assert_eq!(prefix["cidr"], "192.0.2.0/24");

    let (ok, stdout, _) = ipamctl(
        &server,
        &account_id,
        &[
            "bindings",
            "create",
            "--prefix",
            &prefix_id,
            "192.0.2.0/24",
            "--service",
            "magic-transit",
        ],
    );
    assert!(ok);
    let wide_id = json_lines(&stdout)[0]["id"].as_str().unwrap().to_string();
    let (ok, _, _) = ipamctl(
        &server,
        &account_id,
        &[
            "bindings",
            "create",
            "--prefix",
            &prefix_id,
            "192.0.2.1/32",
            "--service",
            "cdn",
        ],
    );
    assert!(ok);

    let (ok, stdout, _) = ipamctl(&server, &account_id, &["bindings", "list", "--prefix", &prefix_id]);
    assert!(ok);
    let cidrs: Vec<_> = json_lines(&stdout)
        .iter()
        .map(|b| b["cidr"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(cidrs, ["192.0.2.0/24", "192.0.2.1/32"]);

    let (ok, stdout, _) = ipamctl(
        &server,
        &account_id,
        &["lookup", "192.0.2.1", "192.0.2.9", "203.0.113.1"],
    );
    assert!(ok);
    let results = json_lines(&stdout);
    assert_eq!(results[0]["binding"]["service_name"], "CDN");
    assert_eq!(results[1]["binding"]["service_name"], "Magic Transit");
    assert_eq!(results[2]["found"], false);

    // The prefix-wide binding cannot go first: a clear error and a non-zero exit.
    let (ok, _, stderr) = ipamctl(
        &server,
        &account_id,
        &["bindings", "delete", "--prefix", &prefix_id, &wide_id],
    );
    assert!(!ok);
    assert!(
        stderr.contains("FailedPrecondition")
            && stderr.contains("PREFIX_WIDE_BINDING_IN_USE")
            && stderr.contains("1103"),
        "{stderr}"
    );
    let (ok, _, stderr) = ipamctl(&server, &account_id, &["prefixes", "create", "192.0.2.1/24"]);
    assert!(!ok);
    assert!(
        stderr.contains("CIDR_NOT_CANONICAL") && stderr.contains("field cidr"),
        "{stderr}"
    );

    let (ok, stdout, _) = ipamctl(&server, &account_id, &["prefixes", "list"]);
    assert!(ok);
    assert_eq!(json_lines(&stdout).len(), 1);

    // Delete: the more specific binding, then the prefix-wide one, then the prefix.
    let (_, stdout, _) = ipamctl(&server, &account_id, &["bindings", "list", "--prefix", &prefix_id]);
    let ids: Vec<String> = json_lines(&stdout)
        .iter()
        .map(|b| b["id"].as_str().unwrap().to_string())
        .collect();
    for id in ids.iter().rev() {
        let (ok, stdout, stderr) = ipamctl(
            &server,
            &account_id,
            &["bindings", "delete", "--prefix", &prefix_id, id],
        );
        assert!(ok, "{stderr}");
        assert_eq!(json_lines(&stdout)[0]["deleted"], id.as_str());
    }
    let (ok, _, stderr) = ipamctl(&server, &account_id, &["prefixes", "delete", &prefix_id]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = ipamctl(&server, &account_id, &["prefixes", "get", &prefix_id]);
    assert!(
        !ok && stderr.contains("PREFIX_NOT_FOUND") && stderr.contains("1000"),
        "{stderr}"
    );
    // A bad flag is clap's usage error (exit 2), not a call.
    let output = Command::new(env!("CARGO_BIN_EXE_ipamctl"))
        .args(["prefixes", "list", "--page-size", "many"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_events_from_a_revision() {
    let server = TestServer::start().await;
    let prefix = server.create_prefix(&account(), "198.51.100.0/24").await;
    server.bind(&prefix, &prefix.cidr, CDN).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ipamctl"))
        .args([
            "--server",
            &format!("http://{}", server.address),
            "--account",
            &prefix.account_id,
            "--output",
            "json",
        ])
        .args(["watch", "--after-revision", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let first = tokio::task::spawn_blocking(move || BufReader::new(stdout).lines().next().unwrap().unwrap())
        .await
        .unwrap();
    child.kill().unwrap();
    child.wait().unwrap();
    let event: serde_json::Value = serde_json::from_str(&first).unwrap();
    assert_eq!(
        (event["revision"].as_u64(), event["kind"].as_str()),
        (Some(2), Some("CREATED"))
    );
    assert_eq!(event["binding"]["cidr"], "198.51.100.0/24");
}

/// ipamctl with these arguments only (no --server or --account added).
fn ipamctl_raw(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ipamctl"))
        .env_remove("IPAM_ACCOUNT")
        .env_remove("IPAM_SERVER")
        .args(args)
        .output()
        .expect("run ipamctl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into(),
        String::from_utf8_lossy(&output.stderr).into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_names_accounts_and_servers_as_a_new_user_types_them() {
    let server = TestServer::start().await;
    let account_id = account();
    let bare = server.address.to_string(); // 127.0.0.1:PORT, no scheme
    let (ok, stdout, stderr) = ipamctl_raw(&[
        "--server",
        &bare,
        "--account",
        &account_id,
        "--output",
        "json",
        "prefixes",
        "create",
        "192.0.2.0/24",
    ]);
    assert!(ok, "{stderr}");
    let prefix_id = json_lines(&stdout)[0]["id"].as_str().unwrap().to_string();
    // The names `ipamctl services` prints, as printed or in any case.
    for (cidr, service, name) in [
        ("192.0.2.0/24", "Magic Transit", "Magic Transit"),
        ("192.0.2.1/32", "CDN", "CDN"),
        ("192.0.2.2/32", "SPECTRUM", "Spectrum"),
        ("192.0.2.3/32", "cdn", "CDN"),
    ] {
        let (ok, stdout, stderr) = ipamctl(
            &server,
            &account_id,
            &["bindings", "create", "--prefix", &prefix_id, cidr, "--service", service],
        );
        assert!(ok, "{service}: {stderr}");
        assert_eq!(json_lines(&stdout)[0]["service_name"], name);
    }
    let (ok, _, stderr) = ipamctl(
        &server,
        &account_id,
        &[
            "bindings",
            "create",
            "--prefix",
            &prefix_id,
            "192.0.2.4/32",
            "--service",
            "akamai",
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains("unknown service \"akamai\"") && stderr.contains("\"Magic Transit\" (magic-transit)"),
        "{stderr}"
    );

    let (ok, _, stderr) = ipamctl_raw(&["--server", &bare, "prefixes", "list"]);
    assert!(!ok);
    assert!(stderr.contains("--account or IPAM_ACCOUNT is required"), "{stderr}");

    // Nothing listens on a port just released.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (ok, _, stderr) = ipamctl_raw(&["--server", &closed.to_string(), "--account", &account_id, "services"]);
    assert!(!ok);
    assert!(stderr.contains("connection refused"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    let (ok, stdout, _) = ipamctl_raw(&["completions", "bash"]);
    assert!(ok && stdout.contains("_ipamctl") && stdout.contains("bindings"));
}

/// A server on a chosen port over a chosen directory, so that a restarted one is found where
/// a client reconnects.
struct PortServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), ipam_bindings::server::ServeError>>,
    api: Api,
    metrics_address: std::net::SocketAddr,
}

impl PortServer {
    async fn start(dir: &std::path::Path, port: u16) -> PortServer {
        wait_until_unlocked(dir).await;
        let grpc = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics_address = metrics.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options =
            ipam_bindings::server::ServerOptions::new(dir.to_path_buf(), std::time::Duration::from_secs(3600));
        let listeners = ipam_bindings::server::Listeners {
            grpc,
            metrics: Some(metrics),
            http: None,
        };
        let task = tokio::spawn(ipam_bindings::server::serve(options, listeners, async move {
            let _ = stopped.await;
        }));
        let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy();
        wait_until_serving(&channel).await;
        PortServer {
            stop,
            task,
            api: Api::new(channel),
            metrics_address,
        }
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.unwrap().unwrap();
    }
}

/// `ipamctl watch` (JSON) against the server on `port`, with `args` after `watch`; its
/// events arrive on the receiver.
fn spawn_watch(
    port: u16,
    account_id: &str,
    args: &[&str],
) -> (
    std::process::Child,
    tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ipamctl"))
        .args(["--server", &format!("127.0.0.1:{port}"), "--account", account_id])
        .args(["--output", "json", "watch"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_sender, lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_sender.send(serde_json::from_str(&line).unwrap());
        }
    });
    (child, lines)
}

async fn next_event(lines: &mut tokio::sync::mpsc::UnboundedReceiver<serde_json::Value>) -> (Option<u64>, String) {
    let event = tokio::time::timeout(PATIENCE, lines.recv()).await.unwrap().unwrap();
    (
        event["revision"].as_u64(),
        event["binding"]["cidr"].as_str().unwrap_or_default().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_resumes_after_the_server_restarts() {
    let (dir, port) = (tempfile::tempdir().unwrap(), free_port());
    let server = PortServer::start(dir.path(), port).await;
    let prefix = server.api.create_prefix(&account(), "192.0.2.0/24").await;
    server.api.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await;
    let (mut child, mut lines) = spawn_watch(port, &prefix.account_id, &["--after-revision", "0"]);
    assert_eq!(next_event(&mut lines).await, (Some(2), "192.0.2.0/24".into()));

    // Restart the server; the client reconnects and resumes after revision 2.
    server.stop().await;
    let server = PortServer::start(dir.path(), port).await;
    server.api.bind(&prefix, "192.0.2.1/32", CDN).await;
    assert_eq!(next_event(&mut lines).await, (Some(3), "192.0.2.1/32".into()));
    child.kill().unwrap();
    child.wait().unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_watch_resumes_from_the_head_it_started_at() {
    let (dir, port) = (tempfile::tempdir().unwrap(), free_port());
    let server = PortServer::start(dir.path(), port).await;
    let prefix = server.api.create_prefix(&account(), "192.0.2.0/24").await;
    server.api.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await;
    let (mut child, mut lines) = spawn_watch(port, &prefix.account_id, &[]);
    // Registered: the server counts the open stream.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while scrape_metrics(server.metrics_address)
        .await
        .get("ipam_watch_streams_open")
        != Some(&1.0)
    {
        assert!(tokio::time::Instant::now() < deadline, "the watch never opened");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // The server goes away before the watch saw any event, and a change is made while the
    // client cannot reach any server (this one listens on another port).
    server.stop().await;
    let elsewhere = PortServer::start(dir.path(), free_port()).await;
    elsewhere.api.bind(&prefix, "192.0.2.1/32", CDN).await;
    elsewhere.stop().await;

    let server = PortServer::start(dir.path(), port).await;
    assert_eq!(next_event(&mut lines).await, (Some(3), "192.0.2.1/32".into()));
    child.kill().unwrap();
    child.wait().unwrap();
    server.stop().await;
}

/// `ipam-bindings token new` prints a token and the policy entry for it; ipamctl calls with
/// it from `--token` or `IPAM_TOKEN`, and without it the server says what is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_token_works_from_ipamctl() {
    let dir = tempfile::tempdir().unwrap();
    let made = Command::new(env!("CARGO_BIN_EXE_ipam-bindings"))
        .args(["token", "new", "--principal", "ci-bot", "--id", "ci1"])
        .output()
        .unwrap();
    assert!(made.status.success());
    let printed = String::from_utf8(made.stdout).unwrap();
    let token = printed.lines().next().unwrap().to_string();
    assert!(token.starts_with("ipam_ci1_"), "{printed}");
    let (_, entry) = printed.split_once("\n\n").unwrap();
    assert!(!entry.contains(&token[9..]), "the entry holds only the hash");
    let account_id = account();
    let policy = entry.replace(
        "grants = [ ]",
        &format!("grants = [ {{ permission = \"ip_prefixes.edit\", accounts = [\"{account_id}\"] }} ]"),
    );
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let mut options =
        ipam_bindings::server::ServerOptions::new(dir.path().join("data"), std::time::Duration::from_secs(3600));
    options.auth_policy = Some(dir.path().join("policy.toml"));
    let server = TestServer::start_with_options(options).await;
    let (ok, _, stderr) = ipamctl(&server, &account_id, &["prefixes", "create", "192.0.2.0/24"]);
    assert!(!ok);
    assert!(stderr.contains("CREDENTIALS_MISSING"), "{stderr}");
    let (ok, stdout, stderr) = ipamctl(
        &server,
        &account_id,
        &["--token", &token, "prefixes", "create", "192.0.2.0/24"],
    );
    assert!(ok, "{stderr}");
    assert_eq!(json_lines(&stdout)[0]["cidr"], "192.0.2.0/24");
    let listed = ipamctl_json(server.address, &account_id)
        .args(["prefixes", "list"])
        .env("IPAM_TOKEN", &token)
        .output()
        .unwrap();
    assert!(listed.status.success());
    assert_eq!(json_lines(&String::from_utf8_lossy(&listed.stdout)).len(), 1);
}

/// The fan-out benchmarks as an operator runs them, at a small scale: every watcher of either
/// stream (binding events, the account's routing table) sees every acknowledged create once
/// the run ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_watch_benchmarks_deliver_every_create_to_every_watcher() {
    let server = TestServer::start().await;
    for scenario in ["watch", "watch-routes"] {
        let args = [
            "bench",
            scenario,
            "--watchers",
            "4",
            "--rate",
            "40",
            "--duration",
            "1s",
            "--rounds",
            "1",
            "--concurrency",
            "2",
            "--connections",
            "2",
        ];
        let mut command = ipamctl_json(server.address, &account());
        command.args(args);
        let output = tokio::task::spawn_blocking(move || command.output().expect("run ipamctl"))
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "{scenario}: {stdout} {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report = &json_lines(&stdout)[0];
        let created = report["created"].as_u64().unwrap();
        assert_eq!(report["scenario"], scenario);
        assert!(created >= 30, "{scenario}: {report}");
        assert_eq!(report["lost"], 0, "{scenario}: {report}");
        assert_eq!(report["deliveries"].as_u64(), Some(created * 4), "{scenario}: {report}");
    }
}
