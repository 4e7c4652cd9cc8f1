//! WatchServiceBindings. A watch subscribes to the engine's commit feed *before* it answers,
//! then (with `after_revision`) replays matching events from the log, then follows the feed,
//! skipping anything at or below the last revision it passed on: no gap and no duplicate at
//! the seam. A watcher whose client reads slowly falls behind the feed's bounded buffer; it is
//! then caught up from the log and rejoins the feed, so it never holds more than a few events
//! in memory and never slows the writer or another watcher. Streams end with UNAVAILABLE at
//! shutdown, so clients reconnect elsewhere from their last revision. Every watcher sends an
//! event's one shared wire form ([`EncodedMessages`], by revision).

use std::collections::VecDeque;
use std::sync::Arc;

use prost::Message;
use prost::bytes::Bytes;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::Stream;
use tonic::Status;
use tracing::{debug, error};

use super::{AppContext, EncodedMessages, convert};
use crate::auth::{Caller, Permission};
use crate::domain::error::AllFields;
use crate::domain::{AccountId, BindingId, Change, Error, Event, PrefixId, Reason, fields};
use crate::engine::{CommittedGroup, Engine};
use crate::operations::{Interruption, Interruptions};
use crate::pb::api;

/// Events read from the log per blocking read during catch-up.
const CATCH_UP_CHUNK: usize = 1024;

/// Which events a watcher wants.
#[derive(Clone, Copy, Debug)]
struct Filter {
    account_id: Option<AccountId>,
    prefix_id: Option<PrefixId>,
    binding_id: Option<BindingId>,
}

impl Filter {
    fn matches(&self, change: &Change) -> bool {
        let Some(binding) = change.binding() else { return false };
        self.account_id.is_none_or(|id| id == binding.account_id)
            && self.prefix_id.is_none_or(|id| id == binding.prefix_id)
            && self.binding_id.is_none_or(|id| id == binding.id)
    }
}

fn parse_filter(request: &api::WatchServiceBindingsRequest) -> Result<Filter, Error> {
    let (account_id, prefix_id, binding_id) = (
        fields::optional(&request.account_id, |text| fields::account_id("account_id", text)),
        fields::optional(&request.prefix_id, |text| fields::prefix_id("prefix_id", text)),
        fields::optional(&request.binding_id, |text| fields::binding_id("binding_id", text)),
    )
        .all_fields()?;
    if account_id.is_none() {
        for (field, given) in [("prefix_id", prefix_id.is_some()), ("binding_id", binding_id.is_some())] {
            if given {
                return Err(Error::field(
                    Reason::FilterNeedsAccount,
                    field,
                    format!("a {field} filter needs an account_id"),
                ));
            }
        }
    }
    Ok(Filter {
        account_id,
        prefix_id,
        binding_id,
    })
}

/// The response header that carries the revision a watch starts after: every matching event
/// with a larger revision is delivered. A live watch (no `after_revision`) starts after the
/// head at the moment it was registered, so a client that reconnects with it misses nothing.
pub const START_REVISION_HEADER: &str = "x-watch-start-revision";

/// An opened watch: the revision it starts after and its stream.
pub struct Opened<S> {
    pub start_revision: u64,
    pub stream: S,
}

/// What a watch needs of its caller: read on its account, or `bindings.watch_all`.
fn require_watch(caller: &Caller, account_id: Option<&AccountId>) -> Result<(), Error> {
    caller.require_account_or(account_id, Permission::BindingsWatchAll)
}

/// Checks the caller and the request, registers the watcher and returns its stream.
pub async fn open(
    app: &AppContext,
    events: &Arc<EncodedMessages>,
    caller: Caller,
    request: api::WatchServiceBindingsRequest,
) -> Result<Opened<impl Stream<Item = Result<api::ServiceBindingEvent, Status>> + Send + use<>>, Error> {
    // From here on, a policy reload makes the stream check its caller again.
    let interruptions = app.interruptions();
    // The account's shape, then the permission, then the rest (as every call).
    if let Ok(account_id) = fields::optional(&request.account_id, |text| fields::account_id("account_id", text)) {
        require_watch(&caller, account_id.as_ref())?;
    }
    let filter = parse_filter(&request)?;
    let engine = Arc::clone(app.engine()?);
    if let Some(after) = request.after_revision {
        engine.catch_up_for(after).await;
    }
    // Subscribe first, then read the head: every event after the head is in the feed.
    let feed = engine.subscribe();
    let head = {
        let model = engine.projections().read();
        if let Some(account_id) = filter.account_id {
            if let Some(prefix_id) = filter.prefix_id {
                model.state.prefix(account_id, prefix_id)?;
            }
            if let Some(binding_id) = filter.binding_id {
                let binding = model.state.binding_by_id(binding_id).filter(|binding| {
                    binding.account_id == account_id && filter.prefix_id.is_none_or(|id| id == binding.prefix_id)
                });
                if binding.is_none() {
                    return Err(Error::field(
                        Reason::BindingNotFound,
                        "binding_id",
                        format!("binding {binding_id} not found"),
                    ));
                }
            }
        }
        model.head
    };
    let cursor = match request.after_revision {
        Some(after) if after > head => {
            return Err(Error::field(
                Reason::RevisionOutOfRange,
                "after_revision",
                format!(
                    "after_revision {after} is beyond this server's head revision {head}: relist, then watch from the revision the list returns"
                ),
            ));
        }
        Some(after) => after,
        None => head,
    };
    let open_streams = app.metrics().watch_streams.clone();
    open_streams.inc();
    let watcher = Watcher {
        open_streams,
        caller,
        engine,
        events: Arc::clone(events),
        filter,
        cursor,
        pending: VecDeque::new(),
        interruptions,
        feed,
        replay: request.after_revision.is_some(),
        ended: false,
    };
    Ok(Opened {
        start_revision: cursor,
        stream: futures_util::stream::unfold(watcher, Watcher::next),
    })
}

