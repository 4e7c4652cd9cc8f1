//! ipamctl against a real server: create -> list -> lookup -> delete in JSON, an error path,
//! and watch printing events.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use crate::common::*;

fn ipamctl(server: &TestServer, account_id: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_ipamctl"))
        .args([
            "--server",
            &format!("http://{}", server.address),
            "--account",
            account_id,
            "--output",
            "json",
        ])
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
async fn watch_resumes_after_the_server_restarts() {
    // A fixed port, so that the restarted server is where the client reconnects.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let start = |dir: std::path::PathBuf| async move {
        wait_until_unlocked(&dir).await;
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let options = ipam_bindings::server::ServerOptions::new(dir, std::time::Duration::from_secs(3600));
        let task = tokio::spawn(ipam_bindings::server::serve(options, listener, async move {
            let _ = stopped.await;
        }));
        let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect_lazy();
        wait_until_serving(&channel).await;
        (stop, task, channel)
    };
    let (stop, task, channel) = start(dir.path().to_path_buf()).await;
    let account_id = account();
    let mut prefixes = ipam_bindings::pb::api::prefixes_client::PrefixesClient::new(channel.clone());
    let request = ipam_bindings::pb::api::CreatePrefixRequest {
        account_id: account_id.clone(),
        cidr: "192.0.2.0/24".into(),
        asn: None,
        description: String::new(),
    };
    let prefix = prefixes.create_prefix(request).await.unwrap().into_inner();
    let bind = |channel: tonic::transport::Channel, cidr: &str, service: &str| {
        let request = ipam_bindings::pb::api::CreateServiceBindingRequest {
            account_id: prefix.account_id.clone(),
            prefix_id: prefix.id.clone(),
            cidr: cidr.into(),
            service_id: service.into(),
            request_id: String::new(),
        };
        async move {
            let mut client = ipam_bindings::pb::api::service_bindings_client::ServiceBindingsClient::new(channel);
            client.create_service_binding(request).await.unwrap();
        }
    };
    bind(channel.clone(), "192.0.2.0/24", MAGIC_TRANSIT).await;

    let mut child = Command::new(env!("CARGO_BIN_EXE_ipamctl"))
        .args([
            "--server",
            &format!("http://127.0.0.1:{port}"),
            "--account",
            &account_id,
            "--output",
            "json",
        ])
        .args(["watch", "--after-revision", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (lines_sender, mut lines) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_sender.send(serde_json::from_str(&line).unwrap());
        }
    });
    let first = tokio::time::timeout(PATIENCE, lines.recv()).await.unwrap().unwrap();
    assert_eq!(first["revision"], 2);

    // Restart the server; the client reconnects and resumes after revision 2.
    let _ = stop.send(());
    task.await.unwrap().unwrap();
    let (stop, task, channel) = start(dir.path().to_path_buf()).await;
    bind(channel.clone(), "192.0.2.1/32", CDN).await;
    let second = tokio::time::timeout(PATIENCE, lines.recv()).await.unwrap().unwrap();
    assert_eq!(
        (second["revision"].as_u64(), second["binding"]["cidr"].as_str()),
        (Some(3), Some("192.0.2.1/32"))
    );
    child.kill().unwrap();
    child.wait().unwrap();
    let _ = stop.send(());
    task.await.unwrap().unwrap();
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
