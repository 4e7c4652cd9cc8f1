//! Stored records: a one-byte format, the CRC-32 (little endian) of everything after it, then
//! the payload. Format 1 holds one protobuf message: an `addressing.events.v1.Event` (every log
//! record before runs, and each line of an export) or a `Snapshot`. Format 2, what the log now
//! writes, is a run of consecutive events: a u32 count (little endian), then an `EventRun`.
//! Format 3, what snapshots and their deltas are now written as, is a `Snapshot` or a
//! `SnapshotDelta` compressed: its length (u32, little endian), then the message as one LZ4
//! block.
//! Protobuf lets the schema grow without breaking old data; the format byte lets a server
//! refuse data written by a newer one; the checksum catches a damaged disk before a wrong state
//! is served. [`schema`] maps the domain's types to the stored schema and back.

pub(crate) mod schema;

use prost::Message;

use crate::domain::Event;
use crate::domain::state::{Changes, Records, SnapshotRecords};
use crate::pb::events as stored;
use schema::{EventWriter, from_stored};

/// The newest record format this build reads (the log's records are written as [`RUN`]s, the
/// snapshots [`COMPRESSED`]).
pub const FORMAT_VERSION: u8 = COMPRESSED;
/// One message: an event or a snapshot.
const SINGLE: u8 = 1;
/// A count and an `EventRun`.
const RUN: u8 = 2;
/// A snapshot's message compressed. A snapshot is tens of megabytes, written by every replica
/// at the same revisions, and the stream's fsyncs wait behind its writeback however it is paced:
/// fewer bytes are what helps (docs/benchmarks.md, Replicas). LZ4 (`lz4_flex`, no unsafe code,
/// no dependencies) shrinks one 1.8-2.2 times for ~60 ms of CPU per 200,000 bindings.
const COMPRESSED: u8 = 3;
/// How much larger than its block a message compressed as LZ4 can be: a length beyond it is
/// damage (or a forgery), not a snapshot, and is not allocated.
const LZ4_MAX_RATIO: usize = 255;
const HEADER_LEN: usize = 5;
const COUNT_LEN: usize = 4;

/// Most bytes of events per run record (a run ends with the first event past it). sled keeps
/// up to 17 records in a leaf and writes a leaf over 128 KiB as a separate blob file, which it
/// re-reads at every open: 17 runs of 6 KiB and one event of a few hundred bytes stay inline
/// (only runs of prefixes with descriptions near their 1,000-character limit could go past).
/// Why 6 KiB rather than 4: a group of more than one record is stored as a sled batch, which
/// costs two extra writes of sled's buffers, and on replicas at 64 callers a group (~23
/// creates, ~6 KB) was two records; larger runs are no faster to scan, since at this size a
/// start already checks the whole log in a small fraction of the time one record per event
/// took (docs/benchmarks.md, Restart and Replicas).
pub const RUN_BYTES: usize = 6144;

/// Why a stored record cannot be turned back into events.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record is {0} bytes, shorter than its header")]
    Truncated(usize),
    #[error("record format {0} is newer than this server understands ({FORMAT_VERSION}); run a newer ipam-bindings")]
    NewerFormat(u8),
    #[error("record format {0} is unknown")]
    UnknownFormat(u8),
    #[error("record format {found} where format {expected} was expected")]
    WrongFormat { found: u8, expected: u8 },
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("body is not valid: {0}")]
    Body(String),
}

/// One event as a format-1 record (an export's line).
pub fn encode(event: &Event) -> Vec<u8> {
    seal(SINGLE, &[], EventWriter::default().put(event))
}

/// The event of a format-1 record, at `revision`.
pub fn decode(revision: u64, record: &[u8]) -> Result<Event, DecodeError> {
    decode_event(revision, unseal_single(record)?)
}

fn decode_event(revision: u64, body: &[u8]) -> Result<Event, DecodeError> {
    let event = stored::Event::decode(body).map_err(|error| DecodeError::Body(error.to_string()))?;
    from_stored(revision, event).map_err(DecodeError::Body)
}

