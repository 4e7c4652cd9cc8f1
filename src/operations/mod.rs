//! The operations both surfaces offer (gRPC in [`crate::api`], the v4 JSON API in
//! [`crate::rest`]), over one engine: each takes the request's fields as the caller sent
//! them, checks their shape (collecting every violation), then runs the command or the query
//! and returns domain values or a domain error. A surface only converts: its wire form into
//! these inputs, the results back, and errors into its own status (`api::status`,
//! `rest::error`), both from the one reason table in [`crate::domain::error`].

mod bindings;
pub mod interruptions;
pub mod page_token;
mod prefixes;
mod rollout;
mod routes;

use std::sync::{Arc, OnceLock};

pub use bindings::{NewBinding, create_binding, delete_binding, get_binding, list_bindings};
pub use interruptions::{Interrupter, Interruption, Interruptions};
pub use prefixes::{NewPrefix, create_prefix, delete_prefix, get_prefix, list_prefixes, update_prefix};
pub use rollout::complete_provisioning;
pub use routes::{Preview, PreviewOf, authorize_table, export_routes, preview_change};

use crate::auth::{Caller, Need, Permission};
use crate::config::RolloutMode;
use crate::domain::{Actor, Command, Error, Outcome, Reason, Service, fields};
use crate::engine::Engine;
use crate::metrics::Metrics;

/// What every surface shares: the engine, once the projections are loaded, what interrupts
/// open streams (shutdown, policy reloads), and the metrics.
#[derive(Clone)]
pub struct AppContext {
    engine: Arc<OnceLock<Arc<Engine>>>,
    interrupter: Interrupter,
    metrics: Arc<Metrics>,
    rollout: RolloutMode,
}

impl AppContext {
    pub fn new(interrupter: Interrupter, metrics: Arc<Metrics>, rollout: RolloutMode) -> AppContext {
        AppContext {
            engine: Arc::new(OnceLock::new()),
            interrupter,
            metrics,
            rollout,
        }
    }

    /// What turns bindings ACTIVE on this server.
    pub fn rollout(&self) -> RolloutMode {
        self.rollout
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn metrics_handle(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Makes the service ready: called once the projections are rebuilt.
    pub fn set_engine(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine);
    }

    /// The engine, or NOT_READY while the server is still loading.
    pub fn engine(&self) -> Result<&Arc<Engine>, Error> {
        self.engine
            .get()
            .ok_or_else(|| Error::new(Reason::NotReady, "the server is loading its data; retry shortly"))
    }

    /// A new stream's view of shutdown and policy reloads.
    pub fn interruptions(&self) -> Interruptions {
        self.interrupter.subscribe()
    }
}

/// Which part of a list to return.
#[derive(Clone, Copy, Debug)]
pub enum ListPage<'a> {
    /// Every item (the v4 JSON API has no paging).
    All,
    /// One page: at most `size` items (0: the default) after the `token`'s position.
    Page { size: i32, token: &'a str },
}

impl ListPage<'_> {
    /// How many items to return, checked.
    fn size(&self) -> Result<usize, Error> {
        match self {
            ListPage::All => Ok(usize::MAX),
            ListPage::Page { size, .. } => crate::domain::fields::page_size("page_size", *size),
        }
    }

    fn token(&self) -> &str {
        match self {
            ListPage::All => "",
            ListPage::Page { token, .. } => token,
        }
    }
}

/// One page of a list.
#[derive(Debug)]
pub struct Listed<T> {
    pub items: Vec<T>,
    /// The token of the next page; empty on the last one.
    pub next_page_token: String,
    /// The log's head when the page was read.
    pub revision: u64,
}

impl<T: Clone> Listed<T> {
    /// A page of the state's list under `scope`, read at revision `head`.
    fn of(page: crate::domain::state::Page<'_, T>, scope: &page_token::ListScope<'_>, head: u64) -> Listed<T> {
        Listed {
            items: page.items.into_iter().cloned().collect(),
            next_page_token: (page.next_after)
                .map(|key| page_token::encode(scope, key))
                .unwrap_or_default(),
            revision: head,
        }
    }
}

/// The order access control answers in: the account id's shape (a malformed one is left to
/// the field checks that follow, which name it), then the caller's permission on the account,
/// and only then every other field and the state (so a refusal says nothing of them).
pub fn authorize(caller: &Caller, permission: Permission, account_id: &str) -> Result<(), Error> {
    match fields::account_id("account_id", account_id) {
        Ok(account) => {
            // The call's span (and its trace) names the account.
            tracing::Span::current().record("account_id", tracing::field::display(&account));
            caller.require(Need::OnAccount(permission, &account))
        }
        Err(_) => Ok(()),
    }
}

/// The service catalog, as the account sees it (every account sees all of it).
pub fn list_services(caller: &Caller, account_id: &str) -> Result<&'static [Service], Error> {
    authorize(caller, Permission::PrefixesRead, account_id)?;
    fields::account_id("account_id", account_id)?;
    Ok(&Service::ALL)
}

/// Runs `command` for `caller`, or with `validate_only` only decides it (nothing appended).
///
/// The engine's round trip is boxed: it holds the command and its actor while it waits, and
/// every async caller above it would otherwise keep room for it (twice, in a block that
/// awaits a future it holds), so a create's call future was 6 KB, copied whole wherever it
/// was moved or boxed (docs/benchmarks.md, durable creates: the call's future).
async fn run(app: &AppContext, command: Command, actor: Actor, validate_only: bool) -> Result<Outcome, Error> {
    let engine = app.engine()?;
    if validate_only {
        return engine.validate(&command).map(|decision| decision.outcome);
    }
    Box::pin(engine.execute(command, actor)).await
}

/// The writer answered a command with an outcome of another kind: a bug, never the caller's.
pub(crate) fn unexpected(outcome: Outcome) -> Error {
    Error::new(Reason::Internal, format!("unexpected outcome {outcome:?}"))
}
