//! The writer thread: takes the queued commands as one group, decides each against the
//! projections' state (seeing the group's earlier decisions), appends the group's events to
//! the log with one fsync, applies them to the projections, publishes them and replies. A failed append rolls the group back: no one
//! in it gets a success, and the log is recovered before the next append. A replica's writer
//! appends to the replicated stream instead ([`replicated`]).

mod replicated;

use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::Instant;

use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, error, warn};

use super::checkpoint::{MARK_EVERY, Mark, Snapshots};
use super::{Applied, CommittedGroup, Job};
use crate::domain::{Actor, Command, Error, Event, Micros, Outcome, Reason, State};
use crate::log::{EventLog, LogError};
use crate::metrics::WriteMetrics;
use crate::projection::Projections;
use crate::telemetry::{self, WriteTimes};

/// Most commands decided and committed as one group (one fsync).
const MAX_GROUP: usize = 1024;

/// A caller waiting for its command and what it gets.
type Reply = (oneshot::Sender<Result<Outcome, Error>>, Result<Outcome, Error>);

/// What a writer is made of (see [`Writer`]'s fields).
pub(super) struct WriterParts {
    pub queue: mpsc::Receiver<Job>,
    /// The log's head, as of the projections.
    pub head: u64,
    pub log: EventLog,
    pub projections: Projections,
    pub feed: broadcast::Sender<CommittedGroup>,
    pub metrics: Arc<WriteMetrics>,
    pub snapshots: Snapshots,
    pub marks: std_mpsc::Sender<Mark>,
    /// What the projections hold, for callers waiting on a revision.
    pub applied: tokio::sync::watch::Sender<Applied>,
    /// A replica's stream, and where its log is in it.
    pub replica: Option<(Arc<crate::replica::Replica>, crate::log::StreamPosition)>,
}

pub(super) struct Writer {
    queue: mpsc::Receiver<Job>,
    /// The revision the next decided event gets: the projections' head + 1 between groups.
    next_revision: u64,
    log: EventLog,
    projections: Projections,
    feed: broadcast::Sender<CommittedGroup>,
    metrics: Arc<WriteMetrics>,
    snapshots: Snapshots,
    /// An append failed and the log could not be recovered yet: recover before the next one.
    log_needs_recovery: bool,
    /// The runtime the callers wait on (none when started outside one, as in unit tests).
    runtime: Option<tokio::runtime::Handle>,
    /// Durable heads for the marker thread.
    marks: std_mpsc::Sender<Mark>,
    /// When the last head was sent to the marker (none yet: the first commit sends one).
    last_mark: Option<Instant>,
    applied: tokio::sync::watch::Sender<Applied>,
    replica: Option<(Arc<crate::replica::Replica>, crate::log::StreamPosition)>,
}

impl Writer {
    pub(super) fn new(parts: WriterParts) -> Writer {
        Writer {
            queue: parts.queue,
            next_revision: parts.head + 1,
            log: parts.log,
            projections: parts.projections,
            feed: parts.feed,
            metrics: parts.metrics,
            snapshots: parts.snapshots,
            log_needs_recovery: false,
            runtime: tokio::runtime::Handle::try_current().ok(),
            marks: parts.marks,
            last_mark: None,
            applied: parts.applied,
            replica: parts.replica,
        }
    }

    pub(super) fn run(self) {
        match self.replica.clone() {
            Some((replica, position)) => self.run_replicated(replica, position),
            None => self.run_alone(),
        }
    }

