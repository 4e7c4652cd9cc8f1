//! The mapping between domain types and the stored schema (`addressing.events.v1`): events,
//! records and snapshots. What is framed around them (format, checksum, runs) is the parent
//! module's.

use std::sync::Arc;

use ipnet::IpNet;

use super::LogPosition;
use crate::domain::network::write_cidr;
use crate::domain::state::{Changes, Records, SnapshotRecords};
use crate::domain::{
    AccountId, Actor, Binding, BindingId, Change, Event, Micros, Prefix, PrefixId, ProvisioningState, Service,
    ServiceId,
};
use crate::pb::events as stored;

/// Appends to `buf` the stored form of a snapshot of `records` as of `revision`: the bytes
/// prost makes of a `stored::Snapshot`, written a record at a time instead of from one
/// message holding a converted copy of every record.
pub(super) fn encode_snapshot_body(
    revision: u64,
    log_record_checksum: Option<u32>,
    records: &impl SnapshotRecords,
    buf: &mut Vec<u8>,
) {
    use prost::encoding::{fixed32, uint64};
    // Sized at once (a binding's record is ~110 bytes, an idempotency key's ~150): growing it
    // step by step copies tens of megabytes again.
    buf.reserve(
        128 * records.prefixes().size_hint().0
            + 112 * records.bindings().size_hint().0
            + 160 * records.remembered_requests().size_hint().0,
    );
    crate::huge_pages::advise_if_own_mapping(buf.spare_capacity_mut());
    // Field by field in the order prost's derived encoding uses (the declaration order), so
    // that the bytes are exactly the message's.
    if revision != 0 {
        uint64::encode(1, &revision, buf);
    }
    let mut writer = RecordWriter::default();
    for prefix in records.prefixes() {
        writer.put_prefix(prefix);
        put_message(2, &writer.record, buf);
    }
    for binding in records.bindings() {
        writer.put_binding(binding);
        put_message(3, &writer.record, buf);
    }
    let mut request = Vec::new();
    for (account_id, request_id, binding) in records.remembered_requests() {
        writer.put_binding(binding);
        request.clear();
        put_bytes(1, account_id.as_bytes(), &mut request);
        put_bytes(2, request_id.as_bytes(), &mut request);
        put_message(3, &writer.record, &mut request);
        put_message(4, &request, buf);
    }
    if let Some(checksum) = log_record_checksum {
        fixed32::encode(5, &checksum, buf);
    }
}

/// Bindings' and prefixes' stored records (`stored::BindingRecord`, `stored::PrefixRecord`)
/// encoded as prost encodes [`binding_record`]'s and [`prefix_record`]'s, into buffers reused
/// from one record to the next: a snapshot holds hundreds of thousands, and the message form
/// allocates five buffers for each.
#[derive(Default)]
struct RecordWriter {
    /// The last record written.
    record: Vec<u8>,
    cidr: Vec<u8>,
}

impl RecordWriter {
    fn put_binding(&mut self, binding: &Binding) {
        let record = &mut self.record;
        record.clear();
        put_bytes(1, binding.id.as_bytes(), record);
        put_bytes(2, binding.account_id.as_bytes(), record);
        put_bytes(3, binding.prefix_id.as_bytes(), record);
        self.cidr.clear();
        write_cidr(&binding.cidr, &mut self.cidr);
        put_bytes(4, &self.cidr, record);
        put_bytes(5, binding.service.id().as_bytes(), record);
        put_varint(6, stored_state(binding.state) as i32 as u64, record);
        put_varint(7, binding.created_at.0 as u64, record);
        put_varint(8, binding.modified_at.0 as u64, record);
    }

    fn put_prefix(&mut self, prefix: &Prefix) {
        use prost::encoding::{WireType, encode_key, encode_varint};
        let record = &mut self.record;
        record.clear();
        put_bytes(1, prefix.id.as_bytes(), record);
        put_bytes(2, prefix.account_id.as_bytes(), record);
        self.cidr.clear();
        write_cidr(&prefix.cidr, &mut self.cidr);
        put_bytes(3, &self.cidr, record);
        // `optional`: written whenever present, zero included.
        if let Some(asn) = prefix.asn {
            encode_key(4, WireType::Varint, record);
            encode_varint(u64::from(asn), record);
        }
        put_bytes(5, prefix.description.as_bytes(), record);
        put_varint(6, prefix.created_at.0 as u64, record);
        put_varint(7, prefix.modified_at.0 as u64, record);
    }
}

