//! A replica's writer: the same decide -> append -> apply -> reply, with the append going to
//! the replicated stream as one message per group, compare-and-set on the stream's sequence.
//! The writer is also the only one that applies the stream's groups (its tail hands them in
//! through the same queue), so the local log and the projections move together and always
//! equal the stream up to [`StreamPosition`].
//!
//! A group is decided against the projections' state at the stream position it was decided
//! on ([`Writer::decide_group`]: nothing is applied until it lands). Then:
//! - it landed: the local log stores it (with its position), the projections apply it, the
//!   callers get their replies; the tail's copy of it is skipped later;
//! - another replica's append came first (conflict): the group is forgotten, the writer waits
//!   for the tail to bring what it missed, and decides the same commands again; a command that
//!   lost [`MAX_CONFLICTS`] times in a row gets WRITE_CONFLICT;
//! - no answer (NATS down, no quorum): the group is forgotten and its callers get
//!   STORAGE_UNAVAILABLE. The message may still land: if it does, the tail brings it like any
//!   other, and the writer's next append (decided against the old position) conflicts and
//!   waits for it. Nothing is applied that is not in the stream, nothing twice.
//!
//! When another replica holds the lease, the group's commands go to that holder instead
//! ([`forwarding`], over [`crate::replica::forward`]), which appends them with its own; their results wait here
//! until the tail brought this replica to the revision the holder reached, so a reply still
//! means "in the stream and applied here". Commands other replicas forwarded here are
//! appended by this writer, never sent on.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{error, warn};

use super::{Job, MAX_GROUP, Writer};
use crate::domain::{Actor, Command, Error, Outcome, Reason};
use crate::log::StreamPosition;
use crate::replica::{Appended, Replica, StreamGroup};
use crate::telemetry::{self, WriteTimes};

mod forwarding;
use forwarding::{Awaiting, FORWARDS_IN_FLIGHT, ForwardDone};

/// Races a command may lose in a row before it fails with WRITE_CONFLICT. Each round one of
/// the replicas appending at once wins; with three, losing 32 in a row is ~(2/3)^32 = 2e-6.
const MAX_CONFLICTS: u32 = 32;
/// How long a writer that lost a race waits for the tail to bring the winning message
/// before reading it from the stream itself.
const TAIL_PATIENCE: Duration = Duration::from_millis(50);
/// How often a writer with nothing to do looks whether a stored group waits for the disk.
const IDLE_WAKE: Duration = Duration::from_secs(1);

/// A command waiting for its group to land.
struct Waiting {
    command: Command,
    actor: Arc<Actor>,
    reply: oneshot::Sender<Result<Outcome, Error>>,
    /// Races lost in a row.
    conflicts: u32,
    queued: Instant,
    /// The call's trace context, when it is sampled: the writer's spans go under it.
    trace: Option<opentelemetry::Context>,
    /// Appended by this replica, never forwarded: sent here by another replica, or no
    /// holder took it.
    append_here: bool,
}

impl Writer {
    pub(super) fn run_replicated(mut self, replica: Arc<Replica>, position: StreamPosition) {
        let mut run = Replicated {
            replica,
            position,
            waiting: VecDeque::new(),
            awaiting: Vec::new(),
            forwards: tokio::sync::mpsc::unbounded_channel(),
            forwards_in_flight: 0,
            stopping: false,
            diverged: None,
            unstored: None,
        };
        run.replica.applied_sequence.store(position.sequence, Ordering::Release);
        loop {
            if run.waiting.is_empty() || run.forwards_in_flight >= FORWARDS_IN_FLIGHT {
                if run.stopping && run.waiting.is_empty() {
                    break;
                }
                let wake = run.forwarded_patience().min(IDLE_WAKE);
                match run.receive(&mut self, wake) {
                    Received::Job(job) => run.take(&mut self, job),
                    Received::Forward(done) => run.forward_done(done),
                    Received::Nothing => {}
                    Received::Closed => break,
                }
                run.release_forwarded(&self);
            }
            while let Ok(done) = run.forwards.1.try_recv() {
                run.forward_done(done);
            }
            // An answer may come after the tail brought its revision.
            run.release_forwarded(&self);
            while run.waiting.len() < MAX_GROUP
                && let Ok(job) = self.queue.try_recv()
            {
                run.take(&mut self, job);
            }
            if let Some(group) = run.unstored.take() {
                run.store(&mut self, group);
            }
            if let Some(why) = run.diverged.clone().or(run
                .unstored
                .as_ref()
                .map(|_| "this replica cannot store the stream's events on its disk; retrying".to_string()))
            {
                refuse(run.waiting.drain(..), &Error::new(Reason::StorageUnavailable, why));
                if run.diverged.is_some() && !run.stopping {
                    std::thread::sleep(IDLE_WAKE);
                }
                continue;
            }
            if !run.waiting.is_empty() {
                run.append_group(&mut self);
            }
        }
        run.refuse_forwarded();
        self.snapshots.finish();
    }
}

