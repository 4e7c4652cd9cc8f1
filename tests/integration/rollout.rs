//! An external provisioner drives the rollout (`--rollout external`): nothing activates by
//! itself, CompleteProvisioning turns a binding ACTIVE exactly once (also across a restart),
//! lookups and watchers follow, the backlog shows in metrics, and ipamctl runs the loop. With
//! the built-in timer the call is refused with its reason.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::Duration;

use ipam_bindings::config::RolloutMode;
use ipam_bindings::pb::api;
use ipam_bindings::pb::api::rollout_client::RolloutClient;
use ipam_bindings::server::ServerOptions;
use tonic::{Code, Status};

use crate::common::*;

async fn external_server() -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    // No delay at all: were the timer running, it would activate at once.
    let mut options = ServerOptions::new(dir.path().join("data"), Duration::ZERO);
    options.rollout = RolloutMode::External;
    (TestServer::start_with_options(options).await, dir)
}

async fn complete(api: &Api, binding: &api::ServiceBinding) -> Result<api::ServiceBinding, Status> {
    let request = api::CompleteProvisioningRequest {
        account_id: binding.account_id.clone(),
        prefix_id: binding.prefix_id.clone(),
        binding_id: binding.id.clone(),
    };
    Ok(RolloutClient::new(api.channel.clone())
        .complete_provisioning(request)
        .await?
        .into_inner())
}

fn state(binding: &api::ServiceBinding) -> i32 {
    binding.provisioning.map(|p| p.state).unwrap_or_default()
}

const PROVISIONING: i32 = api::ProvisioningState::Provisioning as i32;
const ACTIVE: i32 = api::ProvisioningState::Active as i32;

async fn get(api: &Api, binding: &api::ServiceBinding) -> api::ServiceBinding {
    let request = api::GetServiceBindingRequest {
        account_id: binding.account_id.clone(),
        prefix_id: binding.prefix_id.clone(),
        binding_id: binding.id.clone(),
    };
    api.bindings().get_service_binding(request).await.unwrap().into_inner()
}

