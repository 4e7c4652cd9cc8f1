//! `ipamctl rollout ...`: what an external provisioner does (`--rollout external` servers).
//! `watch` is the list-then-watch loop: the backlog from the lists, then every new
//! PROVISIONING binding from a watch opened before the lists were read, each printed once.
//! `complete` reports one binding propagated.

use std::collections::{HashMap, HashSet};

use ipam_bindings::pb::api;
use ipam_bindings::pb::api::prefixes_client::PrefixesClient;
use ipam_bindings::pb::api::rollout_client::RolloutClient;
use ipam_bindings::pb::api::service_bindings_client::ServiceBindingsClient;

use super::collect_pages;
use crate::cli::RolloutCommand;
use crate::connection::{Transport, describe};
use crate::output::{self, Format};

pub async fn run(
    channel: Transport,
    account_id: String,
    command: RolloutCommand,
    format: Format,
) -> Result<(), String> {
    match command {
        RolloutCommand::Complete { prefix, id } => {
            let request = api::CompleteProvisioningRequest {
                account_id,
                prefix_id: prefix,
                binding_id: id,
            };
            let binding = RolloutClient::new(channel)
                .complete_provisioning(request)
                .await
                .map_err(|status| describe(&status))?
                .into_inner();
            output::print(&[binding], format);
            Ok(())
        }
        RolloutCommand::Watch => watch(channel, account_id, format).await,
    }
}

fn is_provisioning(binding: &api::ServiceBinding) -> bool {
    binding
        .provisioning
        .is_some_and(|p| p.state == api::ProvisioningState::Provisioning as i32)
}

fn print_pending(binding: &api::ServiceBinding, format: Format) {
    match format {
        Format::Json => println!("{}", output::binding_json(binding)),
        Format::Table => println!(
            "PROVISIONING {} {} {} (prefix {})",
            binding.id, binding.cidr, binding.service_name, binding.prefix_id
        ),
    }
}

async fn watch(channel: Transport, account_id: String, format: Format) -> Result<(), String> {
    let fail = |status: tonic::Status| describe(&status);
    let mut bindings = ServiceBindingsClient::new(channel.clone());
    // Registered first: whatever changes while the lists are read is in the stream.
    let request = api::WatchServiceBindingsRequest {
        account_id: account_id.clone(),
        ..Default::default()
    };
    let mut stream = bindings
        .watch_service_bindings(request)
        .await
        .map_err(fail)?
        .into_inner();
    let prefixes = collect_pages(true, String::new(), |page_token| {
        let mut client = PrefixesClient::new(channel.clone());
        let request = api::ListPrefixesRequest {
            account_id: account_id.clone(),
            page_size: 0,
            page_token,
        };
        async move {
            let page = client.list_prefixes(request).await.map_err(fail)?.into_inner();
            Ok((page.prefixes, page.next_page_token))
        }
    })
    .await?
    .0;
    // Per prefix, the revision its list reflects: the stream's events up to it are in the list.
    let mut listed_at = HashMap::new();
    let mut printed = HashSet::new();
    for prefix in prefixes {
        let mut revision = None;
        let mut page_token = String::new();
        loop {
            let request = api::ListServiceBindingsRequest {
                account_id: account_id.clone(),
                prefix_id: prefix.id.clone(),
                page_size: 0,
                page_token,
            };
            let page = bindings
                .list_service_bindings(request)
                .await
                .map_err(fail)?
                .into_inner();
            revision.get_or_insert(page.revision);
            for binding in page.bindings.iter().filter(|binding| is_provisioning(binding)) {
                if printed.insert(binding.id.clone()) {
                    print_pending(binding, format);
                }
            }
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        listed_at.insert(prefix.id, revision.unwrap_or(0));
    }
    while let Some(event) = stream.message().await.map_err(fail)? {
        let Some(binding) = event.binding else { continue };
        let in_a_list = listed_at
            .get(&binding.prefix_id)
            .is_some_and(|listed| event.revision <= *listed);
        let created = event.kind == api::ServiceBindingEventKind::Created as i32;
        if !in_a_list && created && is_provisioning(&binding) && printed.insert(binding.id.clone()) {
            print_pending(&binding, format);
        }
    }
    Ok(())
}
