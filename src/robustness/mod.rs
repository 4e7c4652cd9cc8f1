//! The properties the fuzz targets check (`fuzz/`), one function per parser of untrusted
//! bytes (and per hand-written encoder; ipamctl's argument check lives in its `cli.rs`): each
//! takes any input, must not panic, and asserts what an accepted input implies. The
//! same functions replay the fuzz corpus and every crash ever found under stable `cargo test`
//! (`tests/integration/fuzz_corpus.rs`), so a fixed finding stays fixed.
//!
//! Here: the table of targets and the properties of stored bytes (records, snapshots, stream
//! messages), of request input (page tokens, fields, the batch lookup's request) and of the
//! batch lookup's answer as a client reads it;
//! `lookup_batch.rs` the batch lookup's answers, on a routing model built from the input;
//! `contract.rs` the messages the hand-written ones are held to.

mod lookup_batch;

pub mod contract;

pub use lookup_batch::{compact_says_what_full_says, lookup_batch};

use async_nats::HeaderMap;
use prost::Message;

use crate::api::wire::{Decoded, LookupAddressesRequest, LookupAddressesResponse};
use crate::domain::network::NetworkKey;
use crate::domain::state::{Changes, SnapshotRecords};
use crate::domain::{Event, fields};
use crate::log::codec;
use crate::operations::page_token::{self, ListScope};
use crate::replica::{Arrival, StreamGroup};

/// A property over any input bytes.
pub type Property = fn(&[u8]);
/// A field check over (field name, text): whether it accepted.
type FieldCheck = fn(&str, &str) -> bool;

/// The fuzz targets, by name: what `fuzz/fuzz_targets/<name>.rs` runs and the corpus replay
/// finds in `fuzz/corpus/<name>/`.
pub const TARGETS: [(&str, Property); 8] = [
    ("record", record),
    ("snapshot", snapshot),
    ("stream_message", stream_message),
    ("page_token", page_token),
    ("fields", request_fields),
    ("lookup_batch", lookup_batch),
    ("lookup_request", lookup_request),
    ("lookup_answer", lookup_answer),
];

/// A stored log record (the first 8 bytes: the revision of its last event, little-endian).
/// Accepted: it holds at least one event, ends at that revision, agrees with `run_len`, and
/// reads back the same once written again.
pub fn record(data: &[u8]) {
    let Some((revision, record)) = data.split_first_chunk::<8>() else {
        return;
    };
    let last_revision = u64::from_le_bytes(*revision);
    let length = codec::run_len(record);
    let Ok(events) = codec::decode_run(last_revision, record) else {
        return;
    };
    assert!(!events.is_empty(), "an accepted record holds events");
    assert_eq!(
        length.ok(),
        Some(events.len() as u64),
        "run_len agrees with the decoded run"
    );
    assert_eq!(events.last().map(|event| event.revision), Some(last_revision));
    let again = codec::encode_group(&events);
    assert_eq!(
        codec::decode_run(last_revision, &again).ok(),
        Some(events),
        "a round trip keeps the events"
    );
}

/// A snapshot file, a snapshot delta, a delta file and a length mark. Accepted: written again,
/// each reads back at the same revisions with the same counts.
pub fn snapshot(data: &[u8]) {
    if let Ok(position) = codec::decode_mark(data)
        && let Some(checksum) = position.log_record_checksum
    {
        let again = codec::encode_mark(position.revision, checksum);
        assert_eq!(codec::decode_mark(&again).ok(), Some(position));
    }
    if let Ok(snapshot) = codec::decode_snapshot(data) {
        let again = codec::encode_snapshot(snapshot.revision, snapshot.log_record_checksum, &snapshot.records);
        let reread = codec::decode_snapshot(&again).expect("a re-encoded snapshot decodes");
        assert_eq!(reread.revision, snapshot.revision);
        assert_eq!(counts(&reread.records), counts(&snapshot.records));
    }
    for (record, _) in std::iter::once((data, 0)).chain(crate::log::delta_records(data)) {
        let Ok(delta) = codec::decode_delta(record) else {
            continue;
        };
        let checksum = delta
            .position
            .log_record_checksum
            .expect("a delta's position has a checksum");
        let again = codec::encode_delta(delta.after, delta.position.revision, checksum, &delta.changes);
        let reread = codec::decode_delta(&again).expect("a re-encoded delta decodes");
        assert_eq!((reread.after, reread.position), (delta.after, delta.position));
        assert_eq!(counts(&reread.changes), counts(&delta.changes));
        let deleted = |changes: &Changes| (changes.deleted_prefixes().count(), changes.deleted_bindings().count());
        assert_eq!(deleted(&reread.changes), deleted(&delta.changes));
    }
}

