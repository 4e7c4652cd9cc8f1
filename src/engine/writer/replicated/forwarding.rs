//! The replicated writer's forwarding: a replica that does not hold the write lease sends its
//! callers' commands to the replica that does (a NATS request per group, up to
//! [`FORWARDS_IN_FLIGHT`] at once, while the writer goes on applying the stream), and holds
//! each answer until its own tail brought the revision the holder reached, so that a reply
//! still means "in the stream and applied here".

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Replicated, Waiting, refuse};
use crate::domain::{Error, Reason};
use crate::engine::writer::{Reply, Writer};
use crate::replica::forward::Forwarded;
use crate::telemetry::{self, ForwardTimes};

/// What became of a group sent to the lease holder, told to the writer by the task that sent
/// it.
pub(super) enum ForwardDone {
    Answered(Awaiting),
    /// No holder listened: the writer appends these itself.
    NotTaken(Vec<Waiting>),
    /// No answer: the callers were told.
    Refused,
}

/// Groups sent to the holder at once, at most: each is a request in flight while the writer
/// goes on applying the stream (which brings the earlier ones' revisions) and sending more.
/// Measured at 64 callers over three replicas (docs/benchmarks.md): 1 was 0.82-0.98x of 4,
/// 16 was 1.07x of 4 (median of ten rounds), 64 the same as 16. A command that finds every
/// slot taken waits for the next answer, so a small cap adds a holder's round trip to it.
pub(super) const FORWARDS_IN_FLIGHT: usize = 16;

/// Results of forwarded commands, waiting for this replica to apply what the holder reached.
pub(super) struct Awaiting {
    revision: u64,
    replies: Vec<Reply>,
    /// After this, the callers are told their change landed but is not applied here yet.
    deadline: Instant,
    /// The sampled calls among them (their trace context and when they were queued), for
    /// their spans once applied.
    traced: Vec<(opentelemetry::Context, Instant)>,
    sent: Instant,
    answered: Instant,
}

/// How long forwarded results wait for the tail to bring what the holder appended.
const APPLY_PATIENCE: Duration = Duration::from_secs(30);

impl Replicated {
    /// Sends this replica's own commands of `group` to `holder` (the answer comes back
    /// through [`ForwardDone`]); returns what is left to append here.
    pub(super) fn forward(&mut self, holder: String, group: Vec<Waiting>) -> Vec<Waiting> {
        let (own, here): (Vec<Waiting>, Vec<Waiting>) = group.into_iter().partition(|waiting| !waiting.append_here);
        if own.is_empty() {
            return here;
        }
        self.forwards_in_flight += 1;
        let replica = Arc::clone(&self.replica);
        let done = self.forwards.0.clone();
        let after_sequence = self.position.sequence;
        self.replica.runtime.spawn(async move {
            let commands: Vec<_> = own.iter().map(|waiting| (&waiting.command, &*waiting.actor)).collect();
            let traceparents = (own.iter())
                .map(|waiting| (waiting.trace.as_ref()).map_or_else(String::new, telemetry::traceparent_of_context))
                .collect();
            let sent = Instant::now();
            let forwarded = replica.forward(&holder, &commands, traceparents, after_sequence).await;
            drop(commands);
            let outcome = match forwarded {
                Forwarded::Answered { results, revision } => {
                    let mut own = own;
                    let traced = (own.iter_mut())
                        .filter_map(|waiting| Some((waiting.trace.take()?, waiting.queued)))
                        .collect();
                    ForwardDone::Answered(Awaiting {
                        revision,
                        replies: own.into_iter().map(|waiting| waiting.reply).zip(results).collect(),
                        deadline: Instant::now() + APPLY_PATIENCE,
                        traced,
                        sent,
                        answered: Instant::now(),
                    })
                }
                Forwarded::NoHolder => ForwardDone::NotTaken(own),
                Forwarded::Unknown(cause) => {
                    let unavailable = Error::new(
                        Reason::StorageUnavailable,
                        format!("{cause}; the change may still appear: read before retrying"),
                    );
                    refuse(own, &unavailable);
                    ForwardDone::Refused
                }
            };
            // The writer stopped: its callers learn it from their dropped replies.
            let _ = done.send(outcome);
        });
        here
    }

    /// How long until the first forwarded answer runs out of patience (`Duration::MAX`: none
    /// waits).
    pub(super) fn forwarded_patience(&self) -> Duration {
        (self.awaiting.iter())
            .map(|awaiting| awaiting.deadline.saturating_duration_since(Instant::now()))
            .fold(Duration::MAX, Duration::min)
    }

    /// At the writer's stop: tells the callers whose forwarded change this replica did not
    /// apply yet.
    pub(super) fn refuse_forwarded(&mut self) {
        let stopped = Error::new(
            Reason::StorageUnavailable,
            "the change is in the replicated log, but this replica stopped before applying it",
        );
        for awaiting in self.awaiting.drain(..) {
            refuse_replies(awaiting.replies, &stopped);
        }
    }

    pub(super) fn forward_done(&mut self, done: ForwardDone) {
        self.forwards_in_flight -= 1;
        match done {
            ForwardDone::Answered(awaiting) => self.awaiting.push(awaiting),
            ForwardDone::NotTaken(group) => {
                for mut waiting in group.into_iter().rev() {
                    waiting.append_here = true;
                    self.waiting.push_front(waiting);
                }
            }
            ForwardDone::Refused => {}
        }
    }

    /// Replies to forwarded commands whose revision this replica applied, and tells those
    /// that waited too long.
    pub(super) fn release_forwarded(&mut self, writer: &Writer) {
        let head = writer.next_revision - 1;
        let now = Instant::now();
        let mut index = 0;
        while index < self.awaiting.len() {
            let awaiting = &self.awaiting[index];
            if awaiting.revision <= head {
                let awaiting = self.awaiting.swap_remove(index);
                let n_commands = awaiting.replies.len();
                for (reply, result) in awaiting.replies {
                    let _ = reply.send(result);
                }
                for (trace, queued) in awaiting.traced {
                    let times = ForwardTimes {
                        queued,
                        sent: awaiting.sent,
                        answered: awaiting.answered,
                        applied: now,
                    };
                    telemetry::forward_spans(&trace, &times, n_commands);
                }
            } else if awaiting.deadline <= now {
                let awaiting = self.awaiting.swap_remove(index);
                let late = Error::new(
                    Reason::StorageUnavailable,
                    format!(
                        "the change is in the replicated log (revision {}), but this replica has not applied it yet; read with x-ipam-min-revision",
                        awaiting.revision
                    ),
                );
                refuse_replies(awaiting.replies, &late);
            } else {
                index += 1;
            }
        }
    }
}

/// Answers each reply with `error` instead of its result.
fn refuse_replies(replies: Vec<Reply>, error: &Error) {
    for (reply, _) in replies {
        let _ = reply.send(Err(error.clone()));
    }
}
