//! `ipamctl prefixes ...`.

use crate::connection::Transport;
use ipam_bindings::pb::api;
use ipam_bindings::pb::api::prefixes_client::PrefixesClient;

use super::{collect_pages, print_deleted, print_next_token};
use crate::cli::PrefixCommand;
use crate::connection::describe;
use crate::output::{self, Format};

pub async fn run(channel: Transport, account_id: String, command: PrefixCommand, format: Format) -> Result<(), String> {
    let mut client = PrefixesClient::new(channel);
    let fail = |status: tonic::Status| describe(&status);
    let prefix = match command {
        PrefixCommand::Create {
            cidr,
            asn,
            description,
            validate_only,
        } => {
            let request = api::CreatePrefixRequest {
                account_id,
                cidr,
                asn,
                description,
                validate_only,
            };
            client.create_prefix(request).await.map_err(fail)?.into_inner()
        }
        PrefixCommand::Get { id } => {
            let request = api::GetPrefixRequest {
                account_id,
                prefix_id: id,
            };
            client.get_prefix(request).await.map_err(fail)?.into_inner()
        }
        PrefixCommand::Update {
            id,
            description,
            validate_only,
        } => {
            let request = api::UpdatePrefixRequest {
                account_id,
                prefix_id: id,
                description,
                validate_only,
            };
            client.update_prefix(request).await.map_err(fail)?.into_inner()
        }
        PrefixCommand::Delete { id, validate_only } => {
            let request = api::DeletePrefixRequest {
                account_id,
                prefix_id: id,
                validate_only,
            };
            let deleted = client.delete_prefix(request).await.map_err(fail)?.into_inner();
            print_deleted(&deleted.id, format);
            return Ok(());
        }
        PrefixCommand::List { page_size, page_token } => {
            let follow = page_size.is_none() && page_token.is_none();
            let (all, token) = collect_pages(follow, page_token.unwrap_or_default(), |page_token| {
                let mut client = client.clone();
                let request = api::ListPrefixesRequest {
                    account_id: account_id.clone(),
                    page_size: page_size.unwrap_or(0),
                    page_token,
                };
                async move {
                    let page = client.list_prefixes(request).await.map_err(fail)?.into_inner();
                    Ok((page.prefixes, page.next_page_token))
                }
            })
            .await?;
            output::print(&all, format);
            print_next_token(&token, follow, format);
            return Ok(());
        }
    };
    output::print(&[prefix], format);
    Ok(())
}
