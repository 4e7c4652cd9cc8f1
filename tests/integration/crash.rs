//! Crash safety: the real binary as a subprocess, SIGKILLed in the middle of concurrent creates
//! and deletes, several rounds on the same data directory. After each restart every
//! acknowledged change is there, revisions continue without reuse, and a watcher that resumes
//! from its last revision after each kill has seen every revision exactly once.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipam_bindings::pb::api;
use ipam_bindings::pb::api::service_bindings_client::ServiceBindingsClient;
use tonic::transport::Channel;

use crate::common::*;

struct Subprocess {
    child: Child,
    channel: Channel,
}

/// Follows every binding event of the account from `after` until the stream ends (the server
/// was killed) or `until` is reached; returns the revisions seen, in order.
async fn watch_from(channel: Channel, account_id: String, after: u64, until: Option<u64>) -> Vec<u64> {
    let request = api::WatchServiceBindingsRequest {
        account_id,
        after_revision: Some(after),
        ..Default::default()
    };
    let Ok(response) = ServiceBindingsClient::new(channel)
        .watch_service_bindings(request)
        .await
    else {
        return Vec::new();
    };
    let mut stream = response.into_inner();
    let mut seen = Vec::new();
    while let Ok(Some(event)) = stream.message().await {
        seen.push(event.revision);
        if until.is_some_and(|until| event.revision >= until) {
            break;
        }
    }
    seen
}

/// Starts the server binary on port 0 and waits for its "listening" line.
fn spawn_binary(dir: &Path) -> Subprocess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ipam-bindings"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--provisioning-delay",
            "1h",
            "--worker-threads",
            "2",
        ])
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn server");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let address = loop {
        let line = lines
            .next()
            .expect("the server printed its address")
            .expect("read stdout");
        if let Some(rest) = line.split("address=").nth(1)
            && line.contains("listening")
        {
            break rest.split_whitespace().next().expect("address").to_string();
        }
    };
    // Keep draining stdout so the server never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    let channel = Channel::from_shared(format!("http://{address}"))
        .expect("uri")
        .connect_lazy();
    Subprocess { child, channel }
}

