//! The stored form of an event: a one-byte format version, the CRC-32 of the body (little
//! endian), and the body, an `addressing.events.v1.Event` in protobuf. Protobuf lets the schema
//! grow without breaking old data; the version byte lets a server refuse data written by a
//! newer one; the checksum catches a damaged disk before a wrong state is served.

use ipnet::IpNet;
use prost::Message;

use crate::domain::{
    AccountId, Binding, BindingId, Change, Event, Micros, Prefix, PrefixId, ProvisioningState, Service, ServiceId,
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
    let body = to_stored(event).encode_to_vec();
    let mut record = Vec::with_capacity(HEADER_LEN + body.len());
    record.push(FORMAT_VERSION);
    record.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    record.extend_from_slice(&body);
    record
}

pub fn decode(revision: u64, record: &[u8]) -> Result<Event, DecodeError> {
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
    let event = stored::Event::decode(body).map_err(|error| DecodeError::Body(error.to_string()))?;
    from_stored(revision, event).map_err(DecodeError::Body)
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
