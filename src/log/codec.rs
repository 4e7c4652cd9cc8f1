//! The stored form of an event: a one-byte format version, the CRC-32 of the body (little
//! endian), and the body, an `addressing.events.v1.Event` in protobuf. Protobuf lets the schema
//! grow without breaking old data; the version byte lets a server refuse data written by a
//! newer one; the checksum catches a damaged disk before a wrong state is served.

use ipnet::IpNet;
use prost::Message;

use crate::domain::{
    AccountId, Binding, BindingId, Change, Event, Micros, Prefix, PrefixId, ProvisioningState, Service, ServiceId,
    State,
};
use crate::pb::events as stored;

/// The record format this build writes and the newest it reads.
pub const FORMAT_VERSION: u8 = 1;
const HEADER_LEN: usize = 5;

/// Why a stored record cannot be turned back into an event.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("record is {0} bytes, shorter than its header")]
    Truncated(usize),
    #[error("record format {0} is newer than this server understands ({FORMAT_VERSION}); run a newer ipam-bindings")]
    NewerFormat(u8),
    #[error("record format {0} is unknown")]
    UnknownFormat(u8),
    #[error("checksum mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    Checksum { stored: u32, computed: u32 },
    #[error("body is not a valid event: {0}")]
    Body(String),
}

pub fn encode(event: &Event) -> Vec<u8> {
    seal(&to_stored(event).encode_to_vec())
}

pub fn decode(revision: u64, record: &[u8]) -> Result<Event, DecodeError> {
    let body = unseal(record)?;
    let event = stored::Event::decode(body).map_err(|error| DecodeError::Body(error.to_string()))?;
    from_stored(revision, event).map_err(DecodeError::Body)
}

/// The stored form of a snapshot of `state` as of `revision` (same header as an event).
pub fn encode_snapshot(revision: u64, state: &State) -> Vec<u8> {
    let snapshot = stored::Snapshot {
        revision,
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
    };
    seal(&snapshot.encode_to_vec())
}

/// A snapshot's revision and state.
pub fn decode_snapshot(record: &[u8]) -> Result<(u64, State), DecodeError> {
    let body = unseal(record)?;
    let snapshot = stored::Snapshot::decode(body).map_err(|error| DecodeError::Body(error.to_string()))?;
    let prefixes = snapshot
        .prefixes
        .into_iter()
        .map(|record| prefix(Some(record)))
        .collect::<Result<Vec<_>, _>>();
    let bindings = snapshot
        .bindings
        .into_iter()
        .map(|record| binding(Some(record)))
        .collect::<Result<Vec<_>, _>>();
    let requests = snapshot
        .requests
        .into_iter()
        .map(|request| {
            let account_id = AccountId::from_bytes(&request.account_id).ok_or("bad account id")?;
            Ok((account_id, request.request_id, binding(request.binding)?))
        })
        .collect::<Result<Vec<_>, String>>();
    let state = State::restore(
        prefixes.map_err(DecodeError::Body)?,
        bindings.map_err(DecodeError::Body)?,
        requests.map_err(DecodeError::Body)?,
    );
    Ok((snapshot.revision, state))
}

/// Checks a record's format and checksum without decoding its body.
pub fn check(record: &[u8]) -> Result<(), DecodeError> {
    unseal(record).map(|_| ())
}

fn seal(body: &[u8]) -> Vec<u8> {
    let mut record = Vec::with_capacity(HEADER_LEN + body.len());
    record.push(FORMAT_VERSION);
    record.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    record.extend_from_slice(body);
    record
}

/// The body of a record, once its format and checksum are checked.
fn unseal(record: &[u8]) -> Result<&[u8], DecodeError> {
    if record.len() < HEADER_LEN {
        return Err(DecodeError::Truncated(record.len()));
    }
    match record[0] {
        FORMAT_VERSION => {}
        version if version > FORMAT_VERSION => return Err(DecodeError::NewerFormat(version)),
        version => return Err(DecodeError::UnknownFormat(version)),
    }
    let stored_checksum = u32::from_le_bytes([record[1], record[2], record[3], record[4]]);
    let body = &record[HEADER_LEN..];
    let computed = crc32fast::hash(body);
    if computed != stored_checksum {
        return Err(DecodeError::Checksum {
            stored: stored_checksum,
            computed,
        });
    }
    Ok(body)
}

fn to_stored(event: &Event) -> stored::Event {
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
    }
}

fn from_stored(revision: u64, event: stored::Event) -> Result<Event, String> {
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
    })
}

fn prefix_record(prefix: &Prefix) -> stored::PrefixRecord {
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

fn binding_record(binding: &Binding) -> stored::BindingRecord {
    let state = match binding.state {
        ProvisioningState::Provisioning => stored::ProvisioningState::Provisioning,
        ProvisioningState::Active => stored::ProvisioningState::Active,
    };
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

fn prefix(record: Option<stored::PrefixRecord>) -> Result<Prefix, String> {
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

fn binding(record: Option<stored::BindingRecord>) -> Result<Binding, String> {
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

fn cidr(text: &str) -> Result<IpNet, String> {
    text.parse().map_err(|_| format!("bad cidr {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        let binding = Binding {
            id: BindingId::generate(),
            account_id: AccountId::generate(),
            prefix_id: PrefixId::generate(),
            cidr: "192.0.2.0/24".parse().unwrap(),
            service: Service::Cdn,
            state: ProvisioningState::Provisioning,
            created_at: Micros(1),
            modified_at: Micros(2),
        };
        Event {
            revision: 7,
            time: Micros(3),
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
    }

    #[test]
    fn a_snapshot_restores_the_same_state() {
        use crate::domain::{Command, Outcome};
        let mut state = State::default();
        let mut revision = 0;
        let mut run = |state: &mut State, command: Command| {
            let decision = state.decide(&command, Micros(revision as i64)).unwrap();
            for change in decision.changes {
                revision += 1;
                state.apply(&Event {
                    revision,
                    time: Micros(7),
                    change,
                });
            }
            decision.outcome
        };
        let account_id = AccountId::generate();
        let create = Command::CreatePrefix {
            account_id,
            cidr: "192.0.2.0/24".parse().unwrap(),
            asn: Some(1),
            description: "d".into(),
        };
        let Outcome::Prefix(prefix) = run(&mut state, create) else {
            panic!()
        };
        let bind = |cidr: &str, service, request_id: &str| Command::CreateBinding {
            account_id,
            prefix_id: prefix.id,
            cidr: cidr.parse().unwrap(),
            service,
            request_id: Some(request_id.into()),
        };
        let Outcome::Binding(wide) = run(&mut state, bind("192.0.2.0/24", Service::MagicTransit, "a")) else {
            panic!()
        };
        run(&mut state, Command::ActivateBinding { binding_id: wide.id });
        let Outcome::Binding(narrow) = run(&mut state, bind("192.0.2.1/32", Service::Cdn, "b")) else {
            panic!()
        };
        run(
            &mut state,
            Command::DeleteBinding {
                account_id,
                prefix_id: prefix.id,
                binding_id: narrow.id,
            },
        );

        let (snapshot_revision, restored) = decode_snapshot(&encode_snapshot(5, &state)).unwrap();
        assert_eq!(snapshot_revision, 5);
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
        assert_eq!(
            listing(&restored).2.len(),
            2,
            "the deleted binding's request id is remembered too"
        );
        // And decisions agree: a retry of "b" replays the deleted binding.
        let retry = bind("192.0.2.1/32", Service::Cdn, "b");
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
