//! `ipamctl preview ...` (what a binding change would do to traffic) and `ipamctl routes ...`
//! (the effective routing table, and its changes as they happen).

use ipam_bindings::pb::api;
use ipam_bindings::pb::api::routing_client::RoutingClient;
use serde_json::json;

use super::services;
use crate::cli::{PreviewCommand, RoutesCommand};
use crate::connection::{Transport, describe};
use crate::output::{self, Format};

fn binding_label(binding: &Option<api::ServiceBinding>) -> String {
    match binding {
        None => "-".into(),
        Some(binding) if binding.id.is_empty() => format!("{} (new)", binding.service_name),
        Some(binding) => format!("{} {}", binding.service_name, binding.id),
    }
}

pub async fn preview(
    channel: Transport,
    account_id: String,
    command: PreviewCommand,
    format: Format,
) -> Result<(), String> {
    use api::preview_change_request::Change;
    let change = match command {
        PreviewCommand::Create { prefix, cidr, service } => {
            Change::CreateServiceBinding(api::CreateServiceBindingRequest {
                account_id,
                prefix_id: prefix,
                cidr,
                service_id: services::resolve(&service)?,
                ..Default::default()
            })
        }
        PreviewCommand::Delete { prefix, id } => Change::DeleteServiceBinding(api::DeleteServiceBindingRequest {
            account_id,
            prefix_id: prefix,
            binding_id: id,
            validate_only: false,
        }),
    };
    let request = api::PreviewChangeRequest { change: Some(change) };
    let answer = RoutingClient::new(channel)
        .preview_change(request)
        .await
        .map_err(|status| describe(&status))?
        .into_inner();
    if format == Format::Json {
        for change in &answer.changes {
            let binding = |b: &Option<api::ServiceBinding>| b.as_ref().map(output::binding_json);
            println!(
                "{}",
                json!({"first_address": change.first_address, "last_address": change.last_address,
                       "cidrs": change.cidrs, "before": binding(&change.before), "after": binding(&change.after)})
            );
        }
        println!(
            "{}",
            json!({"revision": answer.revision, "addresses_affected": answer.addresses_affected})
        );
        return Ok(());
    }
    let mut table = output::Table::new(vec!["FIRST", "LAST", "CIDRS", "BEFORE", "AFTER"]);
    for change in &answer.changes {
        table.push(vec![
            change.first_address.clone(),
            change.last_address.clone(),
            change.cidrs.join(" "),
            binding_label(&change.before),
            binding_label(&change.after),
        ]);
    }
    println!("{}", table.render());
    println!(
        "{} addresses would move (at revision {})",
        answer.addresses_affected, answer.revision
    );
    Ok(())
}

fn route_json(route: &api::Route) -> serde_json::Value {
    json!({"first_address": route.first_address, "last_address": route.last_address, "cidrs": route.cidrs,
           "service_name": route.service_name, "service_id": route.service_id, "binding_id": route.binding_id,
           "prefix_id": route.prefix_id, "account_id": route.account_id})
}

fn route_row(sign: &str, route: &api::Route) -> Vec<String> {
    vec![
        sign.into(),
        route.first_address.clone(),
        route.last_address.clone(),
        route.cidrs.join(" "),
        route.service_name.clone(),
        route.binding_id.clone(),
        route.account_id.clone(),
    ]
}

const ROUTE_HEADER: [&str; 7] = ["", "FIRST", "LAST", "CIDRS", "SERVICE", "BINDING", "ACCOUNT"];

/// The table of `account_id` (every account when empty), and the revision it was read at.
async fn export(
    client: &mut RoutingClient<Transport>,
    account_id: &str,
    active_only: bool,
) -> Result<(i64, Vec<api::Route>), String> {
    let request = api::ExportRoutesRequest {
        account_id: account_id.into(),
        active_only,
    };
    let mut stream = client
        .export_routes(request)
        .await
        .map_err(|status| describe(&status))?
        .into_inner();
    let (mut revision, mut routes) = (0, Vec::new());
    while let Some(message) = stream.message().await.map_err(|status| describe(&status))? {
        revision = message.revision;
        routes.extend(message.routes);
    }
    Ok((revision, routes))
}

pub async fn routes(
    channel: Transport,
    account_id: String,
    command: RoutesCommand,
    format: Format,
) -> Result<(), String> {
    let mut client = RoutingClient::new(channel);
    match command {
        RoutesCommand::Export { active_only } => {
            let (revision, routes) = export(&mut client, &account_id, active_only).await?;
            if format == Format::Json {
                routes.iter().for_each(|route| println!("{}", route_json(route)));
                println!("{}", json!({"revision": revision}));
            } else {
                let mut table = output::Table::new(ROUTE_HEADER[1..].to_vec());
                routes
                    .iter()
                    .for_each(|route| table.push(route_row("", route)[1..].to_vec()));
                println!("{}", table.render());
                println!("{} routes at revision {revision}", routes.len());
            }
            Ok(())
        }
        RoutesCommand::Watch {
            after_revision,
            active_only,
        } => {
            let after_revision = match after_revision {
                Some(revision) => revision,
                // From now: the head an export reads.
                None => export(&mut client, &account_id, active_only).await?.0,
            };
            let request = api::WatchRoutesRequest {
                after_revision,
                account_id,
                active_only,
            };
            let mut stream = client
                .watch_routes(request)
                .await
                .map_err(|status| describe(&status))?
                .into_inner();
            if format == Format::Table {
                eprintln!("watching the table's changes after revision {after_revision}");
            }
            while let Some(delta) = stream.message().await.map_err(|status| describe(&status))? {
                if format == Format::Json {
                    let routes = |routes: &[api::Route]| routes.iter().map(route_json).collect::<Vec<_>>();
                    println!(
                        "{}",
                        json!({"revision": delta.revision, "removed": routes(&delta.removed), "added": routes(&delta.added)})
                    );
                    continue;
                }
                let mut table = output::Table::new(ROUTE_HEADER.to_vec());
                delta.removed.iter().for_each(|route| table.push(route_row("-", route)));
                delta.added.iter().for_each(|route| table.push(route_row("+", route)));
                println!("revision {}\n{}", delta.revision, table.render());
            }
            Ok(())
        }
    }
}