enum Received {
    Job(Job),
    Forward(ForwardDone),
    Nothing,
    Closed,
}

/// The replicated writer's own state, next to the [`Writer`]'s.
struct Replicated {
    replica: Arc<Replica>,
    /// The last stream message the log and the projections hold.
    position: StreamPosition,
    waiting: VecDeque<Waiting>,
    /// Forwarded commands' results, until this replica applied their revision.
    awaiting: Vec<Awaiting>,
    /// The forwarding tasks report here.
    forwards: (
        tokio::sync::mpsc::UnboundedSender<ForwardDone>,
        tokio::sync::mpsc::UnboundedReceiver<ForwardDone>,
    ),
    forwards_in_flight: usize,
    stopping: bool,
    /// The stream and this replica's log disagree: writes are refused with this.
    diverged: Option<String>,
    /// A group of the stream the local log failed to store, retried before anything else.
    unstored: Option<StreamGroup>,
}

impl Replicated {
    /// The next job, waiting at most `timeout` (on the replica's runtime: the timer needs its
    /// clock).
    fn receive(&mut self, writer: &mut Writer, timeout: Duration) -> Received {
        let queue = &mut writer.queue;
        let forwards = &mut self.forwards.1;
        (self.replica.runtime).block_on(async {
            tokio::select! {
                job = queue.recv() => match job {
                    Some(job) => Received::Job(job),
                    None => Received::Closed,
                },
                Some(done) = forwards.recv() => Received::Forward(done),
                _ = tokio::time::sleep(timeout) => Received::Nothing,
            }
        })
    }

    fn take(&mut self, writer: &mut Writer, job: Job) {
        match job {
            Job::Execute {
                command,
                actor,
                reply,
                trace,
                forwarded,
            } => {
                let (trace, queued) = match trace {
                    Some((context, queued)) => (Some(context), queued),
                    None => (None, Instant::now()),
                };
                self.waiting.push_back(Waiting {
                    command,
                    actor,
                    reply,
                    conflicts: 0,
                    queued,
                    trace,
                    append_here: forwarded,
                })
            }
            Job::Replicated(Ok(arrival)) => {
                if self.unstored.is_some() || self.diverged.is_some() {
                    // The tail is ahead of what can be stored; it will be read again after a restart.
                    return;
                }
                if arrival.sequence() <= self.position.sequence {
                    // Applied already (this replica's own append, usually): not decoded.
                    return;
                }
                match arrival.into_group() {
                    Ok(group) => self.store(writer, group),
                    Err(why) => self.diverge(why),
                }
            }
            Job::Replicated(Err(why)) => self.diverge(why),
            Job::Stop => self.stopping = true,
        }
    }

    fn diverge(&mut self, why: String) {
        if self.diverged.is_none() {
            error!(why, "this replica stops serving: its log and the stream disagree");
            let _ = self.replica.diverged.set(why.clone());
            self.diverged = Some(format!(
                "this replica's log and the stream disagree ({why}); it takes no writes until an operator looks"
            ));
        }
    }

