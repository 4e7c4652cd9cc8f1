//! The properties the fuzz targets check (`fuzz/`), one function per parser of untrusted
//! bytes: each takes any input, must not panic, and asserts what an accepted input implies. The
//! same functions replay the fuzz corpus and every crash ever found under stable `cargo test`
//! (`tests/integration/fuzz_corpus.rs`), so a fixed finding stays fixed.

use async_nats::HeaderMap;

use crate::domain::fields;
use crate::domain::network::NetworkKey;
use crate::log::codec;
use crate::operations::page_token::{self, ListScope};
use crate::replica::StreamGroup;

/// A property over any input bytes.
pub type Property = fn(&[u8]);
/// A field check over (field name, text): whether it accepted.
type FieldCheck = fn(&str, &str) -> bool;

/// The fuzz targets, by name: what `fuzz/fuzz_targets/<name>.rs` runs and the corpus replay
/// finds in `fuzz/corpus/<name>/`.
pub const TARGETS: [(&str, Property); 5] = [
    ("record", record),
    ("snapshot", snapshot),
    ("stream_message", stream_message),
    ("page_token", page_token),
    ("fields", request_fields),
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

/// A snapshot file and a length mark. Accepted: written again, it reads back at the same
/// revision with the same counts.
pub fn snapshot(data: &[u8]) {
    if let Ok(position) = codec::decode_mark(data)
        && let Some(checksum) = position.log_record_checksum
    {
        let again = codec::encode_mark(position.revision, checksum);
        assert_eq!(codec::decode_mark(&again).ok(), Some(position));
    }
    let Ok(snapshot) = codec::decode_snapshot(data) else {
        return;
    };
    let again = codec::encode_snapshot(snapshot.revision, snapshot.log_record_checksum, &snapshot.state);
    let reread = codec::decode_snapshot(&again).expect("a re-encoded snapshot decodes");
    assert_eq!(reread.revision, snapshot.revision);
    assert_eq!(reread.state.n_prefixes(), snapshot.state.n_prefixes());
    assert_eq!(reread.state.n_bindings(), snapshot.state.n_bindings());
}

/// A replicated stream's message: header lines (`Name: value`) up to an empty line, then the
/// payload. Accepted: its events are exactly the revisions its headers announce.
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
    let Ok(group) = StreamGroup::decode(1, &headers, payload, published) else {
        return;
    };
    let announced = group.position.last_revision - group.first_revision + 1;
    assert_eq!(group.events.len() as u64, announced);
    for (event, revision) in group.events.iter().zip(group.first_revision..) {
        assert_eq!(event.revision, revision);
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
    if let Ok(cidr) = fields::cidr("cidr", &text) {
        // An accepted CIDR's canonical text (what replies show) is accepted as the same one.
        assert_eq!(fields::cidr("cidr", &cidr.to_string()).ok(), Some(cidr));
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
