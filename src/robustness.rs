//! The properties the fuzz targets check (`fuzz/`), one function per parser of untrusted
//! bytes (and per hand-written encoder; ipamctl's argument check lives in its `cli.rs`): each
//! takes any input, must not panic, and asserts what an accepted input implies. The
//! same functions replay the fuzz corpus and every crash ever found under stable `cargo test`
//! (`tests/integration/fuzz_corpus.rs`), so a fixed finding stays fixed.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};

use async_nats::HeaderMap;
use ipnet::IpNet;
use prost::Message;
use uuid::Uuid;

use crate::api::lookup::{self, RouteCache, View};
use crate::api::wire::{Decoded, LookupAddressesRequest, LookupAddressesResponse};
use crate::domain::network::NetworkKey;
use crate::domain::state::{Changes, SnapshotRecords};
use crate::domain::{AccountId, BindingId, Command, Event, Micros, Outcome, Prefix, PrefixId, Service, fields};
use crate::log::codec;
use crate::operations::page_token::{self, ListScope};
use crate::pb::api;
use crate::projection::ReadModel;
use crate::replica::{Arrival, StreamGroup};

/// A property over any input bytes.
pub type Property = fn(&[u8]);
/// A field check over (field name, text): whether it accepted.
type FieldCheck = fn(&str, &str) -> bool;

