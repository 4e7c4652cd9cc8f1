//! `ipamctl watch`: follows binding changes. Every stream tells where it starts (the
//! `x-watch-start-revision` header: the server's head when a live watch was registered), and
//! every event its revision; on a disconnect or a server restart the watch reconnects after
//! the last revision it knows, so nothing is missed or printed twice.

use std::time::Duration;

use ipam_bindings::pb::api;
use ipam_bindings::pb::api::service_bindings_client::ServiceBindingsClient;

use crate::connection::{Connection, describe};
use crate::output::binding_json;

/// The response header holding the revision a stream starts after.
const START_REVISION_HEADER: &str = "x-watch-start-revision";

pub struct WatchArgs {
    pub account_id: String,
    pub prefix_id: String,
    pub binding_id: String,
    pub after_revision: Option<u64>,
    pub json: bool,
}

pub async fn run(connection: &Connection, args: WatchArgs) -> Result<(), String> {
    let WatchArgs {
        account_id,
        prefix_id,
        binding_id,
        mut after_revision,
        json,
    } = args;
    if account_id.is_empty() {
        eprintln!("ipamctl: no --account given: watching every account");
    }
    loop {
        let channel = match connection.connect().await {
            Ok(channel) => channel,
            Err(error) => {
                eprintln!("ipamctl: {error}; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let request = api::WatchServiceBindingsRequest {
            account_id: account_id.clone(),
            prefix_id: prefix_id.clone(),
            binding_id: binding_id.clone(),
            after_revision,
        };
        let response = match ServiceBindingsClient::new(channel)
            .watch_service_bindings(request)
            .await
        {
            Ok(response) => response,
            Err(status) if status.code() == tonic::Code::Unavailable => {
                eprintln!("ipamctl: {}; retrying in 1 s", describe(&status));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(status) => return Err(describe(&status)),
        };
        if after_revision.is_none() {
            // A live watch: from now on, resume after the head it started at.
            let start = response
                .metadata()
                .get(START_REVISION_HEADER)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse().ok());
            match start {
                Some(start) => after_revision = Some(start),
                None => eprintln!(
                    "ipamctl: the server did not say which revision the watch starts after; \
                     a reconnect before the first event may miss changes"
                ),
            }
        }
        let mut stream = response.into_inner();
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    after_revision = Some(event.revision);
                    print_event(event, json);
                }
                Ok(None) => break,
                Err(status) => {
                    let resume = after_revision.map_or("live".to_string(), |after| format!("after revision {after}"));
                    eprintln!("ipamctl: stream ended: {}; resuming {resume}", describe(&status));
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
        }
    }
}

fn print_event(event: api::ServiceBindingEvent, json: bool) {
    let kind = event
        .kind()
        .as_str_name()
        .trim_start_matches("SERVICE_BINDING_EVENT_KIND_")
        .to_string();
    let binding = event.binding.unwrap_or_default();
    if json {
        println!(
            "{}",
            serde_json::json!({"revision": event.revision, "kind": kind, "binding": binding_json(&binding)})
        );
    } else {
        let state = binding_json(&binding)["state"].as_str().unwrap_or_default().to_string();
        println!(
            "{:>8}  {kind:<26}  {:<20}  {:<13}  {state:<12}  {}",
            event.revision, binding.cidr, binding.service_name, binding.id
        );
    }
}
