//! `addressing.v1.ServiceBindingEvent` by hand (build.rs maps the message here), so that an
//! event sent to a thousand watchers is converted and encoded once, not once per watcher:
//! formatting the binding's ids, its CIDR and timestamps and encoding them per watch stream was
//! the fan-out's largest own cost (docs/benchmarks.md, watch fan-out).
//!
//! A client decodes it as prost would, into the public fields. The server builds it
//! [`encoded`](ServiceBindingEvent::encoded) from the event's shared wire form: then it holds
//! that and writes it as is, and its public fields stay empty.

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, int32, message, string, uint64};
use prost::{DecodeError, Message};
use prost_types::Timestamp;

use crate::pb::api;

/// The field numbers of the contract's message.
const REVISION: u32 = 1;
const KIND: u32 = 2;
const BINDING: u32 = 3;
const TIME: u32 = 4;
const ACTOR: u32 = 5;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServiceBindingEvent {
    pub revision: u64,
    /// A `ServiceBindingEventKind`, as prost keeps enums.
    pub kind: i32,
    /// The binding as of this event (as it was, for DELETED).
    pub binding: Option<api::ServiceBinding>,
    pub time: Option<Timestamp>,
    /// The principal who made the change.
    pub actor: String,
    /// The whole message encoded, when the server built it from an event's shared wire form.
    encoded: Bytes,
}

impl ServiceBindingEvent {
    /// A message that writes `encoded` (an encoded `ServiceBindingEvent`) as is.
    pub fn encoded(encoded: Bytes) -> ServiceBindingEvent {
        ServiceBindingEvent {
            encoded,
            ..ServiceBindingEvent::default()
        }
    }

    /// An event from its fields, as prost's generated message would hold them.
    pub fn new(
        revision: u64,
        kind: api::ServiceBindingEventKind,
        binding: api::ServiceBinding,
        time: Timestamp,
        actor: String,
    ) -> ServiceBindingEvent {
        ServiceBindingEvent {
            revision,
            kind: kind as i32,
            binding: Some(binding),
            time: Some(time),
            actor,
            encoded: Bytes::new(),
        }
    }

    /// `kind` as the enum; an unknown value reads as UNSPECIFIED (prost's generated getter).
    pub fn kind(&self) -> api::ServiceBindingEventKind {
        api::ServiceBindingEventKind::try_from(self.kind).unwrap_or_default()
    }
}

impl Message for ServiceBindingEvent {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.encoded.is_empty() {
            buf.put_slice(&self.encoded);
            return;
        }
        if self.revision != 0 {
            uint64::encode(REVISION, &self.revision, buf);
        }
        if self.kind != 0 {
            int32::encode(KIND, &self.kind, buf);
        }
        if let Some(binding) = &self.binding {
            message::encode(BINDING, binding, buf);
        }
        if let Some(time) = &self.time {
            message::encode(TIME, time, buf);
        }
        if !self.actor.is_empty() {
            string::encode(ACTOR, &self.actor, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let field = |name| super::in_field("ServiceBindingEvent", name);
        match tag {
            REVISION => uint64::merge(wire_type, &mut self.revision, buf, ctx).map_err(field("revision")),
            KIND => int32::merge(wire_type, &mut self.kind, buf, ctx).map_err(field("kind")),
            BINDING => message::merge(wire_type, self.binding.get_or_insert_with(Default::default), buf, ctx)
                .map_err(field("binding")),
            TIME => message::merge(wire_type, self.time.get_or_insert_with(Default::default), buf, ctx)
                .map_err(field("time")),
            ACTOR => string::merge(wire_type, &mut self.actor, buf, ctx).map_err(field("actor")),
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        if !self.encoded.is_empty() {
            return self.encoded.len();
        }
        (if self.revision != 0 {
            uint64::encoded_len(REVISION, &self.revision)
        } else {
            0
        }) + (if self.kind != 0 {
            int32::encoded_len(KIND, &self.kind)
        } else {
            0
        }) + self
            .binding
            .as_ref()
            .map_or(0, |binding| message::encoded_len(BINDING, binding))
            + self.time.as_ref().map_or(0, |time| message::encoded_len(TIME, time))
            + (if self.actor.is_empty() {
                0
            } else {
                string::encoded_len(ACTOR, &self.actor)
            })
    }

    fn clear(&mut self) {
        *self = ServiceBindingEvent::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::robustness::contract::ServiceBindingEvent as Contract;

    fn contract_event() -> Contract {
        Contract {
            revision: 300,
            kind: api::ServiceBindingEventKind::ProvisioningStateChanged as i32,
            binding: Some(api::ServiceBinding {
                id: "c".repeat(32),
                cidr: "192.0.2.0/24".into(),
                provisioning: Some(api::Provisioning {
                    state: api::ProvisioningState::Active as i32,
                }),
                ..Default::default()
            }),
            time: Some(Timestamp {
                seconds: 1_700_000_000,
                nanos: 5_000,
            }),
            actor: "system:rollout".into(),
        }
    }

    #[test]
    fn an_event_is_the_contract_message_by_fields_and_encoded() {
        for expected in [contract_event(), Contract::default()] {
            let bytes = expected.encode_to_vec();
            let decoded = ServiceBindingEvent::decode(bytes.as_slice()).unwrap();
            assert_eq!(
                (
                    decoded.revision,
                    decoded.kind,
                    &decoded.binding,
                    &decoded.time,
                    &decoded.actor
                ),
                (
                    expected.revision,
                    expected.kind,
                    &expected.binding,
                    &expected.time,
                    &expected.actor
                )
            );
            // By its fields, as a client would send it, and as the server sends the shared form.
            assert_eq!(decoded.encode_to_vec(), bytes);
            assert_eq!(decoded.encoded_len(), bytes.len());
            let shared = ServiceBindingEvent::encoded(Bytes::from(bytes.clone()));
            assert_eq!(shared.encode_to_vec(), bytes);
            assert_eq!(shared.encoded_len(), bytes.len());
        }
        let unknown_kind = ServiceBindingEvent {
            kind: 99,
            ..ServiceBindingEvent::default()
        };
        assert_eq!(unknown_kind.kind(), api::ServiceBindingEventKind::Unspecified);
    }
}