/// `events` (consecutive revisions) as run records of about [`RUN_BYTES`] each, with the
/// revision of each run's last event: its key in the log.
pub fn encode_runs(events: &[Event]) -> Vec<(u64, Vec<u8>)> {
    let mut records = Vec::new();
    let (mut writer, mut run) = (EventWriter::default(), RunRecord::for_events(events.len()));
    for (index, event) in events.iter().enumerate() {
        run.push(writer.put(event));
        let left = events.len() - index - 1;
        if ends_run(run.event_bytes, left == 0) {
            records.push((
                event.revision,
                std::mem::replace(&mut run, RunRecord::for_events(left)).seal(),
            ));
        }
    }
    records
}

/// A run record being written: its header and count left to fill in, then its events'
/// fields, encoded straight into the record.
struct RunRecord {
    record: Vec<u8>,
    count: u32,
    /// The events' bodies, without their keys and lengths (what [`ends_run`] counts).
    event_bytes: usize,
}

impl RunRecord {
    /// A record sized for up to `events` events of a typical size (a binding's is ~150 bytes),
    /// as much as a run holds at most.
    fn for_events(events: usize) -> RunRecord {
        let mut record = Vec::with_capacity(HEADER_LEN + COUNT_LEN + events.saturating_mul(192).min(RUN_BYTES + 512));
        record.resize(HEADER_LEN + COUNT_LEN, 0);
        RunRecord {
            record,
            count: 0,
            event_bytes: 0,
        }
    }

    /// Appends an event's encoded message as the next element of `EventRun.events`.
    fn push(&mut self, event: &[u8]) {
        schema::put_message(1, event, &mut self.record);
        self.count = self.count.checked_add(1).expect("a run holds fewer than 2^32 events");
        self.event_bytes += event.len();
    }

    fn seal(mut self) -> Vec<u8> {
        self.record[HEADER_LEN..HEADER_LEN + COUNT_LEN].copy_from_slice(&self.count.to_le_bytes());
        seal_header(RUN, &mut self.record);
        self.record
    }
}

/// Whether a run whose events' bodies hold `run_bytes` ends here: past [`RUN_BYTES`], or at
/// the group's last event. [`encode_runs`] and [`split_group`] must cut alike.
fn ends_run(run_bytes: usize, last_of_group: bool) -> bool {
    run_bytes >= RUN_BYTES || last_of_group
}

/// The key of `EventRun.events` (field 1, length-delimited) before each event's body.
const EVENTS_FIELD_KEY: u8 = 1 << 3 | 2;

/// `events` (consecutive revisions, at least one) as one run record, however large: a
/// replicated group travels as one message ([`decode_run`] reads it back).
pub fn encode_group(events: &[Event]) -> Vec<u8> {
    let (mut writer, mut run) = (EventWriter::default(), RunRecord::for_events(events.len()));
    for event in events {
        run.push(writer.put(event));
    }
    run.seal()
}

/// A group's record (what [`encode_group`] made, its last event at `last_revision`) cut into
/// the records [`encode_runs`] makes of the same events, byte for byte, without decoding
/// them: an `EventRun` body is its events' fields one after the other, so each run is a slice
/// of the group's body under its own count and checksum. A replica stores the stream's
/// messages this way instead of encoding their events a second time. `None` when the record
/// is not a run of exactly such fields (damaged, or from a build whose runs carry more):
/// encode the events instead.
pub fn split_group(last_revision: u64, record: &[u8]) -> Option<Vec<(u64, Vec<u8>)>> {
    let (RUN, payload) = unseal(record).ok()? else {
        return None;
    };
    let (count, mut body) = run_count(payload).ok()?;
    let first_revision = last_revision.checked_sub(count)? + 1;
    let (mut records, mut run_start, mut run_count, mut run_bytes) = (Vec::new(), body, 0u32, 0);
    for revision in first_revision..=last_revision {
        let mut after_length = body.strip_prefix(&[EVENTS_FIELD_KEY])?;
        let len = usize::try_from(prost::encoding::decode_varint(&mut after_length).ok()?).ok()?;
        body = after_length.get(len..)?;
        run_count += 1;
        run_bytes += len;
        if ends_run(run_bytes, revision == last_revision) {
            let run_len = run_start.len() - body.len();
            records.push((revision, seal(RUN, &run_count.to_le_bytes(), &run_start[..run_len])));
            (run_start, run_count, run_bytes) = (body, 0, 0);
        }
    }
    body.is_empty().then_some(records)
}

