//! Replicas (`--log-backend jetstream`): the event log's truth is a NATS JetStream stream that
//! every replica tails and the lease holder appends to (the others forward their writes to it,
//! or append themselves when no holder answers); each replica keeps its own sled copy of the
//! log, its projections and watch feed, so reads never wait on NATS.
//!
//! One stream message is one group of decided commands (a run record of its events, see
//! [`crate::log::codec::encode_group`]) with headers naming its first and last revision. An
//! append is a compare-and-set: `Nats-Expected-Last-Sequence` is the sequence the group was
//! decided against, so a decision made on stale state never lands, and `Nats-Msg-Id` makes a
//! resend of the same message after a timeout land at most once.
//!
//! Rooms: this file connects and checks the stream and appends ([`Replica`]); [`message`] the
//! message format; [`tail`] the ordered consumer feeding the writer; [`lease`] the lease (who
//! appends for all and runs the rollout); [`forward`] writes sent to its holder; [`status`] the
//! lag and connection metrics.

pub mod forward;
pub mod lease;
mod message;
pub mod status;
mod tail;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, context::PublishErrorKind, stream};
use tracing::{info, warn};

use crate::config::NatsOptions;
use crate::log::StreamPosition;
use crate::metrics::ReplicaMetrics;

pub use message::{Append, Arrival, StreamGroup};
pub use tail::tail;

/// Why a replica cannot start on the stream.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("cannot connect to NATS at {url}: {cause}")]
    Connect { url: String, cause: String },
    #[error("NATS JetStream: {0}")]
    JetStream(String),
    #[error("the stream {stream} would lose data: {why}; fix its config (nats stream edit) or use another stream")]
    UnsafeStream { stream: String, why: String },
    #[error(
        "this replica's log is ahead of the stream {stream}: it applied message {sequence} (revision {revision}) but the stream ends at {stream_last}; a stream recreated under the same name? refusing to start"
    )]
    Ahead {
        stream: String,
        sequence: u64,
        revision: u64,
        stream_last: u64,
    },
    #[error(
        "this replica's log disagrees with the stream {stream} at revision {revision} (message {sequence}): {why}; refusing to start"
    )]
    Diverged {
        stream: String,
        sequence: u64,
        revision: u64,
        why: String,
    },
}

/// How long a start waits for JetStream to answer (a cluster electing its leaders).
const STARTUP_PATIENCE: Duration = Duration::from_secs(30);

/// What became of an append.
#[derive(Debug, PartialEq, Eq)]
pub enum Appended {
    /// In the stream (a quorum has it) at this sequence.
    Landed(u64),
    /// Another replica's append came first: nothing of this one is in the stream.
    Conflict,
    /// No answer in time, or NATS refused: the message may or may not be in the stream.
    Unknown(String),
}

/// A connection to the replicated stream.
pub struct Replica {
    /// The runtime the writer thread blocks on for its appends and reads.
    pub(crate) runtime: tokio::runtime::Handle,
    client: async_nats::Client,
    jetstream: jetstream::Context,
    stream: stream::Stream,
    name: String,
    subject: String,
    replicas: usize,
    /// Unique per process: with a counter it makes each message's `Nats-Msg-Id`.
    writer_id: String,
    next_message: AtomicU64,
    timeout: Duration,
    /// The sequence of the last message this replica's log stored (the writer keeps it).
    pub applied_sequence: AtomicU64,
    /// The stream's last sequence as last seen (an ack, or [`status`]'s poll every second).
    stream_last: AtomicU64,
    /// Set (once) when this replica's log and the stream disagree: it stops serving.
    pub diverged: std::sync::OnceLock<String>,
    /// The writer id of the replica holding the lease, as last read ([`lease`] keeps it).
    pub lease_holder: tokio::sync::watch::Sender<Option<String>>,
    pub metrics: Arc<ReplicaMetrics>,
}

