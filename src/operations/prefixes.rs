//! Prefixes: onboard, read, list, describe, offboard.

use super::{AppContext, ListPage, Listed, authorize, page_token, run, unexpected};
use crate::auth::{Caller, Permission};
use crate::domain::error::AllFields;
use crate::domain::{AccountId, Command, Error, Outcome, Prefix, PrefixId, fields};

/// A prefix to onboard, as the caller sent it.
#[derive(Clone, Copy, Debug)]
pub struct NewPrefix<'a> {
    pub account_id: &'a str,
    pub cidr: &'a str,
    pub asn: Option<u32>,
    pub description: &'a str,
    /// Check and answer without creating anything.
    pub validate_only: bool,
}

pub async fn create_prefix(app: &AppContext, caller: &Caller, new: NewPrefix<'_>) -> Result<Prefix, Error> {
    authorize(caller, Permission::PrefixesEdit, new.account_id)?;
    let (account_id, cidr, description) = (
        fields::account_id("account_id", new.account_id),
        fields::prefix_cidr("cidr", new.cidr),
        fields::description("description", new.description),
    )
        .all_fields()?;
    let command = Command::CreatePrefix {
        id: PrefixId::generate(),
        account_id,
        cidr,
        asn: new.asn,
        description,
    };
    prefix_of(run(app, command, caller.actor(), new.validate_only).await?)
}

pub fn get_prefix(app: &AppContext, caller: &Caller, account_id: &str, prefix_id: &str) -> Result<Prefix, Error> {
    authorize(caller, Permission::PrefixesRead, account_id)?;
    let (account_id, prefix_id) = (
        fields::account_id("account_id", account_id),
        fields::prefix_id("prefix_id", prefix_id),
    )
        .all_fields()?;
    let model = app.engine()?.projections().read();
    model.state.prefix(account_id, prefix_id).cloned()
}

pub fn list_prefixes(
    app: &AppContext,
    caller: &Caller,
    account_id: &str,
    page: ListPage<'_>,
) -> Result<Listed<Prefix>, Error> {
    authorize(caller, Permission::PrefixesRead, account_id)?;
    let (account_id, size) = (fields::account_id("account_id", account_id), page.size()).all_fields()?;
    let scope = prefixes_scope(&account_id);
    let after = page_token::decode(&scope, "page_token", page.token())?;
    let model = app.engine()?.projections().read();
    let page = model.state.list_prefixes(account_id, after, size);
    Ok(Listed::of(page, &scope, model.head))
}

/// Sets the description; `None` changes nothing (and appends nothing) but still answers with
/// the prefix, after the same checks.
pub async fn update_prefix(
    app: &AppContext,
    caller: &Caller,
    account_id: &str,
    prefix_id: &str,
    description: Option<&str>,
    validate_only: bool,
) -> Result<Prefix, Error> {
    authorize(caller, Permission::PrefixesEdit, account_id)?;
    let (account_id, prefix_id, description) = (
        fields::account_id("account_id", account_id),
        fields::prefix_id("prefix_id", prefix_id),
        description.map_or(Ok(None), |text| fields::description("description", text).map(Some)),
    )
        .all_fields()?;
    let Some(description) = description else {
        let model = app.engine()?.projections().read();
        return model.state.prefix(account_id, prefix_id).cloned();
    };
    let command = Command::UpdatePrefix {
        account_id,
        prefix_id,
        description,
    };
    prefix_of(run(app, command, caller.actor(), validate_only).await?)
}

pub async fn delete_prefix(
    app: &AppContext,
    caller: &Caller,
    account_id: &str,
    prefix_id: &str,
    validate_only: bool,
) -> Result<PrefixId, Error> {
    authorize(caller, Permission::PrefixesEdit, account_id)?;
    let (account_id, prefix_id) = (
        fields::account_id("account_id", account_id),
        fields::prefix_id("prefix_id", prefix_id),
    )
        .all_fields()?;
    let command = Command::DeletePrefix { account_id, prefix_id };
    match run(app, command, caller.actor(), validate_only).await? {
        Outcome::PrefixDeleted(id) => Ok(id),
        other => Err(unexpected(other)),
    }
}

fn prefix_of(outcome: Outcome) -> Result<Prefix, Error> {
    match outcome {
        Outcome::Prefix(prefix) => Ok(prefix),
        other => Err(unexpected(other)),
    }
}

fn prefixes_scope(account_id: &AccountId) -> page_token::ListScope<'_> {
    page_token::ListScope {
        list: "prefixes",
        scope: account_id.as_bytes(),
    }
}