async fn active_lookup(api: &Api, address: &str) -> Option<String> {
    let request = api::LookupAddressRequest {
        address: address.into(),
        active_only: true,
    };
    let found = api.routing().lookup_address(request).await.unwrap().into_inner();
    found.binding.map(|binding| binding.id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provisioner_activates_each_binding_exactly_once() {
    let (server, _dir) = external_server().await;
    let account_id = account();
    let prefix = server.create_prefix(&account_id, "192.0.2.0/24").await;
    let wide = server.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await;
    let nested = server.bind(&prefix, "192.0.2.0/25", CDN).await;
    let request = api::WatchServiceBindingsRequest {
        account_id: account_id.clone(),
        ..Default::default()
    };
    let mut watch = server
        .bindings()
        .watch_service_bindings(request)
        .await
        .unwrap()
        .into_inner();
    // Past any delay, nothing activated by itself.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state(&get(&server, &wide).await), PROVISIONING);
    assert_eq!(active_lookup(&server, "192.0.2.200").await, None);

    let before = list_revision(&server.channel, &prefix).await;
    let activated = complete(&server, &wide).await.unwrap();
    assert_eq!(state(&activated), ACTIVE);
    assert_eq!(list_revision(&server.channel, &prefix).await, before + 1, "one event");
    let again = complete(&server, &wide).await.unwrap();
    assert_eq!((state(&again), again.modified_at), (ACTIVE, activated.modified_at));
    assert_eq!(
        list_revision(&server.channel, &prefix).await,
        before + 1,
        "a repeat appends nothing"
    );
    assert_eq!(active_lookup(&server, "192.0.2.200").await, Some(wide.id.clone()));
    assert_eq!(
        active_lookup(&server, "192.0.2.1").await,
        Some(wide.id.clone()),
        "the /25 is not active yet"
    );

    let event = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        event.kind,
        api::ServiceBindingEventKind::ProvisioningStateChanged as i32
    );
    assert_eq!(event.binding.as_ref().map(state), Some(ACTIVE));
    assert_eq!(event.actor, "anonymous", "the caller, not the timer");

    // Across a restart: the activated one stays ACTIVE, the other stays PROVISIONING, and it
    // can still be completed (once).
    let server = server.restart().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state(&get(&server, &wide).await), ACTIVE);
    assert_eq!(state(&get(&server, &nested).await), PROVISIONING);
    let before = list_revision(&server.channel, &prefix).await;
    assert_eq!(state(&complete(&server, &nested).await.unwrap()), ACTIVE);
    assert_eq!(state(&complete(&server, &nested).await.unwrap()), ACTIVE);
    assert_eq!(list_revision(&server.channel, &prefix).await, before + 1);
    assert_eq!(active_lookup(&server, "192.0.2.1").await, Some(nested.id.clone()));

    // Deleted, unknown and foreign bindings are NOT_FOUND.
    server.delete_binding(&nested).await.unwrap();
    let deleted = complete(&server, &nested).await.unwrap_err();
    assert_error(&deleted, Code::NotFound, "BINDING_NOT_FOUND", 1002, Some("binding_id"));
    let unknown = api::ServiceBinding {
        id: uuid::Uuid::new_v4().simple().to_string(),
        ..wide.clone()
    };
    assert_eq!(complete(&server, &unknown).await.unwrap_err().code(), Code::NotFound);
    let foreign = api::ServiceBinding {
        account_id: account(),
        ..wide.clone()
    };
    assert_eq!(complete(&server, &foreign).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_timer_rollout_refuses_completion() {
    let server = TestServer::start().await;
    let prefix = server.create_prefix(&account(), "192.0.2.0/24").await;
    let binding = server.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await;
    let refused = complete(&server, &binding).await.unwrap_err();
    assert_error(&refused, Code::FailedPrecondition, "ROLLOUT_NOT_EXTERNAL", 1106, None);
    // Health lists the Rollout service.
    let request = tonic_health::pb::HealthCheckRequest {
        service: "addressing.v1.Rollout".into(),
    };
    let health = server.health().check(request).await.unwrap().into_inner();
    assert_eq!(
        health.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_the_backlog_and_its_oldest_age() {
    let (server, _dir) = external_server().await;
    let prefix = server.create_prefix(&account(), "192.0.2.0/24").await;
    let binding = server.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stuck = scrape_metrics(server.metrics_address).await;
    assert_eq!(stuck["ipam_rollout_backlog"], 1.0);
    assert!(stuck["ipam_rollout_oldest_provisioning_seconds"] >= 0.2, "{stuck:?}");
    complete(&server, &binding).await.unwrap();
    let done = scrape_metrics(server.metrics_address).await;
    assert_eq!(done["ipam_rollout_backlog"], 0.0);
    assert_eq!(done["ipam_rollout_oldest_provisioning_seconds"], 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipamctl_runs_the_provisioner_loop() {
    let (server, _dir) = external_server().await;
    let account_id = account();
    let prefix = server.create_prefix(&account_id, "192.0.2.0/24").await;
    let backlog = server.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await;
    let ipamctl = |args: &[&str]| {
        let mut command = ipamctl_json(server.address, &account_id);
        command.args(args);
        command
    };
    let mut watcher = ipamctl(&["rollout", "watch"]).stdout(Stdio::piped()).spawn().unwrap();
    let (lines_sender, mut lines) = tokio::sync::mpsc::unbounded_channel::<serde_json::Value>();
    let stdout = watcher.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_sender.send(serde_json::from_str(&line).unwrap());
        }
    });
    let first = tokio::time::timeout(PATIENCE, lines.recv()).await.unwrap().unwrap();
    assert_eq!(first["id"], backlog.id.as_str(), "the backlog first");
    let new = server.bind(&prefix, "192.0.2.0/25", CDN).await;
    let second = tokio::time::timeout(PATIENCE, lines.recv()).await.unwrap().unwrap();
    assert_eq!(second["id"], new.id.as_str(), "then each new one");
    let completed = ipamctl(&["rollout", "complete", "--prefix", &prefix.id, &new.id])
        .output()
        .unwrap();
    assert!(
        completed.status.success(),
        "{}",
        String::from_utf8_lossy(&completed.stderr)
    );
    let printed: serde_json::Value = serde_json::from_slice(&completed.stdout).unwrap();
    assert_eq!(printed["state"], "ACTIVE", "{printed}");
    watcher.kill().unwrap();
    let _ = watcher.wait();
    // Printed once each: nothing more arrived.
    assert!(lines.try_recv().is_err());
}