    /// Stores and applies a group read from the stream, unless the log holds it already.
    fn store(&mut self, writer: &mut Writer, mut group: StreamGroup) {
        if group.position.sequence <= self.position.sequence {
            return;
        }
        let head = writer.next_revision - 1;
        if group.position.last_revision <= head {
            // The stored position lags the events after a crash: these are here already.
            self.reached(writer, group.position);
            return;
        }
        if group.first_revision != head + 1 {
            self.diverge(format!(
                "the stream's message {} holds revisions {}-{}, but this replica's log ends at revision {head}",
                group.position.sequence, group.first_revision, group.position.last_revision
            ));
            return;
        }
        let stored = writer.recover_log().and_then(|()| {
            writer
                .log
                .append_replicated(&group.events, group.records.take(), group.position)
        });
        let last_checksum = match stored {
            Ok(last_checksum) => last_checksum,
            Err(error) => {
                error!(%error, revision = group.first_revision, "storing the stream's events failed");
                writer.log_needs_recovery = true;
                self.unstored = Some(group);
                return;
            }
        };
        writer.next_revision = group.position.last_revision + 1;
        self.advance(writer, group.position, group.events, last_checksum);
    }

    fn advance(
        &mut self,
        writer: &mut Writer,
        position: StreamPosition,
        events: Vec<crate::domain::Event>,
        last_checksum: Option<u32>,
    ) {
        writer.make_visible(events, last_checksum, position.sequence);
        self.reached(writer, position);
        self.release_forwarded(writer);
        writer
            .snapshots
            .after_commit(&writer.projections, writer.next_revision - 1, &writer.log);
    }

    /// This replica holds the stream up to `position`: said to those waiting for a sequence
    /// (a start catching up, a watch from the stream's head) and to the metrics.
    fn reached(&mut self, writer: &Writer, position: StreamPosition) {
        self.position = position;
        (self.replica.applied_sequence).store(position.sequence, Ordering::Release);
        writer
            .applied
            .send_modify(|applied| applied.sequence = position.sequence);
    }

    /// Sends the waiting commands to the lease holder as one group or, when this replica
    /// holds the lease or no holder answers, decides and appends them itself.
    fn append_group(&mut self, writer: &mut Writer) {
        let holder = self.replica.forward_target();
        if holder.is_some() && self.forwards_in_flight >= FORWARDS_IN_FLIGHT {
            // They go with the next group, once an answer came back.
            return;
        }
        let size = self.waiting.len().min(MAX_GROUP);
        let group: Vec<Waiting> = self.waiting.drain(..size).collect();
        let group = match holder {
            Some(holder) => self.forward(holder, group),
            None => group,
        };
        if !group.is_empty() {
            self.append_directly(writer, group);
        }
    }

