//! `ipamctl services`, and the service names `--service` accepts.

use crate::connection::Transport;
use ipam_bindings::domain::Service;
use ipam_bindings::pb::api;
use ipam_bindings::pb::api::services_client::ServicesClient;

use crate::connection::describe;
use crate::output::{self, Format};

pub async fn run(channel: Transport, account_id: String, format: Format) -> Result<(), String> {
    let services = ServicesClient::new(channel)
        .list_services(api::ListServicesRequest { account_id })
        .await
        .map_err(|status| describe(&status))?
        .into_inner()
        .services;
    let mut table = output::Table::new(vec!["ID", "NAME"]);
    for service in services {
        if format == Format::Json {
            println!("{}", serde_json::json!({"id": service.id, "name": service.name}));
        }
        table.push(vec![service.id, service.name]);
    }
    if format == Format::Table {
        println!("{}", table.render());
    }
    Ok(())
}

/// The id of the service a person named (see [`Service::from_name`]); an unknown name is an
/// error listing the valid ones.
pub fn resolve(name_or_id: &str) -> Result<String, String> {
    match Service::from_name(name_or_id) {
        Some(service) => Ok(service.id().to_string()),
        None => {
            let valid: Vec<String> = Service::ALL
                .iter()
                .map(|service| format!("\"{}\" ({})", service.name(), service.slug()))
                .collect();
            Err(format!(
                "unknown service {name_or_id:?}; valid services: {} (or a service id)",
                valid.join(", ")
            ))
        }
    }
}