    fn run_alone(mut self) {
        let mut stopping = false;
        while !stopping {
            let Some(first) = self.queue.blocking_recv() else { break };
            let mut jobs = vec![first];
            while jobs.len() < MAX_GROUP {
                match self.queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
            let group_started = Instant::now();
            let mut group = Vec::with_capacity(jobs.len());
            for job in jobs {
                match job {
                    Job::Execute {
                        command,
                        actor,
                        reply,
                        trace,
                        forwarded: _,
                    } => group.push((command, actor, reply, trace)),
                    Job::Stop => stopping = true,
                    // Only a replica's writer is sent the stream's groups.
                    Job::Replicated(_) => {}
                }
            }
            let (results, events) = self.decide_group(group.iter().map(|(command, actor, ..)| (command, actor)));
            let decided = (group_started, Instant::now());
            let n_commands = group.len();
            let mut replies: Vec<Reply> = Vec::with_capacity(n_commands);
            let mut traced = Vec::new();
            for ((_, _, reply, trace), result) in group.into_iter().zip(results) {
                replies.push((reply, result));
                traced.extend(trace);
            }
            let (appended, applied) = self.commit(events, replies);
            for (trace, queued) in traced {
                let times = WriteTimes {
                    queued,
                    group_started,
                    decided,
                    appended,
                    applied,
                };
                telemetry::write_spans(&trace, &times, n_commands);
            }
        }
        self.snapshots.finish();
        // Anything queued after Stop is refused: the receiver is dropped here.
    }

    /// Decides `commands` in order against the projections' state, each seeing the decisions
    /// before it, and numbers their events from [`next_revision`](Self::next_revision) on.
    ///
    /// The state is shared with the readers, not copied (a copy was a third of the memory
    /// after a start: docs/benchmarks.md, Restart). To let a decision see the group's earlier
    /// ones, their events are applied to the state under the write lock and taken back out
    /// ([`State::undo`]) before it is released, so readers never see a decision that is not
    /// durable; a group of one only reads. A decision no later command of the group could
    /// read ([`State::read_later`]: creates of different bindings) is not applied at all, since
    /// applying and taking back were a seventh of the writer's CPU under creates
    /// (docs/benchmarks.md, a group's creates decided without applying those no later command
    /// reads). The events are applied for good once stored.
    fn decide_group<'a>(
        &mut self,
        commands: impl ExactSizeIterator<Item = (&'a Command, &'a Arc<Actor>)>,
    ) -> (Vec<Result<Outcome, Error>>, Vec<Event>) {
        let n_commands = commands.len();
        let mut events = Vec::new();
        debug_assert_eq!(
            self.projections.read().head + 1,
            self.next_revision,
            "the writer decides at the projections' head"
        );
        // A group of one (or none: only a stop) needs no decision applied for a next one.
        if n_commands <= 1 {
            let model = self.projections.read();
            let results = commands
                .map(|(command, actor)| decide(&model.state, command, actor, &mut self.next_revision, &mut events))
                .collect();
            return (results, events);
        }
        let (commands, actors): (Vec<&Command>, Vec<&Arc<Actor>>) = commands.unzip();
        let mut model = self.projections.write();
        let read_later = model.state.read_later(&commands);
        let mut results = Vec::with_capacity(n_commands);
        let mut undos = Vec::new();
        for ((command, actor), read_later) in commands.into_iter().zip(actors).zip(read_later) {
            let first_event = events.len();
            results.push(decide(
                &model.state,
                command,
                actor,
                &mut self.next_revision,
                &mut events,
            ));
            if read_later {
                for event in &events[first_event..] {
                    undos.push(model.state.apply_undoably(event));
                }
            }
        }
        for undo in undos.into_iter().rev() {
            model.state.undo(undo);
        }
        (results, events)
    }

    /// Returns when the append (with its fsync) and the apply ran, for the calls' traces.
    fn commit(&mut self, events: Vec<Event>, replies: Vec<Reply>) -> ((Instant, Instant), (Instant, Instant)) {
        let started = Instant::now();
        let (mut appended, mut applied) = ((started, started), (started, started));
        if !events.is_empty() {
            let stored = self.recover_log().and_then(|()| self.log.append(&events));
            self.metrics.fsync_seconds.observe(started.elapsed().as_secs_f64());
            self.metrics.group_commands.observe(replies.len() as f64);
            debug!(
                n_commands = replies.len(),
                n_events = events.len(),
                fsync_us = started.elapsed().as_micros() as u64,
                "group committed"
            );
            let last_checksum = match stored {
                Ok(last_checksum) => last_checksum,
                Err(error) => {
                    error!(%error, first_revision = events[0].revision, n_events = events.len(), "appending to the log failed");
                    self.roll_back();
                    let unavailable = Error::new(
                        Reason::StorageUnavailable,
                        format!("the change could not be stored durably ({error}); nothing was changed, retry later"),
                    );
                    for (reply, _) in replies {
                        let _ = reply.send(Err(unavailable.clone()));
                    }
                    let failed = (started, Instant::now());
                    return (failed, failed);
                }
            };
            appended = (started, Instant::now());
            let applying = Instant::now();
            self.make_visible(events, last_checksum, 0);
            applied = (applying, Instant::now());
        }
        self.reply(replies);
        self.snapshots
            .after_commit(&self.projections, self.next_revision - 1, &self.log);
        (appended, applied)
    }