impl Replica {
    /// Connects to NATS, then opens the stream (creating it when missing) and checks that its
    /// config keeps every message forever.
    pub async fn connect(options: &NatsOptions, metrics: Arc<ReplicaMetrics>) -> Result<Replica, ReplicaError> {
        let connect_error = |cause: String| ReplicaError::Connect {
            url: options.url.clone(),
            cause,
        };
        let mut connect = async_nats::ConnectOptions::new()
            .name("ipam-bindings")
            .connection_timeout(options.timeout.max(Duration::from_secs(1)))
            .request_timeout(Some(options.timeout));
        if let Some(creds) = &options.creds {
            connect = connect
                .credentials_file(creds)
                .await
                .map_err(|error| connect_error(format!("credentials file {}: {error}", creds.display())))?;
        }
        if let Some(ca) = &options.tls_ca {
            connect = connect.add_root_certificates(ca.clone()).require_tls(true);
        }
        if let (Some(cert), Some(key)) = (&options.tls_cert, &options.tls_key) {
            connect = connect
                .add_client_certificate(cert.clone(), key.clone())
                .require_tls(true);
        }
        let urls: Vec<async_nats::ServerAddr> = (options.url.split(','))
            .map(|url| url.trim().parse())
            .collect::<Result<_, _>>()
            .map_err(|error| connect_error(format!("a bad URL: {error}")))?;
        let client = connect
            .connect(urls)
            .await
            .map_err(|error| connect_error(error.to_string()))?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(options.timeout)
            .build(client.clone());
        let name = options.stream.clone();
        let subject = format!("{name}.events");
        let replicas = options.replicas as usize;
        // A cluster that is starting (no JetStream leader yet) does not answer: wait for it.
        let patience = Instant::now() + STARTUP_PATIENCE;
        let stream = loop {
            match open_stream(&jetstream, &name, &subject, replicas).await {
                Ok(stream) => break stream,
                Err(ReplicaError::JetStream(why)) if Instant::now() < patience => {
                    warn!(why, "JetStream is not answering yet; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(error) => return Err(error),
            }
        };
        metrics.nats_connected.set(1);
        Ok(Replica {
            runtime: tokio::runtime::Handle::current(),
            client,
            jetstream,
            stream,
            name,
            subject,
            replicas,
            writer_id: uuid::Uuid::new_v4().simple().to_string(),
            next_message: AtomicU64::new(1),
            timeout: options.timeout,
            applied_sequence: AtomicU64::new(0),
            stream_last: AtomicU64::new(0),
            diverged: std::sync::OnceLock::new(),
            lease_holder: tokio::sync::watch::Sender::new(None),
            metrics,
        })
    }

    pub fn stream_name(&self) -> &str {
        &self.name
    }

    /// How long an append waits for its acknowledgement before it is resent.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The stream's last sequence, asked of its leader.
    pub async fn last_sequence(&self) -> Result<u64, ReplicaError> {
        let mut stream = self.stream.clone();
        let info = stream
            .info()
            .await
            .map_err(|error| ReplicaError::JetStream(format!("the stream's state: {error}")))?;
        self.saw_sequence(info.state.last_sequence);
        Ok(info.state.last_sequence)
    }

    /// The stream's last sequence as last seen, without asking NATS.
    pub fn known_last_sequence(&self) -> u64 {
        self.stream_last.load(Ordering::Acquire)
    }

    fn saw_sequence(&self, sequence: u64) {
        let last = self.stream_last.fetch_max(sequence, Ordering::AcqRel).max(sequence);
        self.metrics.stream_sequence.set(last as i64);
    }

    /// The message at `sequence`, decoded (`None`: no such message).
    pub async fn group_at(&self, sequence: u64) -> Result<Option<StreamGroup>, ReplicaError> {
        match self.stream.get_raw_message(sequence).await {
            Ok(message) => StreamGroup::decode(sequence, &message.headers, &message.payload, message.time)
                .map(Some)
                .map_err(|why| ReplicaError::JetStream(format!("message {sequence} of the stream: {why}"))),
            Err(error) if error.kind() == stream::RawMessageErrorKind::NoMessageFound => Ok(None),
            Err(error) => Err(ReplicaError::JetStream(format!("reading message {sequence}: {error}"))),
        }
    }

    /// Checks, before a start, that this replica's log is a prefix of the stream: the stream
    /// still holds the last message the log stored (same payload), and the log is not ahead.
    /// A log with events but no position was written by a single node: it is refused too.
    pub async fn check_log(&self, position: Option<StreamPosition>, log_head: u64) -> Result<(), ReplicaError> {
        let stream_last = self.last_sequence().await?;
        let Some(position) = position else {
            if log_head > 0 {
                return Err(ReplicaError::Diverged {
                    stream: self.name.clone(),
                    sequence: 0,
                    revision: 1,
                    why: format!(
                        "the data directory holds {log_head} events that did not come from a stream (a single node's log?); start this replica on an empty --data-dir"
                    ),
                });
            }
            return Ok(());
        };
        if position.sequence > stream_last {
            return Err(ReplicaError::Ahead {
                stream: self.name.clone(),
                sequence: position.sequence,
                revision: position.last_revision,
                stream_last,
            });
        }
        let diverged = |why: String| ReplicaError::Diverged {
            stream: self.name.clone(),
            sequence: position.sequence,
            revision: position.last_revision,
            why,
        };
        match self.group_at(position.sequence).await? {
            None => Err(diverged("the stream no longer holds that message".into())),
            Some(group) if group.position != position => Err(diverged(format!(
                "the stream's message is revisions {}-{} with checksum {:08x}, the log stored revision {} with {:08x}",
                group.first_revision,
                group.position.last_revision,
                group.position.checksum,
                position.last_revision,
                position.checksum
            ))),
            Some(_) => Ok(()),
        }
    }

    /// The message that appends `events` (decided against the stream at `expected_sequence`).
    pub fn message(&self, expected_sequence: u64, events: &[crate::domain::Event]) -> Append {
        let number = self.next_message.fetch_add(1, Ordering::Relaxed);
        Append::new(format!("{}-{number}", self.writer_id), expected_sequence, events)
    }

    /// Appends `append` and waits for the stream's acknowledgement, resending the identical
    /// message (same id, same expected sequence) after a timeout or a refusal until twice the
    /// timeout has passed. A conflict after a resend may be the first send having landed: the
    /// message after the expected sequence is read to tell. Blocking: for the writer thread.
    pub fn append(&self, append: &Append) -> Appended {
        let deadline = Instant::now() + 2 * self.timeout;
        let mut resent = false;
        loop {
            let sent = self.runtime.block_on(async {
                let ack = self
                    .jetstream
                    .send_publish(self.subject.clone(), append.publish())
                    .await?;
                ack.await
            });
            let failure = match sent {
                Ok(ack) => {
                    self.saw_sequence(ack.sequence);
                    return Appended::Landed(ack.sequence);
                }
                Err(error) if error.kind() == PublishErrorKind::WrongLastSequence => {
                    if !resent {
                        return Appended::Conflict;
                    }
                    let next = append.expected_sequence + 1;
                    match self.runtime.block_on(self.group_at(next)) {
                        Ok(Some(group)) if group.msg_id == append.msg_id => return Appended::Landed(next),
                        Ok(Some(_)) => return Appended::Conflict,
                        Ok(None) => "the stream moved on but its next message cannot be read".to_string(),
                        Err(error) => error.to_string(),
                    }
                }
                Err(error) => error.to_string(),
            };
            if Instant::now() >= deadline {
                return Appended::Unknown(failure);
            }
            warn!(msg_id = %append.msg_id, %failure, "append not acknowledged; resending it");
            resent = true;
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether the client is connected to a NATS server.
    pub fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// Opens the stream, creating it when missing (file storage, `replicas` copies, no limits,
/// deletes and purges denied); refuses one whose config would lose or rewrite messages.
async fn open_stream(
    jetstream: &jetstream::Context,
    name: &str,
    subject: &str,
    replicas: usize,
) -> Result<stream::Stream, ReplicaError> {
    let wanted = stream::Config {
        name: name.to_string(),
        description: Some("ipam-bindings event log: one message per group of events".into()),
        subjects: vec![subject.to_string()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        num_replicas: replicas,
        deny_delete: true,
        deny_purge: true,
        allow_direct: true,
        duplicate_window: Duration::from_secs(120),
        ..Default::default()
    };
    let mut stream = match jetstream.get_stream(name).await {
        Ok(stream) => stream,
        Err(error) if is_not_found(&error) => {
            let stream = jetstream
                .create_stream(wanted)
                .await
                .map_err(|error| ReplicaError::JetStream(format!("creating the stream {name}: {error}")))?;
            info!(stream = name, replicas, "created the stream");
            stream
        }
        Err(error) => return Err(ReplicaError::JetStream(format!("opening the stream {name}: {error}"))),
    };
    let info = stream
        .info()
        .await
        .map_err(|error| ReplicaError::JetStream(format!("the stream {name}'s config: {error}")))?;
    if let Some(why) = loses_data(&info.config, subject) {
        return Err(ReplicaError::UnsafeStream {
            stream: name.to_string(),
            why,
        });
    }
    if info.config.num_replicas < replicas {
        warn!(
            stream = name,
            stream_replicas = info.config.num_replicas,
            wanted = replicas,
            "the stream keeps fewer copies than --nats-replicas asks for"
        );
    }
    Ok(stream)
}

/// Why a stream with this config could lose, drop or rewrite a message of the log (`None`:
/// it keeps every message forever).
fn loses_data(config: &stream::Config, subject: &str) -> Option<String> {
    let why = if config.storage != stream::StorageType::File {
        "it is kept in memory, not in files"
    } else if config.retention != stream::RetentionPolicy::Limits {
        "its retention drops acknowledged or uninteresting messages"
    } else if config.max_messages > 0 || config.max_bytes > 0 || !config.max_age.is_zero() {
        "it has a size or age limit"
    } else if config.max_messages_per_subject > 0 {
        "it keeps a limited number of messages per subject"
    } else if !config.deny_delete || !config.deny_purge {
        "it allows deleting or purging messages"
    } else if config.allow_rollup {
        "it allows roll-ups, which purge"
    } else if config.sealed {
        "it is sealed: nothing can be appended"
    } else if config.mirror.is_some() {
        "it is a mirror: nothing can be appended"
    } else if !config.subjects.iter().any(|s| s == subject) {
        return Some(format!("it does not take the subject {subject}"));
    } else {
        return None;
    };
    Some(why.to_string())
}

fn is_not_found(error: &jetstream::context::GetStreamError) -> bool {
    matches!(
        error.kind(),
        jetstream::context::GetStreamErrorKind::JetStream(error)
            if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_stream_that_keeps_everything_is_taken() {
        let subject = "IPAM_EVENTS.events";
        let safe = stream::Config {
            name: "IPAM_EVENTS".into(),
            subjects: vec![subject.into()],
            storage: stream::StorageType::File,
            deny_delete: true,
            deny_purge: true,
            max_messages: -1,
            max_bytes: -1,
            max_messages_per_subject: -1,
            ..Default::default()
        };
        assert_eq!(loses_data(&safe, subject), None);
        let unsafe_ones: [fn(&mut stream::Config); 7] = [
            |c| c.storage = stream::StorageType::Memory,
            |c| c.max_messages = 1000,
            |c| c.max_age = Duration::from_secs(3600),
            |c| c.deny_purge = false,
            |c| c.allow_rollup = true,
            |c| c.retention = stream::RetentionPolicy::WorkQueue,
            |c| c.subjects = vec!["other".into()],
        ];
        for (index, make_unsafe) in unsafe_ones.iter().enumerate() {
            let mut config = safe.clone();
            make_unsafe(&mut config);
            assert!(loses_data(&config, subject).is_some(), "case {index}");
        }
    }
}
