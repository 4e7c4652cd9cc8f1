//! Service bindings: bind a CIDR of a prefix to a service, read, list, delete.

use super::{AppContext, ListPage, Listed, authorize, page_token, run, unexpected};
use crate::auth::{Caller, Permission};
use crate::domain::error::AllFields;
use crate::domain::{AccountId, Binding, BindingId, Command, Error, Outcome, PrefixId, fields};

/// A binding to create, as the caller sent it.
#[derive(Clone, Copy, Debug)]
pub struct NewBinding<'a> {
    pub account_id: &'a str,
    pub prefix_id: &'a str,
    pub cidr: &'a str,
    pub service_id: &'a str,
    /// Makes a retry safe; empty for none.
    pub request_id: &'a str,
    /// The name the caller knows the request id by, for errors about it (`request_id` over
    /// gRPC, the `idempotency-key` header over REST).
    pub request_id_field: &'a str,
    /// Check and answer without creating anything (the request id is not remembered).
    pub validate_only: bool,
}

/// The command a create asks for, its fields checked (every bad one named).
pub(super) fn create_command(new: &NewBinding<'_>) -> Result<Command, Error> {
    let (account_id, prefix_id, cidr, service, request_id) = (
        fields::account_id("account_id", new.account_id),
        fields::prefix_id("prefix_id", new.prefix_id),
        fields::cidr("cidr", new.cidr),
        fields::service("service_id", new.service_id),
        fields::request_id(new.request_id_field, new.request_id),
    )
        .all_fields()?;
    Ok(Command::CreateBinding {
        id: BindingId::generate(),
        account_id,
        prefix_id,
        cidr,
        service,
        request_id,
    })
}

/// The command a delete asks for, its fields checked.
pub(super) fn delete_command(account_id: &str, prefix_id: &str, binding_id: &str) -> Result<Command, Error> {
    let (account_id, prefix_id, binding_id) = binding_ids(account_id, prefix_id, binding_id)?;
    Ok(Command::DeleteBinding {
        account_id,
        prefix_id,
        binding_id,
    })
}

pub async fn create_binding(app: &AppContext, caller: &Caller, new: NewBinding<'_>) -> Result<Binding, Error> {
    authorize(caller, Permission::PrefixesEdit, new.account_id)?;
    let command = create_command(&new)?;
    let request_id = match &command {
        Command::CreateBinding { request_id, .. } => request_id.as_deref(),
        _ => None,
    };
    let actor = caller.actor().with_request_id(request_id);
    match run(app, command, actor, new.validate_only).await {
        Ok(Outcome::Binding(binding)) => Ok(binding),
        Ok(other) => Err(unexpected(other)),
        Err(error) => Err(error.renamed_field("request_id", new.request_id_field)),
    }
}

pub fn get_binding(
    app: &AppContext,
    caller: &Caller,
    account_id: &str,
    prefix_id: &str,
    binding_id: &str,
) -> Result<Binding, Error> {
    authorize(caller, Permission::PrefixesRead, account_id)?;
    let (account_id, prefix_id, binding_id) = binding_ids(account_id, prefix_id, binding_id)?;
    let model = app.engine()?.projections().read();
    model.state.binding(account_id, prefix_id, binding_id).cloned()
}

pub fn list_bindings(
    app: &AppContext,
    caller: &Caller,
    account_id: &str,
    prefix_id: &str,
    page: ListPage<'_>,
) -> Result<Listed<Binding>, Error> {
    authorize(caller, Permission::PrefixesRead, account_id)?;
    let (account_id, prefix_id, size) = (
        fields::account_id("account_id", account_id),
        fields::prefix_id("prefix_id", prefix_id),
        page.size(),
    )
        .all_fields()?;
    let scope = bindings_scope(&prefix_id);
    let after = page_token::decode(&scope, "page_token", page.token())?;
    let model = app.engine()?.projections().read();
    model.state.prefix(account_id, prefix_id)?;
    let page = model.state.list_bindings(prefix_id, after, size);
    Ok(Listed::of(page, &scope, model.head))
}

pub async fn delete_binding(
    app: &AppContext,
    caller: &Caller,
    account_id: &str,
    prefix_id: &str,
    binding_id: &str,
    validate_only: bool,
) -> Result<BindingId, Error> {
    authorize(caller, Permission::PrefixesEdit, account_id)?;
    let command = delete_command(account_id, prefix_id, binding_id)?;
    match run(app, command, caller.actor(), validate_only).await? {
        Outcome::BindingDeleted(id) => Ok(id),
        other => Err(unexpected(other)),
    }
}

/// The ids that name one binding, checked together (every bad one named).
pub(super) fn binding_ids(
    account_id: &str,
    prefix_id: &str,
    binding_id: &str,
) -> Result<(AccountId, PrefixId, BindingId), Error> {
    (
        fields::account_id("account_id", account_id),
        fields::prefix_id("prefix_id", prefix_id),
        fields::binding_id("binding_id", binding_id),
    )
        .all_fields()
}

fn bindings_scope(prefix_id: &PrefixId) -> page_token::ListScope<'_> {
    page_token::ListScope {
        list: "bindings",
        scope: prefix_id.as_bytes(),
    }
}