    /// After `events` are stored: has the marker record them (their last record has
    /// `last_checksum`), applies them to the projections and publishes them to watchers and to
    /// callers waiting on a revision (`sequence`: the stream's, for a replica).
    fn make_visible(&mut self, events: Vec<Event>, last_checksum: Option<u32>, sequence: u64) {
        self.metrics.events_appended.inc_by(events.len() as u64);
        if let Some(checksum) = last_checksum {
            self.maybe_mark(checksum);
        }
        self.projections.apply(&events);
        self.snapshots.note(&events);
        let revision = events.last().map_or(0, |event| event.revision);
        // No receivers is fine: nobody is watching.
        let _ = self.feed.send(Arc::from(events));
        self.applied.send_replace(Applied { revision, sequence });
    }

    /// Hands out a group's replies.
    fn reply(&self, replies: Vec<Reply>) {
        let deliver = move || {
            for (reply, result) in replies {
                // The caller may have gone away; its change is committed all the same.
                let _ = reply.send(result);
            }
        };
        // Waking each caller from this thread costs a trip through the runtime's shared queue
        // (and often a futex wake) per reply; one task hands out the whole group's replies from
        // a worker, whose wakes stay on its local queue (docs/benchmarks.md, durable creates).
        match &self.runtime {
            Some(runtime) => drop(runtime.spawn(async move { deliver() })),
            None => deliver(),
        }
    }

    /// At most every [`MARK_EVERY`], has the marker record the durable head: the group's last
    /// revision, whose record has `checksum`.
    fn maybe_mark(&mut self, checksum: u32) {
        if self.last_mark.is_some_and(|sent| sent.elapsed() < MARK_EVERY) {
            return;
        }
        self.last_mark = Some(Instant::now());
        let _ = self.marks.send(Mark {
            revision: self.next_revision - 1,
            checksum,
        });
    }

    /// Forgets a group that was not made durable: the projections never saw it, its revisions
    /// will be reused, and the log is recovered at once if it can be (else before the next
    /// append).
    fn roll_back(&mut self) {
        self.next_revision = self.projections.read().head + 1;
        self.log_needs_recovery = true;
        let _ = self.recover_log();
    }

    /// Reopens the log after a storage failure and drops what the failed group left in it.
    fn recover_log(&mut self) -> Result<(), LogError> {
        if !self.log_needs_recovery {
            return Ok(());
        }
        // The projections hold exactly what was acknowledged (the writer may be a group ahead).
        let acknowledged = self.projections.read().head;
        match self.log.recover(acknowledged) {
            Ok(()) => {
                warn!(acknowledged, "the log recovered from a storage failure; writes resume");
                self.log_needs_recovery = false;
                Ok(())
            }
            Err(error) => {
                error!(%error, "the log is still failing");
                Err(error)
            }
        }
    }
}

/// Decides `command` against `state` at the current time; its events take the revisions from
/// `next_revision` on.
fn decide(
    state: &State,
    command: &Command,
    actor: &Arc<Actor>,
    next_revision: &mut u64,
    events: &mut Vec<Event>,
) -> Result<Outcome, Error> {
    let now = Micros::now();
    let decision = state.decide(command, now)?;
    for change in decision.changes {
        events.push(Event {
            revision: *next_revision,
            time: now,
            change,
            actor: Some(Arc::clone(actor)),
        });
        *next_revision += 1;
    }
    Ok(decision.outcome)
}