    /// Decides `group` against this replica's state and appends it to the stream.
    fn append_directly(&mut self, writer: &mut Writer, group: Vec<Waiting>) {
        let started = Instant::now();
        let (results, events) = writer.decide_group(group.iter().map(|waiting| (&waiting.command, &waiting.actor)));
        let decided = Instant::now();
        if events.is_empty() {
            let replies = group.into_iter().map(|waiting| waiting.reply).zip(results).collect();
            writer.reply(replies);
            return;
        }
        let append = self.replica.message(self.position.sequence, &events);
        let appended = self.replica.append(&append);
        let acknowledged = Instant::now();
        writer.metrics.fsync_seconds.observe(started.elapsed().as_secs_f64());
        writer.metrics.group_commands.observe(group.len() as f64);
        let failure = match appended {
            Appended::Landed(sequence) => {
                let position = append.position(sequence);
                match writer
                    .recover_log()
                    .and_then(|()| writer.log.append_replicated(&events, append.records(), position))
                {
                    Ok(last_checksum) => {
                        self.advance(writer, position, events, last_checksum);
                        let applied = (acknowledged, Instant::now());
                        let n_commands = group.len();
                        let mut traced = Vec::new();
                        let mut replies = Vec::with_capacity(n_commands);
                        for (waiting, result) in group.into_iter().zip(results) {
                            if let Some(trace) = waiting.trace {
                                traced.push((trace, waiting.queued));
                            }
                            replies.push((waiting.reply, result));
                        }
                        writer.reply(replies);
                        for (trace, queued) in traced {
                            let times = WriteTimes {
                                queued,
                                group_started: started,
                                decided: (started, decided),
                                appended: (decided, acknowledged),
                                applied,
                            };
                            telemetry::write_spans(&trace, &times, n_commands);
                        }
                        return;
                    }
                    Err(error) => {
                        // In the stream, not on this disk: the tail brings it back once the
                        // disk takes it.
                        error!(%error, revision = append.first_revision, "storing an appended group failed");
                        writer.log_needs_recovery = true;
                        self.forget_group(writer);
                        let unavailable = Error::new(
                            Reason::StorageUnavailable,
                            format!(
                                "the change is in the replicated log but this replica could not store it ({error}); it will appear once the disk recovers: read before retrying"
                            ),
                        );
                        refuse(group, &unavailable);
                        return;
                    }
                }
            }
            Appended::Conflict => None,
            Appended::Unknown(cause) => Some(cause),
        };
        self.forget_group(writer);
        match failure {
            Some(cause) => {
                let unavailable = Error::new(
                    Reason::StorageUnavailable,
                    format!(
                        "the replicated log did not acknowledge the change ({cause}); it may still appear: read before retrying"
                    ),
                );
                refuse(group, &unavailable);
            }
            None => {
                self.replica.metrics.write_conflicts.inc();
                // A race is lost only once the winner is seen; a stream that cannot be read
                // (a leader change) is waited for, up to the append's own patience.
                let lost = self.catch_up(writer, append.expected_sequence);
                if group.iter().any(|waiting| waiting.conflicts == 8) {
                    warn!(
                        expected = append.expected_sequence,
                        now_at = self.position.sequence,
                        lost,
                        "commands keep losing races"
                    );
                }
                if !lost {
                    std::thread::sleep(Duration::from_millis(100));
                }
                let patience = 2 * self.replica.timeout();
                for mut waiting in group.into_iter().rev() {
                    waiting.conflicts += u32::from(lost);
                    let refusal = if waiting.conflicts >= MAX_CONFLICTS {
                        Some(Error::new(
                            Reason::WriteConflict,
                            format!(
                                "the change lost the race to other replicas' changes {MAX_CONFLICTS} times in a row; nothing was changed, retry"
                            ),
                        ))
                    } else if !lost && waiting.queued.elapsed() > patience {
                        Some(Error::new(
                            Reason::StorageUnavailable,
                            "the replicated log moved on but cannot be read to decide the change again; nothing was changed, retry later",
                        ))
                    } else {
                        None
                    };
                    match refusal {
                        Some(error) => drop(waiting.reply.send(Err(error))),
                        None => self.waiting.push_front(waiting),
                    }
                }
            }
        }
    }

    /// Forgets a group that did not land: its revisions will be decided again.
    fn forget_group(&mut self, writer: &mut Writer) {
        writer.next_revision = writer.projections.read().head + 1;
    }

    /// After a conflict: brings this replica up to (at least) the message that won, so that
    /// the commands are decided again against it. The tail usually brings it within a
    /// moment (it is pushed as soon as it is committed); if it has not within
    /// [`TAIL_PATIENCE`] (the tail resuming after a leader change), the missing messages are
    /// read from the stream directly (what the tail brings later is skipped).
    /// Returns whether it got past `sequence` (the winner is applied).
    fn catch_up(&mut self, writer: &mut Writer, sequence: u64) -> bool {
        let deadline = Instant::now() + TAIL_PATIENCE;
        while self.position.sequence <= sequence && self.diverged.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            match self.receive(writer, left) {
                Received::Job(job) => self.take(writer, job),
                Received::Forward(done) => self.forward_done(done),
                Received::Nothing => {}
                Received::Closed => return false,
            }
        }
        // Read directly: to the stream's head, not only past the winner, so that the next
        // decision is not already stale.
        let direct = self.position.sequence <= sequence;
        while direct && self.diverged.is_none() && self.unstored.is_none() {
            let next = self.position.sequence + 1;
            match self.replica.runtime.block_on(self.replica.group_at(next)) {
                Ok(Some(group)) => self.store(writer, group),
                Ok(None) => break,
                Err(error) => {
                    warn!(%error, next, "cannot read the stream after a conflict; deciding again with what the tail brings");
                    break;
                }
            }
        }
        self.position.sequence > sequence
    }
}

/// Answers every one of `waiting` with `error`.
fn refuse(waiting: impl IntoIterator<Item = Waiting>, error: &Error) {
    for waiting in waiting {
        // The caller may have gone away.
        let _ = waiting.reply.send(Err(error.clone()));
    }
}
