//! `addressing.v1.RouteDelta` by hand (build.rs maps the message here), so that a delta sent to
//! many WatchRoutes streams is converted and encoded once, not once per stream: each route's
//! addresses, CIDRs and ids are formatted as text, which was every route watcher's own work
//! for every delta (docs/benchmarks.md, route watchers).
//!
//! A client decodes it as prost would, into the public fields. The server builds it
//! [`encoded`](RouteDelta::encoded) from a delta's shared wire form: then it holds that and
//! writes it as is, and its public fields stay empty.

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, int64, message};
use prost::{DecodeError, Message};

use crate::pb::api;

/// The field numbers of the contract's message.
const REVISION: u32 = 1;
const REMOVED: u32 = 2;
const ADDED: u32 = 3;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteDelta {
    pub revision: i64,
    pub removed: Vec<api::Route>,
    pub added: Vec<api::Route>,
    /// The whole message encoded, when the server built it from a delta's shared wire form.
    encoded: Bytes,
}

impl RouteDelta {
    /// A message that writes `encoded` (an encoded `RouteDelta`) as is.
    pub fn encoded(encoded: Bytes) -> RouteDelta {
        RouteDelta {
            encoded,
            ..RouteDelta::default()
        }
    }

    /// A delta from its fields, as prost's generated message would hold them.
    pub fn new(revision: i64, removed: Vec<api::Route>, added: Vec<api::Route>) -> RouteDelta {
        RouteDelta {
            revision,
            removed,
            added,
            encoded: Bytes::new(),
        }
    }
}

impl Message for RouteDelta {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.encoded.is_empty() {
            buf.put_slice(&self.encoded);
            return;
        }
        if self.revision != 0 {
            int64::encode(REVISION, &self.revision, buf);
        }
        message::encode_repeated(REMOVED, &self.removed, buf);
        message::encode_repeated(ADDED, &self.added, buf);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let field = |name| super::in_field("RouteDelta", name);
        match tag {
            REVISION => int64::merge(wire_type, &mut self.revision, buf, ctx).map_err(field("revision")),
            REMOVED => message::merge_repeated(wire_type, &mut self.removed, buf, ctx).map_err(field("removed")),
            ADDED => message::merge_repeated(wire_type, &mut self.added, buf, ctx).map_err(field("added")),
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        if !self.encoded.is_empty() {
            return self.encoded.len();
        }
        (if self.revision != 0 {
            int64::encoded_len(REVISION, &self.revision)
        } else {
            0
        }) + message::encoded_len_repeated(REMOVED, &self.removed)
            + message::encoded_len_repeated(ADDED, &self.added)
    }

    fn clear(&mut self) {
        *self = RouteDelta::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::robustness::contract::RouteDelta as Contract;

    fn route(cidr: &str, binding_id: &str) -> api::Route {
        api::Route {
            first_address: "192.0.2.0".into(),
            last_address: "192.0.2.127".into(),
            cidrs: vec![cidr.into()],
            prefix_id: "a".repeat(32),
            account_id: "b".repeat(32),
            binding_id: binding_id.into(),
            service_id: "1".into(),
            service_name: "magic-transit".into(),
        }
    }

    #[test]
    fn a_delta_is_the_contract_message_by_fields_and_encoded() {
        let delta = Contract {
            revision: 300,
            removed: vec![route("192.0.2.0/24", "")],
            added: vec![route("192.0.2.0/25", &"c".repeat(32)), route("192.0.2.128/25", "")],
        };
        for expected in [delta, Contract::default()] {
            let bytes = expected.encode_to_vec();
            let decoded = RouteDelta::decode(bytes.as_slice()).unwrap();
            assert_eq!(
                (decoded.revision, &decoded.removed, &decoded.added),
                (expected.revision, &expected.removed, &expected.added)
            );
            // By its fields, as a client would send it, and as the server sends the shared form.
            assert_eq!(decoded.encode_to_vec(), bytes);
            assert_eq!(decoded.encoded_len(), bytes.len());
            let shared = RouteDelta::encoded(Bytes::from(bytes.clone()));
            assert_eq!(shared.encode_to_vec(), bytes);
            assert_eq!(shared.encoded_len(), bytes.len());
        }
    }

    #[test]
    fn a_field_of_the_wrong_type_is_an_error_naming_it() {
        // Field 2 (removed) as a varint instead of a message.
        let error = RouteDelta::decode([0x10, 0x01].as_slice()).unwrap_err();
        assert!(error.to_string().contains("RouteDelta.removed"), "{error}");
    }
}
