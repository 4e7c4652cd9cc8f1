//! The routing table as a whole over gRPC: PreviewChange's answer, ExportRoutes' chunks and
//! WatchRoutes' stream of deltas (read from the projections' route history, which a watcher
//! follows by revision: the commit feed only wakes it, so a slow reader is caught up from the
//! history, never dropped, until it falls behind what the history keeps). Every watcher sends
//! a delta's one shared wire form ([`EncodedMessages`], by revision and table).

use std::collections::VecDeque;
use std::sync::Arc;

use prost::Message;
use prost::bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::Status;

use super::{AppContext, EncodedMessages, convert};
use crate::auth::{Caller, Permission};
use crate::domain::state::{RangeChange, RouteTo};
use crate::domain::{AccountId, Error, Reason};
use crate::engine::{CommittedGroup, Engine};
use crate::operations::{self, Interruption, Interruptions, Preview};
use crate::pb::api;
use crate::projection::route_history::RouteDelta;

/// Routes per ExportRoutes message.
pub const EXPORT_CHUNK: usize = 1000;

pub fn route(route: &RouteTo) -> api::Route {
    api::Route {
        first_address: route.range.first_address().to_string(),
        last_address: route.range.last_address().to_string(),
        cidrs: route.range.cidrs().iter().map(ToString::to_string).collect(),
        prefix_id: route.prefix_id.to_string(),
        account_id: route.account_id.to_string(),
        binding_id: route.binding_id.to_string(),
        service_id: route.service.id().to_string(),
        service_name: route.service.name().to_string(),
    }
}

/// The preview's wire form; a binding a create would make has no id and no timestamps yet.
pub fn preview(preview: &Preview, creating: bool) -> api::PreviewChangeResponse {
    let change = |change: &RangeChange| {
        let mut after = change.after.as_ref().map(convert::binding);
        if let (true, Some(after)) = (creating, &mut after) {
            convert::as_not_yet_created(&mut after.id, [&mut after.created_at, &mut after.modified_at]);
        }
        api::RouteChange {
            first_address: change.range.first_address().to_string(),
            last_address: change.range.last_address().to_string(),
            cidrs: change.range.cidrs().iter().map(ToString::to_string).collect(),
            before: change.before.as_ref().map(convert::binding),
            after,
        }
    };
    api::PreviewChangeResponse {
        revision: preview.revision as i64,
        changes: preview.changes.iter().map(change).collect(),
        addresses_affected: crate::domain::routes::count_addresses(preview.changes.iter().map(|change| change.range)),
    }
}

/// ExportRoutes' messages: the table in chunks, each with the same revision.
pub fn export_messages(
    revision: u64,
    routes: Vec<RouteTo>,
) -> impl Stream<Item = Result<api::ExportRoutesResponse, Status>> + Send + use<> {
    // Converted a chunk at a time as the client reads: the table is held once, compactly.
    let n_messages = routes.len().div_ceil(EXPORT_CHUNK).max(1);
    futures_util::stream::iter((0..n_messages).map(move |index| {
        let start = (index * EXPORT_CHUNK).min(routes.len());
        let chunk = routes[start..(start + EXPORT_CHUNK).min(routes.len())].iter();
        // An empty table is one message with no routes (the revision still says what was read).
        Ok(api::ExportRoutesResponse {
            revision: revision as i64,
            routes: chunk.map(route).collect(),
        })
    }))
}

/// Checks the request and the caller, and returns the stream of deltas after
/// `after_revision`, each sent in its shared form from `deltas`.
pub async fn watch(
    app: &AppContext,
    deltas: &Arc<EncodedMessages>,
    caller: Caller,
    request: api::WatchRoutesRequest,
) -> Result<impl Stream<Item = Result<api::RouteDelta, Status>> + Send + use<>, Error> {
    // From here on, a policy reload makes the stream check its caller again.
    let interruptions = app.interruptions();
    let account_id = operations::authorize_table(&caller, &request.account_id)?;
    let after = u64::try_from(request.after_revision).map_err(|_| {
        Error::field(
            Reason::RevisionOutOfRange,
            "after_revision",
            "after_revision is negative",
        )
    })?;
    let engine = Arc::clone(app.engine()?);
    engine.catch_up_for(after).await;
    let building = Arc::clone(&engine);
    tokio::task::spawn_blocking(move || building.keep_route_history())
        .await
        .map_err(|error| Error::new(Reason::Internal, format!("the route history task failed: {error}")))??;
    // Subscribe first: every group applied after the reads below wakes the watcher.
    let feed = engine.subscribe();
    {
        let model = engine.projections().read();
        if after > model.head {
            return Err(Error::field(
                Reason::RevisionOutOfRange,
                "after_revision",
                format!(
                    "after_revision {after} is beyond this server's head revision {}: export again",
                    model.head
                ),
            ));
        }
        let served_from = model
            .route_history
            .as_ref()
            .map_or(model.head, |history| history.served_from());
        if after < served_from {
            return Err(history_unavailable(after, served_from));
        }
    }
    let watcher = RouteWatcher {
        interruptions,
        caller,
        engine,
        deltas: Arc::clone(deltas),
        account_id,
        active_only: request.active_only,
        cursor: after,
        pending: VecDeque::new(),
        feed,
        ended: false,
    };
    Ok(futures_util::stream::unfold(watcher, RouteWatcher::next))
}