/// One watch stream. It is polled by the HTTP/2 stream that carries it (no task or channel
/// of its own in between: each message costs one wake-up less), and dropped the moment the
/// client goes away.
struct Watcher {
    /// The open-streams gauge, decremented when this watcher is dropped.
    open_streams: prometheus_client::metrics::gauge::Gauge,
    engine: Arc<Engine>,
    /// The events' wire forms, shared with every other watcher.
    events: Arc<EncodedMessages>,
    /// Who watches: re-checked when the access policy changes (a revoked grant ends the stream).
    caller: Caller,
    filter: Filter,
    /// The last revision passed on (or skipped as not matching).
    cursor: u64,
    /// Messages ready to send: at most one committed group or one catch-up chunk.
    pending: VecDeque<api::ServiceBindingEvent>,
    /// Shutdown (the stream ends) and policy reloads (the caller is checked again).
    interruptions: Interruptions,
    feed: tokio::sync::broadcast::Receiver<CommittedGroup>,
    /// Read the log, not the feed, on the next fill: set for a replay (`after_revision`) and
    /// while a catch-up has more to read.
    replay: bool,
    /// The final status was sent.
    ended: bool,
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.open_streams.dec();
    }
}

impl Watcher {
    /// The stream's next item: a message, the status that ends the stream, or the end.
    async fn next(mut self) -> Option<(Result<api::ServiceBindingEvent, Status>, Watcher)> {
        loop {
            if let Some(message) = self.pending.pop_front() {
                return Some((Ok(message), self));
            }
            if self.ended {
                return None;
            }
            if let Err(status) = self.fill().await {
                self.ended = true;
                return Some((Err(status), self));
            }
        }
    }

    /// Waits for more matching events (from the log while replaying or behind, else from the
    /// feed) and queues them; an error is the status that ends the stream.
    async fn fill(&mut self) -> Result<(), Status> {
        if std::mem::take(&mut self.replay) {
            return self.catch_up().await;
        }
        let received = tokio::select! {
            received = self.feed.recv() => received,
            interruption = self.interruptions.wait() => return match interruption {
                Interruption::Stopping => Err(shutting_down()),
                Interruption::PolicyChanged => {
                    require_watch(&self.caller, self.filter.account_id.as_ref()).map_err(Status::from)
                }
            },
        };
        match received {
            Ok(group) => {
                for event in group.iter() {
                    self.queue(event);
                }
                Ok(())
            }
            Err(RecvError::Lagged(missed)) => {
                debug!(
                    missed,
                    cursor = self.cursor,
                    "watcher fell behind the feed; catching up from the log"
                );
                self.catch_up().await
            }
            Err(RecvError::Closed) => Err(shutting_down()),
        }
    }

    /// Queues the next chunk of matching events after the cursor up to the projections' head
    /// (never past it: later records may not be durable yet) from the log; once the cursor is
    /// at the head, the feed takes over (it still holds what came after: it was subscribed
    /// first).
    async fn catch_up(&mut self) -> Result<(), Status> {
        if self.interruptions.stopping() {
            return Err(shutting_down());
        }
        let head = self.engine.projections().read().head;
        if self.cursor >= head {
            return Ok(());
        }
        let engine = Arc::clone(&self.engine);
        let after = self.cursor;
        let chunk = tokio::task::spawn_blocking(move || engine.history(after, head, CATCH_UP_CHUNK))
            .await
            .map_err(|error| Error::new(Reason::Internal, format!("the catch-up task failed: {error}")))
            .and_then(|read| read)
            .map_err(|error| {
                error!(%error, "reading the log for a watcher failed");
                Status::from(error)
            })?;
        for event in &chunk {
            self.queue(event);
        }
        // More to read: the next poll continues the catch-up before listening to the feed.
        self.replay = !chunk.is_empty() && self.cursor < head;
        Ok(())
    }

    fn queue(&mut self, event: &Event) {
        if event.revision <= self.cursor {
            return;
        }
        self.cursor = event.revision;
        if !self.filter.matches(&event.change) {
            return;
        }
        let encoded = (self.events).get_or_encode(event.revision, || {
            to_message(event).map(|message| Bytes::from(message.encode_to_vec()))
        });
        self.pending.extend(encoded.map(api::ServiceBindingEvent::encoded));
    }
}

fn shutting_down() -> Status {
    Status::from(Error::new(
        Reason::NotReady,
        "the server is shutting down; reconnect and resume from your last revision",
    ))
}

/// The wire form of a binding event; `None` for prefix events, which watchers never see.
fn to_message(event: &Event) -> Option<api::ServiceBindingEvent> {
    let (kind, binding) = match &event.change {
        Change::BindingCreated { binding, .. } => (api::ServiceBindingEventKind::Created, binding),
        Change::BindingProvisioningStateChanged(binding) => {
            (api::ServiceBindingEventKind::ProvisioningStateChanged, binding)
        }
        Change::BindingDeleted(binding) => (api::ServiceBindingEventKind::Deleted, binding),
        Change::PrefixCreated(_) | Change::PrefixUpdated(_) | Change::PrefixDeleted(_) => return None,
    };
    Some(api::ServiceBindingEvent::new(
        event.revision,
        kind,
        convert::binding(binding),
        convert::timestamp(event.time),
        event
            .actor
            .as_ref()
            .map(|actor| actor.principal.clone())
            .unwrap_or_default(),
    ))
}