/// The run record of `run`'s events, from the message: what [`RunRecord`] must write.
#[cfg(test)]
fn seal_run(run: &stored::EventRun) -> Vec<u8> {
    let count = u32::try_from(run.events.len()).expect("a run holds fewer than 2^32 events");
    seal(RUN, &count.to_le_bytes(), &run.encode_to_vec())
}

/// How many events a log record holds, once its format and checksum are checked; the body is
/// not decoded.
pub fn run_len(record: &[u8]) -> Result<u64, DecodeError> {
    match unseal(record)? {
        (SINGLE, _) => Ok(1),
        (RUN, payload) => Ok(run_count(payload)?.0),
        (found, _) => Err(DecodeError::WrongFormat { found, expected: RUN }),
    }
}

/// The events of a log record whose last event is at `last_revision` (the record's key).
pub fn decode_run(last_revision: u64, record: &[u8]) -> Result<Vec<Event>, DecodeError> {
    let (format, payload) = unseal(record)?;
    if last_revision == 0 {
        return Err(DecodeError::Body(
            "a record at revision 0 (revisions start at 1)".into(),
        ));
    }
    match format {
        SINGLE => return Ok(vec![decode_event(last_revision, payload)?]),
        RUN => {}
        found => return Err(DecodeError::WrongFormat { found, expected: RUN }),
    }
    let (count, body) = run_count(payload)?;
    let run = stored::EventRun::decode(body).map_err(|error| DecodeError::Body(error.to_string()))?;
    if run.events.len() as u64 != count || count > last_revision {
        return Err(DecodeError::Body(format!(
            "a run of {} events claims {count}, ending at revision {last_revision}",
            run.events.len()
        )));
    }
    // 1 <= count <= last_revision: neither step can overflow, even at u64::MAX (a damaged key
    // or a stream message's header can say anything).
    let first_revision = (last_revision - count) + 1;
    run.events
        .into_iter()
        .zip(first_revision..=last_revision)
        .map(|(event, revision)| from_stored(revision, event).map_err(DecodeError::Body))
        .collect()
}

/// A run payload's count (at least 1) and `EventRun` body.
fn run_count(payload: &[u8]) -> Result<(u64, &[u8]), DecodeError> {
    let (count, body) = payload
        .split_first_chunk::<COUNT_LEN>()
        .ok_or_else(|| DecodeError::Body("a run without its count".into()))?;
    match u32::from_le_bytes(*count) {
        0 => Err(DecodeError::Body("an empty run".into())),
        count => Ok((u64::from(count), body)),
    }
}

/// A decoded snapshot.
pub struct Snapshot {
    pub revision: u64,
    /// The size of its stored record.
    pub encoded_len: usize,
    /// The [`checksum`] of the log record ending at `revision` when it was taken.
    pub log_record_checksum: Option<u32>,
    pub records: Records,
}

impl Snapshot {
    pub fn position(&self) -> LogPosition {
        LogPosition {
            revision: self.revision,
            log_record_checksum: self.log_record_checksum,
        }
    }
}

/// A point a log is known to have reached: a revision, and the [`checksum`] of the record
/// that ends there (absent in snapshots written before it was stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogPosition {
    pub revision: u64,
    pub log_record_checksum: Option<u32>,
}

/// The stored form of the log's length mark (same header as an event).
pub fn encode_mark(revision: u64, log_record_checksum: u32) -> Vec<u8> {
    let mark = stored::LogMark {
        revision,
        log_record_checksum,
    };
    seal(SINGLE, &[], &mark.encode_to_vec())
}

