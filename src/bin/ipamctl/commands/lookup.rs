//! `ipamctl lookup`: where addresses go, in batches of the API's maximum (asked in the
//! COMPACT view: each binding comes once, the addresses are the ones sent).

use std::io::BufRead;

use crate::connection::Transport;
use ipam_bindings::pb::api;
use ipam_bindings::pb::api::routing_client::RoutingClient;

use crate::connection::describe;
use crate::output::{self, Format, binding_json};

/// Most addresses the server takes in one LookupAddresses call.
const BATCH: usize = 10_000;

pub async fn run(channel: Transport, addresses: Vec<String>, active_only: bool, format: Format) -> Result<(), String> {
    let fail = |status: tonic::Status| describe(&status);
    let addresses = if addresses.is_empty() || addresses == ["-"] {
        std::io::stdin()
            .lock()
            .lines()
            .map_while(Result::ok)
            .map(|line| line.trim().to_string())
            .filter(|line| !line.is_empty())
            .collect()
    } else {
        addresses
    };
    let mut client = RoutingClient::new(channel);
    let mut table = output::Table::new(vec![
        "ADDRESS", "FOUND", "CIDR", "SERVICE", "STATE", "PREFIX", "ACCOUNT",
    ]);
    for chunk in addresses.chunks(BATCH) {
        let request = api::LookupAddressesRequest::new(chunk, active_only, api::LookupView::Compact);
        let response = client.lookup_addresses(request).await.map_err(fail)?.into_inner();
        let results = (response.results_for(chunk)).map_err(|why| format!("the server's answer is unusable: {why}"))?;
        for result in results {
            let binding = result.binding.as_ref();
            if format == Format::Json {
                println!(
                    "{}",
                    serde_json::json!({"address": result.address, "found": result.found, "prefix_id": result.prefix_id,
                        "account_id": result.account_id, "binding": binding.map(binding_json)})
                );
            }
            table.push(vec![
                result.address.clone(),
                result.found.to_string(),
                binding.map(|b| b.cidr.clone()).unwrap_or_default(),
                binding.map(|b| b.service_name.clone()).unwrap_or_default(),
                binding
                    .map(|b| binding_json(b)["state"].as_str().unwrap_or_default().to_string())
                    .unwrap_or_default(),
                result.prefix_id.clone(),
                result.account_id.clone(),
            ]);
        }
    }
    if format == Format::Table {
        println!("{}", table.render());
    }
    Ok(())
}