/// How many prefixes, bindings and idempotency keys `records` hold.
fn counts(records: &impl SnapshotRecords) -> (usize, usize, usize) {
    (
        records.prefixes().count(),
        records.bindings().count(),
        records.remembered_requests().count(),
    )
}

/// A replicated stream's message: header lines (`Name: value`) up to an empty line, then the
/// payload. Accepted: its events are exactly the revisions its headers announce; kept as bytes
/// and decoded later (a replica's own append), it decodes to the same group or is refused alike.
pub fn stream_message(data: &[u8]) {
    let split = data.windows(2).position(|pair| pair == b"\n\n").unwrap_or(data.len());
    let (head, payload) = data.split_at(split);
    let payload = payload.get(2..).unwrap_or_default();
    let mut headers = HeaderMap::new();
    // Only what NATS could deliver: names and values its own parser accepts.
    for line in String::from_utf8_lossy(head).lines() {
        if let Some((name, value)) = line.split_once(':')
            && let Ok(name) = name.parse::<async_nats::header::HeaderName>()
            && let Ok(value) = value.trim().parse::<async_nats::HeaderValue>()
        {
            headers.insert(name, value);
        }
    }
    let published = async_nats::datetime::DateTime::UNIX_EPOCH;
    let decoded = StreamGroup::decode(1, &headers, payload, published);
    // Kept as bytes (this replica's own append) and decoded later: the same answer.
    let later = Arrival::read(1, &headers, payload, published, "").and_then(Arrival::into_group);
    assert_eq!(
        decoded.as_ref().map(|group| (&group.events, group.position)).ok(),
        later.as_ref().map(|group| (&group.events, group.position)).ok()
    );
    let Ok(group) = decoded else {
        return;
    };
    let announced = group.position.last_revision - group.first_revision + 1;
    assert_eq!(group.events.len() as u64, announced);
    for (event, revision) in group.events.iter().zip(group.first_revision..) {
        assert_eq!(event.revision, revision);
    }
    // Stored as its record cut into runs: they hold the same events.
    if let Some(runs) = &group.records {
        let stored: Vec<Event> = (runs.iter())
            .flat_map(|(last_revision, run)| {
                codec::decode_run(*last_revision, run).expect("a run cut from a valid group")
            })
            .collect();
        assert_eq!(stored, group.events);
    }
}

/// A page token (any text). Accepted: it names a key whose own token decodes to it again;
/// refused: as INVALID_ARGUMENT naming the field.
pub fn page_token(data: &[u8]) {
    let scope = ListScope {
        list: "bindings",
        scope: b"0123456789abcdef",
    };
    let token = String::from_utf8_lossy(data);
    match page_token::decode(&scope, "page_token", &token) {
        Ok(Some(key)) => {
            let again = page_token::encode(&scope, key);
            assert_eq!(page_token::decode(&scope, "page_token", &again).ok(), Some(Some(key)));
        }
        Ok(None) => assert!(token.is_empty()),
        Err(error) => names_the_field(&error, "page_token"),
    }
    if let Some(key) = data.get(..18).and_then(NetworkKey::from_bytes) {
        let token = page_token::encode(&scope, key);
        assert_eq!(page_token::decode(&scope, "page_token", &token).ok(), Some(Some(key)));
    }
}

/// Every request field check, on any text: refusals are INVALID_ARGUMENT naming the field.
pub fn request_fields(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let checks: [(&str, FieldCheck); 9] = [
        ("account_id", |field, text| {
            checked(fields::account_id(field, text), field)
        }),
        ("prefix_id", |field, text| {
            checked(fields::prefix_id(field, text), field)
        }),
        ("binding_id", |field, text| {
            checked(fields::binding_id(field, text), field)
        }),
        ("service_id", |field, text| checked(fields::service(field, text), field)),
        ("cidr", |field, text| checked(fields::cidr(field, text), field)),
        ("prefix", |field, text| checked(fields::prefix_cidr(field, text), field)),
        ("description", |field, text| {
            checked(fields::description(field, text), field)
        }),
        ("request_id", |field, text| {
            checked(fields::request_id(field, text), field)
        }),
        ("address", |field, text| checked(fields::address(field, text), field)),
    ];
    for (field, check) in checks {
        check(field, &text);
    }
    // The fast path for dotted quads reads addresses exactly as the standard parser does.
    let standard = text.parse::<std::net::IpAddr>().map(|address| address.to_canonical());
    assert_eq!(fields::address("address", &text).ok(), standard.ok(), "{text:?}");
    if let Ok(cidr) = fields::cidr("cidr", &text) {
        // An accepted CIDR's canonical text (what replies show) is accepted as the same one.
        assert_eq!(fields::cidr("cidr", &cidr.to_string()).ok(), Some(cidr));
    }
}