fn history_unavailable(after: u64, served_from: u64) -> Error {
    Error::field(
        Reason::RoutesHistoryUnavailable,
        "after_revision",
        format!(
            "the route history this server keeps starts after revision {served_from}, not {after}: export the table again and watch from its revision"
        ),
    )
}

struct RouteWatcher {
    engine: Arc<Engine>,
    caller: Caller,
    /// The deltas' wire forms, shared by every watcher.
    deltas: Arc<EncodedMessages>,
    /// Shutdown (the stream ends) and policy reloads (the caller is checked again).
    interruptions: Interruptions,
    account_id: Option<AccountId>,
    active_only: bool,
    /// Every delta up to this revision has been queued or skipped.
    cursor: u64,
    pending: VecDeque<api::RouteDelta>,
    feed: tokio::sync::broadcast::Receiver<CommittedGroup>,
    ended: bool,
}

impl RouteWatcher {
    async fn next(mut self) -> Option<(Result<api::RouteDelta, Status>, RouteWatcher)> {
        loop {
            if let Some(delta) = self.pending.pop_front() {
                return Some((Ok(delta), self));
            }
            if self.ended {
                return None;
            }
            if let Err(error) = self.fill().await {
                self.ended = true;
                return Some((Err(Status::from(error)), self));
            }
        }
    }

    fn wanted(&self, delta: &RouteDelta) -> bool {
        let account = delta
            .removed
            .iter()
            .chain(&delta.added)
            .next()
            .map(|route| route.account_id);
        delta.active_only == self.active_only && self.account_id.is_none_or(|wanted| account == Some(wanted))
    }

    /// Queues the deltas after the cursor; when there are none, waits for the next commit.
    async fn fill(&mut self) -> Result<(), Error> {
        {
            let model = self.engine.projections().read();
            let Some(history) = &model.route_history else {
                return Err(Error::new(Reason::Internal, "the route history is not kept"));
            };
            if self.cursor < history.served_from() {
                return Err(history_unavailable(self.cursor, history.served_from()));
            }
            // Only taken here: converting them to the wire (text ids and CIDRs) waits until
            // the lock is released, so the writer never waits for it.
            let to_send: Vec<Arc<RouteDelta>> = (history.after(self.cursor))
                .filter(|delta| self.wanted(delta))
                .cloned()
                .collect();
            self.cursor = model.head;
            drop(model);
            let encoded = to_send
                .iter()
                .filter_map(|delta| self.deltas.get_or_encode(shared_key(delta), || Some(encode(delta))));
            self.pending.extend(encoded.map(api::RouteDelta::encoded));
        }
        if !self.pending.is_empty() {
            return Ok(());
        }
        tokio::select! {
            received = self.feed.recv() => match received {
                Ok(_) | Err(RecvError::Lagged(_)) => Ok(()),
                Err(RecvError::Closed) => Err(shutting_down()),
            },
            interruption = self.interruptions.wait() => match interruption {
                Interruption::Stopping => Err(shutting_down()),
                Interruption::PolicyChanged => {
                    self.caller.require_account_or(self.account_id.as_ref(), Permission::RoutingLookup)
                }
            },
        }
    }
}

/// A delta's key among the shared wire forms: one table's delta per revision at most.
fn shared_key(delta: &RouteDelta) -> u64 {
    delta.revision * 2 + u64::from(delta.active_only)
}

fn encode(delta: &RouteDelta) -> Bytes {
    let message = api::RouteDelta::new(
        delta.revision as i64,
        delta.removed.iter().map(route).collect(),
        delta.added.iter().map(route).collect(),
    );
    Bytes::from(message.encode_to_vec())
}

fn shutting_down() -> Error {
    Error::new(
        Reason::NotReady,
        "the server is shutting down; reconnect and resume from your last revision",
    )
}