pub fn decode_mark(record: &[u8]) -> Result<LogPosition, DecodeError> {
    let mark = stored::LogMark::decode(unseal_single(record)?).map_err(|error| DecodeError::Body(error.to_string()))?;
    Ok(LogPosition {
        revision: mark.revision,
        log_record_checksum: Some(mark.log_record_checksum),
    })
}

/// The checksum a record's header holds (checked or not).
pub fn checksum(record: &[u8]) -> Option<u32> {
    let bytes = record.get(1..HEADER_LEN)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

/// The stored form of a snapshot of `records` as of `revision`, with the checksum of the log
/// record ending at `revision`: compressed ([`COMPRESSED`]; a message of 4 GiB or more, a
/// single one).
pub fn encode_snapshot(revision: u64, log_record_checksum: Option<u32>, records: &impl SnapshotRecords) -> Vec<u8> {
    let mut message = Vec::new();
    schema::encode_snapshot_body(revision, log_record_checksum, records, &mut message);
    compressed(&message)
}

pub fn decode_snapshot(record: &[u8]) -> Result<Snapshot, DecodeError> {
    let message = snapshot_message(record)?;
    let snapshot = stored::Snapshot::decode(&*message).map_err(|error| DecodeError::Body(error.to_string()))?;
    Ok(Snapshot {
        revision: snapshot.revision,
        encoded_len: record.len(),
        log_record_checksum: snapshot.log_record_checksum,
        records: schema::records_of(snapshot).map_err(DecodeError::Body)?,
    })
}

/// A decoded snapshot delta: what changed between two checkpoints.
pub struct Delta {
    /// The checkpoint it follows (a snapshot or the delta before it).
    pub after: LogPosition,
    /// The checkpoint it makes: its revision and the checksum of its log record.
    pub position: LogPosition,
    pub changes: Changes,
}

/// The stored form of the changes made after the checkpoint at `after` up to `revision`, whose
/// log record has `log_record_checksum`: compressed as a snapshot is.
pub fn encode_delta(after: LogPosition, revision: u64, log_record_checksum: u32, changes: &Changes) -> Vec<u8> {
    let mut message = Vec::new();
    schema::encode_delta_body(after, revision, log_record_checksum, changes, &mut message);
    compressed(&message)
}

pub fn decode_delta(record: &[u8]) -> Result<Delta, DecodeError> {
    let message = snapshot_message(record)?;
    let delta = stored::SnapshotDelta::decode(&*message).map_err(|error| DecodeError::Body(error.to_string()))?;
    Ok(Delta {
        after: LogPosition {
            revision: delta.after_revision,
            log_record_checksum: Some(delta.after_log_record_checksum),
        },
        position: LogPosition {
            revision: delta.revision,
            log_record_checksum: Some(delta.log_record_checksum),
        },
        changes: schema::changes_of(delta).map_err(DecodeError::Body)?,
    })
}

/// `message` as a [`COMPRESSED`] record (a message of 4 GiB or more, a [`SINGLE`] one).
fn compressed(message: &[u8]) -> Vec<u8> {
    let Ok(len) = u32::try_from(message.len()) else {
        return seal(SINGLE, &[], message);
    };
    // Room for LZ4's worst case, allocated zeroed: a large block is a mapping of its own whose
    // pages the kernel hands out zeroed, so only the ones written become resident.
    let block_start = HEADER_LEN + COUNT_LEN;
    let mut record = vec![0; block_start + lz4_flex::block::get_maximum_output_size(message.len())];
    record[HEADER_LEN..block_start].copy_from_slice(&len.to_le_bytes());
    let written = lz4_flex::block::compress_into(message, &mut record[block_start..]).expect("room for the worst case");
    record.truncate(block_start + written);
    seal_header(COMPRESSED, &mut record);
    record
}

/// The message a snapshot's or a delta's record holds, checked and uncompressed.
fn snapshot_message(record: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, DecodeError> {
    match unseal(record)? {
        (SINGLE, message) => Ok(std::borrow::Cow::Borrowed(message)),
        (COMPRESSED, payload) => Ok(std::borrow::Cow::Owned(decompress(payload)?)),
        (found, _) => Err(DecodeError::WrongFormat {
            found,
            expected: COMPRESSED,
        }),
    }
}

/// The message a [`COMPRESSED`] record's payload holds.
fn decompress(payload: &[u8]) -> Result<Vec<u8>, DecodeError> {
    let (len, block) = payload
        .split_first_chunk::<COUNT_LEN>()
        .ok_or_else(|| DecodeError::Body("a compressed snapshot without its length".into()))?;
    let len = u32::from_le_bytes(*len) as usize;
    if len > block.len().saturating_mul(LZ4_MAX_RATIO) {
        return Err(DecodeError::Body(format!(
            "a compressed snapshot of {} bytes claims {len} bytes uncompressed",
            block.len()
        )));
    }
    let mut message = vec![0; len];
    let written =
        lz4_flex::block::decompress_into(block, &mut message).map_err(|error| DecodeError::Body(error.to_string()))?;
    if written != len {
        return Err(DecodeError::Body(format!(
            "a compressed snapshot claims {len} bytes and holds {written}"
        )));
    }
    Ok(message)
}

/// `format`, the CRC-32 of `head` and `body` together, `head`, `body`.
fn seal(format: u8, head: &[u8], body: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(HEADER_LEN + head.len() + body.len());
    record.extend_from_slice(&[0; HEADER_LEN]);
    record.extend_from_slice(head);
    record.extend_from_slice(body);
    seal_header(format, &mut record);
    record
}

/// Fills in the header of `record`, whose payload follows its first [`HEADER_LEN`] bytes.
fn seal_header(format: u8, record: &mut [u8]) {
    record[0] = format;
    let checksum = crc32fast::hash(&record[HEADER_LEN..]);
    record[1..HEADER_LEN].copy_from_slice(&checksum.to_le_bytes());
}

/// The message of a format-1 record (an event or a snapshot).
fn unseal_single(record: &[u8]) -> Result<&[u8], DecodeError> {
    match unseal(record)? {
        (SINGLE, body) => Ok(body),
        (found, _) => Err(DecodeError::WrongFormat {
            found,
            expected: SINGLE,
        }),
    }
}

/// The format and payload of a record, once the format is known and the checksum matches.
fn unseal(record: &[u8]) -> Result<(u8, &[u8]), DecodeError> {
    if record.len() < HEADER_LEN {
        return Err(DecodeError::Truncated(record.len()));
    }
    let format = match record[0] {
        version @ (SINGLE | RUN | COMPRESSED) => version,
        version if version > FORMAT_VERSION => return Err(DecodeError::NewerFormat(version)),
        version => return Err(DecodeError::UnknownFormat(version)),
    };
    let stored_checksum = u32::from_le_bytes([record[1], record[2], record[3], record[4]]);
    let payload = &record[HEADER_LEN..];
    let computed = crc32fast::hash(payload);
    if computed != stored_checksum {
        return Err(DecodeError::Checksum {
            stored: stored_checksum,
            computed,
        });
    }
    Ok((format, payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        AccountId, Actor, Binding, BindingId, Change, Micros, Prefix, PrefixId, ProvisioningState, Service, State,
        fixtures,
    };
    use std::sync::Arc;

    fn sample() -> Event {
        let prefix = fixtures::prefix("192.0.2.0/24");
        let binding = fixtures::binding(&prefix, "192.0.2.0/24", Service::Cdn, ProvisioningState::Provisioning);
        Event {
            revision: 7,
            time: Micros(3),
            actor: Some(Arc::new(Actor {
                principal: "ci-bot".into(),
                credential: "token:ci1".into(),
                call_id: "r-1".into(),
                ..Actor::default()
            })),
            change: Change::BindingCreated {
                binding,
                request_id: Some("r".into()),
            },
        }
    }

    #[test]
    fn round_trips() {
        let event = sample();
        assert_eq!(decode(7, &encode(&event)).unwrap(), event);
        assert_eq!(decode_run(7, &encode(&event)).unwrap(), vec![event]);
    }

    #[test]
    fn groups_are_cut_into_runs_that_round_trip() {
        let events: Vec<Event> = (1..=100).map(|revision| Event { revision, ..sample() }).collect();
        let runs = encode_runs(&events);
        assert!(runs.len() > 1, "about {RUN_BYTES} bytes per run");
        let mut decoded = Vec::new();
        for (last_revision, record) in &runs {
            assert!(record.len() < 2 * RUN_BYTES);
            let run = decode_run(*last_revision, record).unwrap();
            assert_eq!(run_len(record).unwrap(), run.len() as u64);
            assert_eq!(run.last().unwrap().revision, *last_revision);
            decoded.extend(run);
        }
        assert_eq!(decoded, events);
        // A run is not a single event, and the other way round for snapshots.
        assert!(matches!(
            decode(runs[0].0, &runs[0].1),
            Err(DecodeError::WrongFormat { .. })
        ));
        assert!(matches!(
            decode_snapshot(&runs[0].1),
            Err(DecodeError::WrongFormat { .. })
        ));
    }

    #[test]
    fn runs_and_groups_are_written_as_prost_writes_their_messages() {
        // The runs of the encoder before the log wrote events without building messages.
        fn runs_of_messages(events: &[Event]) -> Vec<(u64, Vec<u8>)> {
            let mut records = Vec::new();
            let mut run = stored::EventRun::default();
            for (index, event) in events.iter().enumerate() {
                run.events.push(schema::to_stored(event));
                let run_bytes: usize = run.events.iter().map(Message::encoded_len).sum();
                if ends_run(run_bytes, index + 1 == events.len()) {
                    records.push((event.revision, seal_run(&std::mem::take(&mut run))));
                }
            }
            records
        }
        let mut rng = fastrand::Rng::with_seed(3);
        for size in [1, 2, 5, 40, 100, 1000] {
            let events: Vec<Event> = (1..=size)
                .map(|revision| schema::assorted_event(&mut rng, revision))
                .collect();
            let runs = encode_runs(&events);
            assert_eq!(runs, runs_of_messages(&events), "{size} events");
            let group = stored::EventRun {
                events: events.iter().map(schema::to_stored).collect(),
            };
            assert_eq!(encode_group(&events), seal_run(&group), "{size} events");
        }
        let event = schema::assorted_event(&mut rng, 9);
        assert_eq!(
            encode(&event),
            seal(SINGLE, &[], &schema::to_stored(&event).encode_to_vec())
        );
    }

    #[test]
    fn a_group_splits_into_the_runs_its_events_encode_to() {
        // Events of different sizes (a description of up to 300 bytes), so that runs end at
        // different places and field lengths take one or two bytes.
        let mut rng = fastrand::Rng::with_seed(5);
        let event = |revision: u64, rng: &mut fastrand::Rng| match rng.u8(..3) {
            0 => Event { revision, ..sample() },
            _ => {
                let mut event = fixtures::prefix_event(revision, "10.1.0.0/16");
                if let Change::PrefixCreated(prefix) = &mut event.change {
                    prefix.description = "d".repeat(rng.usize(..300));
                }
                event
            }
        };
        for size in [1, 2, 3, 13, 40, 60, 236, 1000] {
            let first = rng.u64(1..1_000_000);
            let events: Vec<Event> = (first..first + size)
                .map(|revision| event(revision, &mut rng))
                .collect();
            let last = first + size - 1;
            let group = encode_group(&events);
            assert_eq!(split_group(last, &group), Some(encode_runs(&events)), "{size} events");
        }
        // Not a group of events alone: encoded instead.
        let events: Vec<Event> = (1..=3).map(|revision| event(revision, &mut rng)).collect();
        let group = encode_group(&events);
        assert_eq!(split_group(2, &group), None, "fewer revisions than events");
        assert_eq!(split_group(3, &encode(&events[2])), None, "a single event");
        let (count, body) = run_count(&group[HEADER_LEN..]).unwrap();
        let with_another_field = [body, &[0x10, 0x01]].concat();
        let count = u32::try_from(count).unwrap().to_le_bytes();
        assert_eq!(split_group(3, &seal(RUN, &count, &with_another_field)), None);
        let mut damaged = group.clone();
        damaged[HEADER_LEN + 9] ^= 1;
        assert_eq!(split_group(3, &damaged), None);
    }

    #[test]
    fn a_compressed_record_is_a_snapshot_and_its_length_is_bounded() {
        let state = State::default();
        let snapshot = encode_snapshot(3, Some(1), &state);
        assert_eq!(decode_snapshot(&snapshot).unwrap().revision, 3);
        assert!(
            matches!(
                run_len(&snapshot),
                Err(DecodeError::WrongFormat {
                    found: COMPRESSED,
                    expected: RUN
                })
            ),
            "not a log record"
        );
        assert!(matches!(decode_run(1, &snapshot), Err(DecodeError::WrongFormat { .. })));

        // A length past what LZ4 can expand its block to: refused before any allocation.
        let (_, payload) = unseal(&snapshot).unwrap();
        let mut claims_more = u32::MAX.to_le_bytes().to_vec();
        claims_more.extend_from_slice(&payload[COUNT_LEN..]);
        let error = decode_snapshot(&seal(COMPRESSED, &[], &claims_more)).err().unwrap();
        assert!(
            error.to_string().contains("claims 4294967295 bytes uncompressed"),
            "{error}"
        );
        // The block's own length, not what it expands to: caught by the decoder.
        let mut claims_other = ((payload.len() - COUNT_LEN) as u32).to_le_bytes().to_vec();
        claims_other.extend_from_slice(&payload[COUNT_LEN..]);
        assert!(decode_snapshot(&seal(COMPRESSED, &[], &claims_other)).is_err());
        assert!(decode_snapshot(&seal(COMPRESSED, &[], &[1, 0])).is_err(), "no length");
    }

    #[test]
    fn a_snapshot_restores_the_same_state() {
        use crate::domain::{Command, Outcome};
        let mut state = State::default();
        let mut log: Vec<Event> = Vec::new();
        let run = |state: &mut State, log: &mut Vec<Event>, command: Command| {
            let decision = state.decide(&command, Micros(log.len() as i64)).unwrap();
            for change in decision.changes {
                let event = Event {
                    revision: log.len() as u64 + 1,
                    time: Micros(7),
                    change,
                    actor: None,
                };
                state.apply(&event);
                log.push(event);
            }
            decision.outcome
        };
        let account_id = AccountId::generate();
        let create = Command::CreatePrefix {
            id: PrefixId::generate(),
            account_id,
            cidr: "192.0.2.0/24".parse().unwrap(),
            asn: Some(1),
            description: "d".into(),
        };
        let Outcome::Prefix(prefix) = run(&mut state, &mut log, create) else {
            panic!()
        };
        let bind = |cidr: &str, service, request_id: &str| Command::CreateBinding {
            id: BindingId::generate(),
            account_id,
            prefix_id: prefix.id,
            cidr: cidr.parse().unwrap(),
            service,
            request_id: Some(request_id.into()),
        };
        let Outcome::Binding(wide) = run(&mut state, &mut log, bind("192.0.2.0/24", Service::MagicTransit, "a")) else {
            panic!()
        };
        run(&mut state, &mut log, Command::ActivateBinding { binding_id: wide.id });
        // A snapshot here, and a delta of what follows.
        let (base_revision, base) = (log.len() as u64, encode_snapshot(log.len() as u64, Some(11), &state));
        let Outcome::Binding(narrow) = run(&mut state, &mut log, bind("192.0.2.1/32", Service::Cdn, "b")) else {
            panic!()
        };
        run(
            &mut state,
            &mut log,
            Command::DeleteBinding {
                account_id,
                prefix_id: prefix.id,
                binding_id: narrow.id,
            },
        );

        for (revision, checksum) in [(5, Some(7)), (0, None)] {
            let message = schema::snapshot_record(revision, checksum, &state).encode_to_vec();
            let record = encode_snapshot(revision, checksum, &state);
            let (format, payload) = unseal(&record).unwrap();
            assert_eq!(format, COMPRESSED);
            assert_eq!(
                decompress(payload).unwrap(),
                message,
                "written a record at a time, the bytes of the whole message"
            );
            let uncompressed = decode_snapshot(&seal(SINGLE, &[], &message)).unwrap();
            assert_eq!(
                (uncompressed.revision, uncompressed.log_record_checksum),
                (revision, checksum),
                "a snapshot written before compression still reads"
            );
        }
        let Snapshot {
            revision,
            log_record_checksum,
            encoded_len: _,
            records,
        } = decode_snapshot(&encode_snapshot(5, Some(7), &state)).unwrap();
        let restored = records.into_state();
        assert_eq!((revision, log_record_checksum), (5, Some(7)));
        let listing = |state: &State| {
            let prefixes: Vec<Prefix> = state
                .list_prefixes(account_id, None, 100)
                .items
                .into_iter()
                .cloned()
                .collect();
            let bindings: Vec<Binding> = state
                .list_bindings(prefix.id, None, 100)
                .items
                .into_iter()
                .cloned()
                .collect();
            let mut requests: Vec<(String, Binding)> = state
                .remembered_requests()
                .map(|(_, id, binding)| (id.to_string(), binding.clone()))
                .collect();
            requests.sort_by(|a, b| a.0.cmp(&b.0));
            (prefixes, bindings, requests)
        };
        assert_eq!(listing(&restored), listing(&state));
        assert_eq!(restored.n_provisioning(), state.n_provisioning());
        assert_eq!(
            listing(&restored).2.len(),
            2,
            "the deleted binding's request id is remembered too"
        );
        // And decisions agree: a retry of "b" replays the deleted binding.
        let retry = bind("192.0.2.1/32", Service::Cdn, "b");
        assert_eq!(
            restored.decide(&retry, Micros(99)).unwrap().outcome,
            Outcome::Binding(narrow.clone())
        );

        // The snapshot before the narrow binding and the delta after it restore the same state.
        let after = LogPosition {
            revision: base_revision,
            log_record_checksum: Some(11),
        };
        let changes = Changes::of(log.iter().filter(|event| event.revision > base_revision));
        let delta = decode_delta(&encode_delta(after, log.len() as u64, 12, &changes)).unwrap();
        assert_eq!(delta.after, after);
        let position = LogPosition {
            revision: log.len() as u64,
            log_record_checksum: Some(12),
        };
        assert_eq!(delta.position, position);
        assert_eq!(
            delta.changes.deleted_bindings().collect::<Vec<_>>(),
            [narrow.id],
            "a binding created and deleted since the snapshot is a deletion"
        );
        let mut records = decode_snapshot(&base).unwrap().records;
        records.apply(delta.changes);
        let restored = records.into_state();
        assert_eq!(listing(&restored), listing(&state));
        assert_eq!(
            restored.decide(&retry, Micros(99)).unwrap().outcome,
            Outcome::Binding(narrow)
        );
    }

    #[test]
    fn detects_damage_truncation_and_newer_formats() {
        let record = encode(&sample());
        let mut flipped = record.clone();
        *flipped.last_mut().unwrap() ^= 0x01;
        assert!(matches!(decode(7, &flipped), Err(DecodeError::Checksum { .. })));
        assert!(matches!(decode(7, &record[..3]), Err(DecodeError::Truncated(3))));
        assert!(matches!(
            decode(7, &record[..record.len() - 1]),
            Err(DecodeError::Checksum { .. })
        ));
        let mut newer = record;
        newer[0] = FORMAT_VERSION + 1;
        assert!(matches!(decode(7, &newer), Err(DecodeError::NewerFormat(_))));
    }
}