/// An event's stored form (`stored::Event`) encoded as prost encodes [`to_stored`]'s, into
/// buffers reused from one event to the next. The log writes every accepted change this way,
/// on the writer's path: the message form allocates about a dozen buffers per event (ids
/// copied into vectors, the CIDR formatted, the actor's strings cloned) only to encode and
/// drop them.
#[derive(Default)]
pub(super) struct EventWriter {
    records: RecordWriter,
    change: Vec<u8>,
    actor: Vec<u8>,
    event: Vec<u8>,
}

impl EventWriter {
    /// `event`'s encoded message (the body of an `EventRun`'s element, or of a format-1
    /// record), valid until the next call.
    pub(super) fn put(&mut self, event: &Event) -> &[u8] {
        // The change's tag in the `oneof`; each change is a message whose field 1 is its record.
        let tag = match &event.change {
            Change::PrefixCreated(_) => 2,
            Change::PrefixUpdated(_) => 3,
            Change::PrefixDeleted(_) => 4,
            Change::BindingCreated { .. } => 5,
            Change::BindingProvisioningStateChanged(_) => 6,
            Change::BindingDeleted(_) => 7,
        };
        let records = &mut self.records;
        match &event.change {
            Change::PrefixCreated(prefix) | Change::PrefixUpdated(prefix) | Change::PrefixDeleted(prefix) => {
                records.put_prefix(prefix)
            }
            Change::BindingCreated { binding, .. }
            | Change::BindingProvisioningStateChanged(binding)
            | Change::BindingDeleted(binding) => records.put_binding(binding),
        }
        let change = &mut self.change;
        change.clear();
        put_message(1, &records.record, change);
        if let Change::BindingCreated { request_id, .. } = &event.change {
            put_bytes(2, request_id.as_deref().unwrap_or_default().as_bytes(), change);
        }
        let out = &mut self.event;
        out.clear();
        put_varint(1, event.time.0 as u64, out);
        // A `oneof` member and a present message are written even when empty.
        put_message(tag, change, out);
        if let Some(actor) = &event.actor {
            let record = &mut self.actor;
            record.clear();
            put_bytes(1, actor.principal.as_bytes(), record);
            put_bytes(2, actor.credential.as_bytes(), record);
            put_bytes(3, actor.via.as_bytes(), record);
            put_bytes(4, actor.call_id.as_bytes(), record);
            put_bytes(5, actor.request_id.as_bytes(), record);
            put_bytes(6, actor.peer.as_bytes(), record);
            put_message(8, record, out);
        }
        out
    }
}

/// A `bytes` or `string` field as prost writes it: left out when empty.
fn put_bytes(tag: u32, bytes: &[u8], buf: &mut Vec<u8>) {
    if !bytes.is_empty() {
        put_message(tag, bytes, buf);
    }
}

/// A message field (or any length-delimited one, written even when empty) as prost writes it.
pub(super) fn put_message(tag: u32, encoded: &[u8], buf: &mut Vec<u8>) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(encoded.len() as u64, buf);
    buf.extend_from_slice(encoded);
}