async fn all_bindings(channel: &Channel, prefix: &api::Prefix) -> HashSet<String> {
    let mut ids = HashSet::new();
    let mut page_token = String::new();
    loop {
        let request = api::ListServiceBindingsRequest {
            account_id: prefix.account_id.clone(),
            prefix_id: prefix.id.clone(),
            page_size: 0,
            page_token,
        };
        let page = ServiceBindingsClient::new(channel.clone())
            .list_service_bindings(request)
            .await
            .unwrap()
            .into_inner();
        ids.extend(page.bindings.into_iter().map(|b| b.id));
        if page.next_page_token.is_empty() {
            return ids;
        }
        page_token = page.next_page_token;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acknowledged_changes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = fastrand::Rng::with_seed(42);
    let mut server = spawn_binary(dir.path());
    wait_until_serving(&server.channel).await;
    let prefix = {
        let request = api::CreatePrefixRequest {
            account_id: account(),
            cidr: "10.128.0.0/9".into(),
            asn: None,
            description: String::new(),
            validate_only: false,
        };
        let mut client = ipam_bindings::pb::api::prefixes_client::PrefixesClient::new(server.channel.clone());
        client.create_prefix(request).await.unwrap().into_inner()
    };
    let wide = api::CreateServiceBindingRequest {
        account_id: prefix.account_id.clone(),
        prefix_id: prefix.id.clone(),
        cidr: prefix.cidr.clone(),
        service_id: MAGIC_TRANSIT.into(),
        request_id: String::new(),
        validate_only: false,
    };
    ServiceBindingsClient::new(server.channel.clone())
        .create_service_binding(wide)
        .await
        .unwrap();

    // Acknowledged facts, across rounds.
    let live: Arc<Mutex<HashSet<String>>> = Arc::default();
    let deleted: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut last_head = list_revision(&server.channel, &prefix).await;
    // Every binding event after the prefix's creation (revision 1) is the account's: the
    // watcher must see 2, 3, 4, ... with no gap and no repeat, across every kill.
    let mut watched: Vec<u64> = vec![1];
    let mut rounds_watched_live = 0;
    // 4 rounds in CI; IPAM_KILL_ROUNDS=100 for the long run (docs/durability.md). Each round
    // writes its own /16 of 10.128.0.0/9, so at most 128 rounds.
    let rounds: u32 = std::env::var("IPAM_KILL_ROUNDS")
        .ok()
        .and_then(|rounds| rounds.parse().ok())
        .unwrap_or(4)
        .min(127);
    for round in 0..rounds {
        let acknowledged = Arc::new(AtomicU64::new(0));
        let mut writers = tokio::task::JoinSet::new();
        for writer in 0..16u32 {
            let (channel, prefix, live, deleted) =
                (server.channel.clone(), prefix.clone(), live.clone(), deleted.clone());
            let acknowledged = Arc::clone(&acknowledged);
            writers.spawn(async move {
                let mut client = ServiceBindingsClient::new(channel);
                for i in 0.. {
                    let cidr = format!("10.{}.{}.{}/32", 128 + round, writer, i % 256);
                    let request = api::CreateServiceBindingRequest {
                        account_id: prefix.account_id.clone(),
                        prefix_id: prefix.id.clone(),
                        cidr,
                        service_id: CDN.into(),
                        request_id: String::new(),
                        validate_only: false,
                    };
                    let Ok(created) = client.create_service_binding(request).await else {
                        return;
                    };
                    let created = created.into_inner();
                    acknowledged.fetch_add(1, Ordering::Relaxed);
                    live.lock().unwrap().insert(created.id.clone());
                    if i % 3 == 0 {
                        let request = api::DeleteServiceBindingRequest {
                            account_id: prefix.account_id.clone(),
                            prefix_id: prefix.id.clone(),
                            binding_id: created.id.clone(),
                            validate_only: false,
                        };
                        if client.delete_service_binding(request).await.is_err() {
                            // In doubt: the kill may have come before or after the commit.
                            live.lock().unwrap().remove(&created.id);
                            return;
                        }
                        acknowledged.fetch_add(1, Ordering::Relaxed);
                        live.lock().unwrap().remove(&created.id);
                        deleted.lock().unwrap().insert(created.id);
                    }
                    if i >= 250 {
                        return;
                    }
                }
            });
        }
        let watcher = tokio::spawn(watch_from(
            server.channel.clone(),
            prefix.account_id.clone(),
            *watched.last().unwrap(),
            None,
        ));
        tokio::time::sleep(Duration::from_millis(rng.u64(200..500))).await;
        server.child.kill().expect("SIGKILL");
        server.child.wait().expect("reap");
        while writers.join_next().await.is_some() {}
        let seen_live = tokio::time::timeout(PATIENCE, watcher).await.unwrap().unwrap();
        rounds_watched_live += u32::from(!seen_live.is_empty());
        watched.extend(seen_live);

        server = spawn_binary(dir.path());
        wait_until_serving(&server.channel).await;
        let present = all_bindings(&server.channel, &prefix).await;
        let live = live.lock().unwrap().clone();
        let deleted = deleted.lock().unwrap().clone();
        assert!(!live.is_empty(), "round {round} acknowledged nothing");
        let missing: Vec<_> = live.difference(&present).collect();
        assert!(
            missing.is_empty(),
            "round {round}: acknowledged bindings lost: {missing:?}"
        );
        let resurrected: Vec<_> = deleted.intersection(&present).collect();
        assert!(
            resurrected.is_empty(),
            "round {round}: acknowledged deletes undone: {resurrected:?}"
        );
        let head = list_revision(&server.channel, &prefix).await;
        let n_acknowledged = acknowledged.load(Ordering::Relaxed);
        assert!(
            head >= last_head + n_acknowledged,
            "round {round}: {n_acknowledged} acknowledged events, but the head went from {last_head} to {head}"
        );
        last_head = head;
    }
    // Revisions continue after the last crash without reuse.
    let request = api::CreateServiceBindingRequest {
        account_id: prefix.account_id.clone(),
        prefix_id: prefix.id.clone(),
        cidr: "10.255.255.255/32".into(),
        service_id: SPECTRUM.into(),
        request_id: String::new(),
        validate_only: false,
    };
    ServiceBindingsClient::new(server.channel.clone())
        .create_service_binding(request)
        .await
        .unwrap();
    assert_eq!(list_revision(&server.channel, &prefix).await, last_head + 1);
    let rest = watch_from(
        server.channel.clone(),
        prefix.account_id.clone(),
        *watched.last().unwrap(),
        Some(last_head + 1),
    );
    watched.extend(tokio::time::timeout(PATIENCE, rest).await.unwrap());
    let expected: Vec<u64> = (1..=last_head + 1).collect();
    assert_eq!(
        watched, expected,
        "the watcher saw every revision once, in order, across the kills"
    );
    assert!(
        rounds_watched_live > 0,
        "the watcher saw events live, not only replayed"
    );
    server.child.kill().unwrap();
    server.child.wait().unwrap();
}