/// The fuzz targets, by name: what `fuzz/fuzz_targets/<name>.rs` runs and the corpus replay
/// finds in `fuzz/corpus/<name>/`.
pub const TARGETS: [(&str, Property); 7] = [
    ("record", record),
    ("snapshot", snapshot),
    ("stream_message", stream_message),
    ("page_token", page_token),
    ("fields", request_fields),
    ("lookup_batch", lookup_batch),
    ("lookup_request", lookup_request),
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

/// The batch lookup's request as prost generates it from the contract (the name matters: it is
/// in the errors' field paths).
/// Messages of the contract that the server writes or reads by hand (`api::wire`), as prost
/// generates them from the .proto: what those are held to.
pub mod contract {
    use crate::pb::api;

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LookupAddressResponse {
        #[prost(string, tag = "1")]
        pub address: String,
        #[prost(string, tag = "2")]
        pub prefix_id: String,
        #[prost(string, tag = "3")]
        pub account_id: String,
        #[prost(message, optional, tag = "4")]
        pub binding: Option<api::ServiceBinding>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct LookupAddressesRequest {
        #[prost(string, repeated, tag = "1")]
        pub addresses: Vec<String>,
        #[prost(bool, tag = "2")]
        pub active_only: bool,
        #[prost(int32, tag = "3")]
        pub view: i32,
    }
}

/// LookupAddresses' hand-written encoder, on a routing table and a batch both built from the
/// input (prefixes and bindings through the real rules, addresses inside and outside them in
/// several spellings). Accepted batches: the FULL answer decodes with prost to exactly the
/// message of the one-address path for each address (`resolve`, a whole `LookupAddressResult`
/// built field by field), whether its routes were encoded fresh or taken from the cache; the
/// COMPACT answer says the same ([`compact_says_what_full_says`]); the unary answer written from
/// the same routes is prost's encoding of the contract's message with those fields.
pub fn lookup_batch(data: &[u8]) {
    ROUTING_MODEL.with_borrow_mut(|model| {
        let mut input = Input(data);
        let created = build_routing_model(model, &mut input);
        check_batch(model, &created, &mut input);
        clear_routing_model(model, created);
    });
}

thread_local! {
    /// One read model for every input of a fuzzing process (its tables and route cache are
    /// made once, not per input). Each input starts from an empty model and leaves it empty.
    static ROUTING_MODEL: RefCell<ReadModel> = RefCell::default();
}

/// What one input created in the shared model.
struct Created {
    prefixes: Vec<Prefix>,
    bindings: Vec<BindingId>,
}

fn check_batch(model: &ReadModel, created: &Created, input: &mut Input) {
    let active_only = input.byte() & 1 == 1;
    let cidrs: Vec<IpNet> = created.prefixes.iter().map(|prefix| prefix.cidr).collect();
    let texts = batch_addresses(input, &cidrs);
    let Ok(addresses) = fields::addresses("addresses", &texts) else {
        return;
    };
    let mut cache = RouteCache::default();
    let answer = |view, cached: &RouteCache, fresh: &mut RouteCache| {
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let response = lookup::answer(model, &texts, &addresses, active_only, view, cached, fresh);
        assert_eq!(response.len(), texts.len(), "one result per address");
        // As a client receives it.
        LookupAddressesResponse::decode(response.encode_to_vec().as_slice()).expect("the answer decodes")
    };
    let fresh_full = answer(View::Full, &RouteCache::default(), &mut cache);
    let cached_full = answer(View::Full, &cache, &mut RouteCache::default());
    let compact = answer(View::Compact, &cache, &mut RouteCache::default());
    let expected: Vec<_> = texts
        .iter()
        .zip(&addresses)
        .map(|(text, address)| {
            lookup::resolve(model, text, *address, active_only).unwrap_or_else(|| api::LookupAddressResult {
                address: text.clone(),
                ..Default::default()
            })
        })
        .collect();
    let decoded = Decoded::decode(fresh_full.encode_to_vec().as_slice()).expect("FULL decodes with prost");
    assert_eq!(decoded.results, expected, "FULL is the one-address answer");
    assert!(decoded.bindings.is_empty(), "FULL lists no bindings apart");
    assert_eq!(cached_full, fresh_full, "cached routes encode the same");
    compact_says_what_full_says(&texts, &compact, &expected);
    for (text, address) in texts.iter().zip(&addresses) {
        let whole = lookup::resolve(model, text, *address, active_only).map(|result| {
            contract::LookupAddressResponse {
                address: result.address,
                prefix_id: result.prefix_id,
                account_id: result.account_id,
                binding: result.binding,
            }
            .encode_to_vec()
        });
        for cached in [&RouteCache::default(), &cache] {
            let unary = lookup::answer_one(model, text, *address, active_only, cached, &mut RouteCache::default());
            assert_eq!(
                unary.map(|answer| answer.encode_to_vec()),
                whole,
                "the unary answer of {text:?} is the contract's message"
            );
        }
    }
}

/// A COMPACT answer to `addresses` against the FULL one's results: no address echoed and no
/// binding inline, a binding index exactly where a binding was found, every listed binding
/// listed once and pointed to, and written out as FULL (`results_for`), the same results.
pub fn compact_says_what_full_says(
    addresses: &[String],
    compact: &LookupAddressesResponse,
    full: &[api::LookupAddressResult],
) {
    let results = compact.results().expect("COMPACT results decode");
    let bindings = compact.bindings().expect("COMPACT bindings decode");
    let mut pointed = vec![false; bindings.len()];
    for result in &results {
        assert!(result.address.is_empty() && result.binding.is_none(), "{result:?}");
        assert_eq!(result.found, result.binding_index.is_some(), "{result:?}");
        if let Some(index) = result.binding_index {
            pointed[index as usize] = true;
        }
    }
    assert!(
        pointed.iter().all(|pointed| *pointed),
        "only matched bindings are listed"
    );
    let mut ids: Vec<&str> = bindings.iter().map(|binding| binding.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), bindings.len(), "each binding listed once");
    assert_eq!(
        compact.results_for(addresses).as_deref(),
        Ok(full),
        "COMPACT says what FULL says"
    );
}

/// Reads an input front to back; past its end every byte is 0.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        *first
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.byte())
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Up to 24 commands decided by the real rules (refusals skipped) on an empty model: prefixes
/// of three accounts in both families, bindings inside them, activations and deletions.
fn build_routing_model(model: &mut ReadModel, input: &mut Input) -> Created {
    assert_eq!(
        (model.state.n_prefixes(), model.state.n_bindings()),
        (0, 0),
        "starts empty"
    );
    let mut created = Created {
        prefixes: Vec::new(),
        bindings: Vec::new(),
    };
    for _ in 0..input.byte() % 25 {
        let pick = |list_len: usize, byte: u8| (list_len > 0).then(|| usize::from(byte) % list_len);
        let command = match input.byte() % 4 {
            0 => {
                let cidr = if input.byte() & 1 == 0 {
                    IpNet::new(Ipv4Addr::from(input.bytes::<4>()).into(), 16 + input.byte() % 9)
                } else {
                    let top: [u8; 6] = input.bytes();
                    let mut octets = [0; 16];
                    octets[..6].copy_from_slice(&top);
                    IpNet::new(Ipv6Addr::from(octets).into(), 32 + input.byte() % 17)
                };
                Command::CreatePrefix {
                    id: PrefixId(fresh_id()),
                    account_id: AccountId(Uuid::from_u128(1 + u128::from(input.byte() % 3))),
                    cidr: cidr
                        .map(|cidr| cidr.trunc())
                        .unwrap_or_else(|_| "192.0.2.0/24".parse().unwrap()),
                    asn: None,
                    description: String::new(),
                }
            }
            1 => {
                let Some(index) = pick(created.prefixes.len(), input.byte()) else {
                    continue;
                };
                let prefix = &created.prefixes[index];
                let longest = if prefix.cidr.addr().is_ipv4() { 32 } else { 128 };
                let length = prefix.cidr.prefix_len() + input.byte() % (longest - prefix.cidr.prefix_len() + 1);
                let cidr = IpNet::new(within(prefix.cidr, input.bytes()), length).map(|cidr| cidr.trunc());
                Command::CreateBinding {
                    id: BindingId(fresh_id()),
                    account_id: prefix.account_id,
                    prefix_id: prefix.id,
                    cidr: cidr.unwrap_or(prefix.cidr),
                    service: Service::ALL[usize::from(input.byte()) % Service::ALL.len()],
                    request_id: None,
                }
            }
            2 => {
                let Some(index) = pick(created.bindings.len(), input.byte()) else {
                    continue;
                };
                Command::ActivateBinding {
                    binding_id: created.bindings[index],
                }
            }
            _ => {
                let Some(index) = pick(created.bindings.len(), input.byte()) else {
                    continue;
                };
                let Some(binding) = model.state.binding_by_id(created.bindings[index]) else {
                    continue;
                };
                Command::DeleteBinding {
                    account_id: binding.account_id,
                    prefix_id: binding.prefix_id,
                    binding_id: binding.id,
                }
            }
        };
        match apply(model, &command) {
            Some(Outcome::Prefix(prefix)) => created.prefixes.push(prefix),
            Some(Outcome::Binding(binding)) => created.bindings.push(binding.id),
            _ => {}
        }
    }
    created
}