/// An integer or enum field as prost writes it (a varint): left out when zero.
fn put_varint(tag: u32, value: u64, buf: &mut Vec<u8>) {
    use prost::encoding::{WireType, encode_key, encode_varint};
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

/// The stored form of a snapshot of `state` as of `revision`, as one message: what
/// [`encode_snapshot_body`] must write.
#[cfg(test)]
pub(super) fn snapshot_record(
    revision: u64,
    log_record_checksum: Option<u32>,
    state: &crate::domain::State,
) -> stored::Snapshot {
    stored::Snapshot {
        revision,
        log_record_checksum,
        prefixes: state.prefixes().map(prefix_record).collect(),
        bindings: state.bindings().map(binding_record).collect(),
        requests: state
            .remembered_requests()
            .map(|(account_id, request_id, binding)| stored::RememberedRequest {
                account_id: account_id.as_bytes().to_vec(),
                request_id: request_id.to_string(),
                binding: Some(binding_record(binding)),
            })
            .collect(),
    }
}

/// The records a stored snapshot holds.
pub(super) fn records_of(snapshot: stored::Snapshot) -> Result<Records, String> {
    Ok(Records::new(
        prefixes_of(snapshot.prefixes)?,
        bindings_of(snapshot.bindings)?,
        requests_of(snapshot.requests)?,
    ))
}

/// Appends to `buf` the stored form of a delta (`stored::SnapshotDelta`): the changes made
/// after the checkpoint at `after` up to `revision`, whose log record has `log_record_checksum`.
pub(super) fn encode_delta_body(
    after: LogPosition,
    revision: u64,
    log_record_checksum: u32,
    changes: &Changes,
    buf: &mut Vec<u8>,
) {
    use prost::encoding::{fixed32, uint64};
    // Fields 1-5 are a snapshot's; protobuf takes fields in any order.
    encode_snapshot_body(revision, Some(log_record_checksum), changes, buf);
    if after.revision != 0 {
        uint64::encode(6, &after.revision, buf);
    }
    fixed32::encode(7, &after.log_record_checksum.unwrap_or_default(), buf);
    for id in changes.deleted_prefixes() {
        put_message(8, id.as_bytes(), buf);
    }
    for id in changes.deleted_bindings() {
        put_message(9, id.as_bytes(), buf);
    }
}

/// The changes a stored delta holds.
pub(super) fn changes_of(delta: stored::SnapshotDelta) -> Result<Changes, String> {
    let deleted_prefixes = (delta.deleted_prefix_ids.iter())
        .map(|id| PrefixId::from_bytes(id).ok_or("bad deleted prefix id"))
        .collect::<Result<_, _>>()?;
    let deleted_bindings = (delta.deleted_binding_ids.iter())
        .map(|id| BindingId::from_bytes(id).ok_or("bad deleted binding id"))
        .collect::<Result<_, _>>()?;
    Ok(Changes::from_parts(
        prefixes_of(delta.prefixes)?,
        deleted_prefixes,
        bindings_of(delta.bindings)?,
        deleted_bindings,
        requests_of(delta.requests)?,
    ))
}

fn prefixes_of(records: Vec<stored::PrefixRecord>) -> Result<Vec<Prefix>, String> {
    records.into_iter().map(|record| prefix(Some(record))).collect()
}

fn bindings_of(records: Vec<stored::BindingRecord>) -> Result<Vec<Binding>, String> {
    records.into_iter().map(|record| binding(Some(record))).collect()
}

fn requests_of(requests: Vec<stored::RememberedRequest>) -> Result<Vec<(AccountId, String, Binding)>, String> {
    (requests.into_iter())
        .map(|request| {
            let account_id = AccountId::from_bytes(&request.account_id).ok_or("bad account id")?;
            Ok((account_id, request.request_id, binding(request.binding)?))
        })
        .collect()
}

/// The stored form of `event` as one message: what [`EventWriter::put`] must write.
#[cfg(test)]
pub(super) fn to_stored(event: &Event) -> stored::Event {
    use stored::event::Change as Stored;
    let change = match &event.change {
        Change::PrefixCreated(prefix) => Stored::PrefixCreated(stored::PrefixCreated {
            prefix: Some(prefix_record(prefix)),
        }),
        Change::PrefixUpdated(prefix) => Stored::PrefixUpdated(stored::PrefixUpdated {
            prefix: Some(prefix_record(prefix)),
        }),
        Change::PrefixDeleted(prefix) => Stored::PrefixDeleted(stored::PrefixDeleted {
            prefix: Some(prefix_record(prefix)),
        }),
        Change::BindingCreated { binding, request_id } => Stored::BindingCreated(stored::BindingCreated {
            binding: Some(binding_record(binding)),
            request_id: request_id.clone().unwrap_or_default(),
        }),
        Change::BindingProvisioningStateChanged(binding) => {
            Stored::BindingProvisioningStateChanged(stored::BindingProvisioningStateChanged {
                binding: Some(binding_record(binding)),
            })
        }
        Change::BindingDeleted(binding) => Stored::BindingDeleted(stored::BindingDeleted {
            binding: Some(binding_record(binding)),
        }),
    };
    stored::Event {
        time_micros: event.time.0,
        change: Some(change),
        actor: event.actor.as_deref().map(actor_record),
    }
}

pub(crate) fn actor_record(actor: &Actor) -> stored::Actor {
    stored::Actor {
        principal: actor.principal.clone(),
        credential: actor.credential.clone(),
        via: actor.via.clone(),
        call_id: actor.call_id.clone(),
        request_id: actor.request_id.clone(),
        peer: actor.peer.clone(),
    }
}

pub(crate) fn actor(record: stored::Actor) -> Actor {
    Actor {
        principal: record.principal,
        credential: record.credential,
        via: record.via,
        call_id: record.call_id,
        request_id: record.request_id,
        peer: record.peer,
    }
}

pub(super) fn from_stored(revision: u64, event: stored::Event) -> Result<Event, String> {
    use stored::event::Change as Stored;
    let change = match event.change.ok_or("event has no change")? {
        Stored::PrefixCreated(created) => Change::PrefixCreated(prefix(created.prefix)?),
        Stored::PrefixUpdated(updated) => Change::PrefixUpdated(prefix(updated.prefix)?),
        Stored::PrefixDeleted(deleted) => Change::PrefixDeleted(prefix(deleted.prefix)?),
        Stored::BindingCreated(created) => Change::BindingCreated {
            binding: binding(created.binding)?,
            request_id: Some(created.request_id).filter(|id| !id.is_empty()),
        },
        Stored::BindingProvisioningStateChanged(changed) => {
            Change::BindingProvisioningStateChanged(binding(changed.binding)?)
        }
        Stored::BindingDeleted(deleted) => Change::BindingDeleted(binding(deleted.binding)?),
    };
    Ok(Event {
        revision,
        time: Micros(event.time_micros),
        change,
        actor: event.actor.map(|record| Arc::new(actor(record))),
    })
}

pub(crate) fn prefix_record(prefix: &Prefix) -> stored::PrefixRecord {
    stored::PrefixRecord {
        id: prefix.id.as_bytes().to_vec(),
        account_id: prefix.account_id.as_bytes().to_vec(),
        cidr: prefix.cidr.to_string(),
        asn: prefix.asn,
        description: prefix.description.clone(),
        created_at_micros: prefix.created_at.0,
        modified_at_micros: prefix.modified_at.0,
    }
}

fn stored_state(state: ProvisioningState) -> stored::ProvisioningState {
    match state {
        ProvisioningState::Provisioning => stored::ProvisioningState::Provisioning,
        ProvisioningState::Active => stored::ProvisioningState::Active,
    }
}

pub(crate) fn binding_record(binding: &Binding) -> stored::BindingRecord {
    let state = stored_state(binding.state);
    stored::BindingRecord {
        id: binding.id.as_bytes().to_vec(),
        account_id: binding.account_id.as_bytes().to_vec(),
        prefix_id: binding.prefix_id.as_bytes().to_vec(),
        cidr: binding.cidr.to_string(),
        service_id: binding.service.id().as_bytes().to_vec(),
        state: state as i32,
        created_at_micros: binding.created_at.0,
        modified_at_micros: binding.modified_at.0,
    }
}

pub(crate) fn prefix(record: Option<stored::PrefixRecord>) -> Result<Prefix, String> {
    let record = record.ok_or("prefix record missing")?;
    Ok(Prefix {
        id: PrefixId::from_bytes(&record.id).ok_or("bad prefix id")?,
        account_id: AccountId::from_bytes(&record.account_id).ok_or("bad account id")?,
        cidr: cidr(&record.cidr)?,
        asn: record.asn,
        description: record.description,
        created_at: Micros(record.created_at_micros),
        modified_at: Micros(record.modified_at_micros),
    })
}

pub(crate) fn binding(record: Option<stored::BindingRecord>) -> Result<Binding, String> {
    let record = record.ok_or("binding record missing")?;
    let service_id = ServiceId::from_bytes(&record.service_id).ok_or("bad service id")?;
    let state = match stored::ProvisioningState::try_from(record.state) {
        Ok(stored::ProvisioningState::Provisioning) => ProvisioningState::Provisioning,
        Ok(stored::ProvisioningState::Active) => ProvisioningState::Active,
        _ => return Err(format!("unknown provisioning state {}", record.state)),
    };
    Ok(Binding {
        id: BindingId::from_bytes(&record.id).ok_or("bad binding id")?,
        account_id: AccountId::from_bytes(&record.account_id).ok_or("bad account id")?,
        prefix_id: PrefixId::from_bytes(&record.prefix_id).ok_or("bad prefix id")?,
        cidr: cidr(&record.cidr)?,
        service: Service::from_id(service_id).ok_or_else(|| format!("unknown service {service_id}"))?,
        state,
        created_at: Micros(record.created_at_micros),
        modified_at: Micros(record.modified_at_micros),
    })
}

pub(crate) fn cidr(text: &str) -> Result<IpNet, String> {
    text.parse().map_err(|_| format!("bad cidr {text:?}"))
}

/// An event at `revision` of a kind, size and shape `rng` picks: every change, with and
/// without an actor, strings empty and up to 300 bytes (so that lengths take one or two
/// bytes), times zero, negative and large, IPv4 and IPv6 CIDRs, an ASN absent, zero or large.
#[cfg(test)]
pub(super) fn assorted_event(rng: &mut fastrand::Rng, revision: u64) -> Event {
    use crate::domain::fixtures;
    let text = |rng: &mut fastrand::Rng| match rng.u8(..3) {
        0 => String::new(),
        1 => "x".repeat(rng.usize(1..20)),
        _ => "é".repeat(rng.usize(40..150)),
    };
    let micros = |rng: &mut fastrand::Rng| Micros([0, -1, rng.i64(..), rng.i64(1..1 << 53)][rng.usize(..4)]);
    let (prefix_cidr, cidr) = match rng.bool() {
        true => ("10.1.0.0/16", format!("10.1.{}.0/24", rng.u8(..))),
        false => ("2001:db8::/32", format!("2001:db8:{:x}::/48", rng.u16(..))),
    };
    let mut prefix = fixtures::prefix(prefix_cidr);
    prefix.asn = [None, Some(0), Some(rng.u32(..))][rng.usize(..3)];
    prefix.description = text(rng);
    (prefix.created_at, prefix.modified_at) = (micros(rng), micros(rng));
    let states = [ProvisioningState::Provisioning, ProvisioningState::Active];
    let mut binding = fixtures::binding(&prefix, &cidr, Service::Cdn, states[rng.usize(..2)]);
    (binding.created_at, binding.modified_at) = (micros(rng), micros(rng));
    let change = match rng.u8(..6) {
        0 => Change::PrefixCreated(prefix),
        1 => Change::PrefixUpdated(prefix),
        2 => Change::PrefixDeleted(prefix),
        3 => Change::BindingCreated {
            binding,
            request_id: [None, Some(String::new()), Some(text(rng))][rng.usize(..3)].clone(),
        },
        4 => Change::BindingProvisioningStateChanged(binding),
        _ => Change::BindingDeleted(binding),
    };
    let actor = rng.bool().then(|| {
        Arc::new(Actor {
            principal: text(rng),
            credential: text(rng),
            via: text(rng),
            call_id: text(rng),
            request_id: text(rng),
            peer: text(rng),
        })
    });
    Event {
        revision,
        time: micros(rng),
        change,
        actor,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn an_event_is_written_as_prost_writes_its_message() {
        let mut rng = fastrand::Rng::with_seed(11);
        // One writer for all, as the log uses it: nothing of one event may reach the next.
        let mut writer = EventWriter::default();
        for revision in 1..=5_000 {
            let event = assorted_event(&mut rng, revision);
            assert_eq!(writer.put(&event), to_stored(&event).encode_to_vec(), "{event:?}");
        }
    }
}
