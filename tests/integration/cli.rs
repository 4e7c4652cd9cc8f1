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
