//! `ipamctl bindings ...`.

use crate::connection::Transport;
use ipam_bindings::pb::api;
use ipam_bindings::pb::api::service_bindings_client::ServiceBindingsClient;

use super::{collect_pages, print_deleted, print_next_token, services};
use crate::cli::BindingCommand;
use crate::connection::describe;
use crate::output::{self, Format};

pub async fn run(
    channel: Transport,
    account_id: String,
    command: BindingCommand,
    format: Format,
) -> Result<(), String> {
    let mut client = ServiceBindingsClient::new(channel);
    let fail = |status: tonic::Status| describe(&status);
    let binding = match command {
        BindingCommand::Create {
            prefix,
            cidr,
            service,
            request_id,
            validate_only,
        } => {
            let request = api::CreateServiceBindingRequest {
                account_id,
                prefix_id: prefix,
                cidr,
                service_id: services::resolve(&service)?,
                request_id,
                validate_only,
            };
            client.create_service_binding(request).await.map_err(fail)?.into_inner()
        }
        BindingCommand::Get { prefix, id } => {
            let request = api::GetServiceBindingRequest {
                account_id,
                prefix_id: prefix,
                binding_id: id,
            };
            client.get_service_binding(request).await.map_err(fail)?.into_inner()
        }
        BindingCommand::Delete {
            prefix,
            id,
            validate_only,
        } => {
            let request = api::DeleteServiceBindingRequest {
                account_id,
                prefix_id: prefix,
                binding_id: id,
                validate_only,
            };
            let deleted = client.delete_service_binding(request).await.map_err(fail)?.into_inner();
            print_deleted(&deleted.id, format);
            return Ok(());
        }
        BindingCommand::List {
            prefix,
            page_size,
            page_token,
        } => {
            let follow = page_size.is_none() && page_token.is_none();
            let (all, token) = collect_pages(follow, page_token.unwrap_or_default(), |page_token| {
                let mut client = client.clone();
                let request = api::ListServiceBindingsRequest {
                    account_id: account_id.clone(),
                    prefix_id: prefix.clone(),
                    page_size: page_size.unwrap_or(0),
                    page_token,
                };
                async move {
                    let page = client.list_service_bindings(request).await.map_err(fail)?.into_inner();
                    Ok((page.bindings, page.next_page_token))
                }
            })
            .await?;
            output::print(&all, format);
            print_next_token(&token, follow, format);
            return Ok(());
        }
    };
    output::print(&[binding], format);
    Ok(())
}