/// Deletes what `created` left (the most specific bindings first, then the prefixes).
fn clear_routing_model(model: &mut ReadModel, created: Created) {
    let mut live: Vec<(u8, BindingId)> = created
        .bindings
        .iter()
        .filter_map(|id| model.state.binding_by_id(*id))
        .map(|binding| (binding.cidr.prefix_len(), binding.id))
        .collect();
    live.sort_unstable_by(|a, b| b.cmp(a));
    for (_, binding_id) in live {
        let Some(binding) = model.state.binding_by_id(binding_id) else {
            continue;
        };
        let command = Command::DeleteBinding {
            account_id: binding.account_id,
            prefix_id: binding.prefix_id,
            binding_id,
        };
        apply(model, &command);
    }
    for prefix in created.prefixes {
        let command = Command::DeletePrefix {
            account_id: prefix.account_id,
            prefix_id: prefix.id,
        };
        apply(model, &command);
    }
    assert_eq!(
        (model.state.n_prefixes(), model.state.n_bindings()),
        (0, 0),
        "left empty"
    );
}

/// Decides `command` and applies its events; `None` if the rules refused it.
fn apply(model: &mut ReadModel, command: &Command) -> Option<Outcome> {
    let now = Micros(i64::try_from(model.head).unwrap_or(i64::MAX));
    model.decide_and_apply(command, now).ok()
}

/// Ids never reused within a process (a deleted binding's id stays taken).
fn fresh_id() -> Uuid {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    Uuid::from_u128(u128::from(NEXT.fetch_add(1, Ordering::Relaxed)) << 64)
}

/// The address `offset` points to inside `cidr` (its bits below the prefix length).
fn within(cidr: IpNet, offset: [u8; 16]) -> IpAddr {
    match cidr {
        IpNet::V4(net) => {
            let offset = u32::from_be_bytes([offset[0], offset[1], offset[2], offset[3]]);
            Ipv4Addr::from(u32::from(net.network()) | (offset & u32::from(net.hostmask()))).into()
        }
        IpNet::V6(net) => {
            let offset = u128::from_be_bytes(offset);
            Ipv6Addr::from(u128::from(net.network()) | (offset & u128::from(net.hostmask()))).into()
        }
    }
}

/// Up to 64 addresses: inside the model's prefixes (in canonical, IPv4-mapped or expanded
/// spelling), anywhere, or any text.
fn batch_addresses(input: &mut Input, prefixes: &[IpNet]) -> Vec<String> {
    let mut texts = Vec::new();
    while !input.is_empty() && texts.len() < 64 {
        let choice = input.byte();
        let inside = (!prefixes.is_empty()).then(|| prefixes[usize::from(input.byte()) % prefixes.len()]);
        let address = match inside {
            Some(cidr) if !choice.is_multiple_of(8) => within(cidr, input.bytes()),
            _ => IpAddr::from(input.bytes::<16>()).to_canonical(),
        };
        let text = match (choice >> 3) % 4 {
            0 => address.to_string(),
            1 => match address {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().to_string(),
                IpAddr::V6(v6) => v6.to_string().to_uppercase(),
            },
            2 => match address {
                IpAddr::V4(v4) => format!("::ffff:{v4}"),
                IpAddr::V6(v6) => v6.segments().map(|segment| format!("{segment:04x}")).join(":"),
            },
            _ => {
                let length = usize::from(input.byte() % 48);
                let raw: Vec<u8> = (0..length).map(|_| input.byte()).collect();
                String::from_utf8_lossy(&raw).into_owned()
            }
        };
        texts.push(text);
    }
    texts
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