/// LookupAddresses' hand-written request decoder against the message prost generates from the
/// contract, on any bytes (the first picks where the buffer is split in two chunks, as a
/// network buffer may be): both decode to the same addresses, flags and view, or both refuse
/// with the same error (field named), in one chunk or two; an accepted request encodes to
/// exactly the bytes prost's message encodes to.
pub fn lookup_request(data: &[u8]) {
    let Some((split, message)) = data.split_first() else {
        return;
    };
    let expected = contract::LookupAddressesRequest::decode(message);
    let decoded = LookupAddressesRequest::decode(message);
    let at = usize::from(*split) % (message.len() + 1);
    let in_two_chunks = LookupAddressesRequest::decode(prost::bytes::Buf::chain(&message[..at], &message[at..]));
    assert_eq!(
        decoded, in_two_chunks,
        "the same whether the buffer is in one chunk or two"
    );
    match (expected, decoded) {
        (Ok(expected), Ok(decoded)) => {
            let addresses: Vec<&str> = decoded.addresses().collect();
            assert_eq!(addresses, expected.addresses, "the same addresses");
            assert_eq!(
                (decoded.active_only, decoded.view),
                (expected.active_only, expected.view)
            );
            assert_eq!(decoded.encoded_len(), expected.encoded_len());
            assert_eq!(
                decoded.encode_to_vec(),
                expected.encode_to_vec(),
                "encodes as prost does"
            );
        }
        (Err(expected), Err(decoded)) => assert_eq!(decoded.to_string(), expected.to_string()),
        (expected, decoded) => panic!("prost's message: {expected:?}; the hand-written one: {decoded:?}"),
    }
}

fn checked<T>(result: Result<T, crate::domain::Error>, field: &str) -> bool {
    match result {
        Ok(_) => true,
        Err(error) => {
            names_the_field(&error, field);
            false
        }
    }
}

fn names_the_field(error: &crate::domain::Error, field: &str) {
    assert_eq!(error.kind(), crate::domain::ErrorKind::InvalidArgument, "{error:?}");
    assert!(
        error.violations.iter().any(|violation| violation.field == field),
        "{field}: {error:?}"
    );
}

/// A batch answer as a client receives it (after the byte that picks where the buffer splits
/// in two). Whether it is kept as received or decoded field by field, a client reads what
/// prost's message of the contract holds: where prost accepts it, the same results and listed
/// bindings, and the same again once written; where prost refuses it, the answer or reading
/// its entries fails.
pub fn lookup_answer(data: &[u8]) {
    let Some((split, message)) = data.split_first() else {
        return;
    };
    let at = usize::from(*split) % (message.len() + 1);
    let kept = LookupAddressesResponse::decode(prost::bytes::Bytes::copy_from_slice(message));
    let in_two_chunks = LookupAddressesResponse::decode(prost::bytes::Buf::chain(&message[..at], &message[at..]));
    assert_eq!(
        kept, in_two_chunks,
        "the same whether the buffer is in one chunk or two"
    );
    let read = |answer: &LookupAddressesResponse| Ok::<_, prost::DecodeError>((answer.results()?, answer.bindings()?));
    match (Decoded::decode(message), kept) {
        (Ok(expected), Ok(kept)) => {
            assert_eq!(kept.len(), expected.results.len());
            assert_eq!(
                read(&kept).ok(),
                Some((expected.results, expected.bindings)),
                "reads what prost's message holds"
            );
            let again = LookupAddressesResponse::decode(kept.encode_to_vec().as_slice());
            assert_eq!(
                again.map(|again| read(&again)),
                Ok(read(&kept)),
                "reads the same once written"
            );
        }
        (Err(_), Ok(kept)) => assert!(read(&kept).is_err(), "prost refuses it, so its entries do not read"),
        (Ok(expected), Err(error)) => panic!("prost's message: {expected:?}; the hand-written one: {error}"),
        (Err(_), Err(_)) => {}
    }
}
