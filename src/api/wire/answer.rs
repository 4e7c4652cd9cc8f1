//! `addressing.v1.LookupAddressResponse` by hand (build.rs maps the message here), so that the
//! unary lookup reuses the encoded routes the batch lookup keeps instead of building a message
//! per call: converting the binding (six ids formatted, the CIDR, two timestamps) and encoding
//! it was most of a unary lookup's own work (docs/benchmarks.md, unary lookups).
//!
//! A client decodes it as prost would, into the public fields. The server builds it
//! [`encoded`](LookupAddressResponse::encoded): then it holds the wire form behind room for a
//! gRPC frame's prefix and writes it as is (or hands the whole frame to HTTP/2:
//! [`into_grpc_frame`](LookupAddressResponse::into_grpc_frame)), and its public fields stay
//! empty.

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint, message, string};
use prost::{DecodeError, Message};

use super::{EncodedRoute, GRPC_FRAME_PREFIX as FRAME_PREFIX, grpc_frame_prefix};
use crate::pb::api;

/// The field numbers of the contract's message.
const ADDRESS: u32 = 1;
const PREFIX_ID: u32 = 2;
const ACCOUNT_ID: u32 = 3;
const BINDING: u32 = 4;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LookupAddressResponse {
    /// The address as asked.
    pub address: String,
    pub prefix_id: String,
    pub account_id: String,
    /// Unset when no binding of the prefix covers the address. Boxed as prost's `boxed`
    /// option would: the server's answer (with this field empty) is moved through every layer
    /// of the call, and an inline binding made it 200 bytes larger (docs/benchmarks.md, unary
    /// lookups).
    pub binding: Option<Box<api::ServiceBinding>>,
    /// When the server built it from an encoded route: [`FRAME_PREFIX`] bytes left for the
    /// gRPC frame's prefix, then the whole message encoded.
    encoded: Vec<u8>,
}

impl LookupAddressResponse {
    /// The answer for `address` resolving to `route`, written from the route's encoded fields.
    pub fn encoded(address: &str, route: &EncodedRoute) -> LookupAddressResponse {
        let binding = route.binding();
        let binding_field = binding.map_or(0, |body| 1 + encoded_len_varint(body.len() as u64) + body.len());
        let mut encoded = Vec::with_capacity(
            FRAME_PREFIX
                + 1
                + encoded_len_varint(address.len() as u64)
                + address.len()
                + route.owner().len()
                + binding_field,
        );
        encoded.resize(FRAME_PREFIX, 0);
        if !address.is_empty() {
            encode_key(ADDRESS, WireType::LengthDelimited, &mut encoded);
            encode_varint(address.len() as u64, &mut encoded);
            encoded.extend_from_slice(address.as_bytes());
        }
        encoded.extend_from_slice(route.owner());
        if let Some(body) = binding {
            encode_key(BINDING, WireType::LengthDelimited, &mut encoded);
            encode_varint(body.len() as u64, &mut encoded);
            encoded.extend_from_slice(body);
        }
        LookupAddressResponse {
            encoded,
            ..LookupAddressResponse::default()
        }
    }

    /// The answer as one uncompressed gRPC frame (prefix, then the message): for one built
    /// [`encoded`](Self::encoded), in the buffer it was built in.
    pub fn into_grpc_frame(self) -> Bytes {
        let mut frame = if self.encoded.is_empty() {
            let mut frame = Vec::with_capacity(FRAME_PREFIX + self.encoded_len());
            frame.resize(FRAME_PREFIX, 0);
            self.encode_raw(&mut frame);
            frame
        } else {
            self.encoded
        };
        let prefix = grpc_frame_prefix(frame.len() - FRAME_PREFIX);
        frame[..FRAME_PREFIX].copy_from_slice(&prefix);
        Bytes::from(frame)
    }

    /// `prefix_id` and `account_id` as this message encodes them: what a route keeps for it.
    pub(super) fn owner_fields(prefix_id: &str, account_id: &str) -> Vec<u8> {
        let mut owner = Vec::new();
        for (tag, value) in [(PREFIX_ID, prefix_id), (ACCOUNT_ID, account_id)] {
            if !value.is_empty() {
                encode_key(tag, WireType::LengthDelimited, &mut owner);
                encode_varint(value.len() as u64, &mut owner);
                owner.extend_from_slice(value.as_bytes());
            }
        }
        owner
    }
}

impl Message for LookupAddressResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if !self.encoded.is_empty() {
            buf.put_slice(&self.encoded[FRAME_PREFIX..]);
            return;
        }
        for (tag, value) in [
            (ADDRESS, &self.address),
            (PREFIX_ID, &self.prefix_id),
            (ACCOUNT_ID, &self.account_id),
        ] {
            if !value.is_empty() {
                string::encode(tag, value, buf);
            }
        }
        if let Some(binding) = &self.binding {
            message::encode(BINDING, binding, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let field = |name| super::in_field("LookupAddressResponse", name);
        match tag {
            ADDRESS => string::merge(wire_type, &mut self.address, buf, ctx).map_err(field("address")),
            PREFIX_ID => string::merge(wire_type, &mut self.prefix_id, buf, ctx).map_err(field("prefix_id")),
            ACCOUNT_ID => string::merge(wire_type, &mut self.account_id, buf, ctx).map_err(field("account_id")),
            BINDING => message::merge(wire_type, self.binding.get_or_insert_with(Default::default), buf, ctx)
                .map_err(field("binding")),
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        if !self.encoded.is_empty() {
            return self.encoded.len() - FRAME_PREFIX;
        }
        [
            (ADDRESS, &self.address),
            (PREFIX_ID, &self.prefix_id),
            (ACCOUNT_ID, &self.account_id),
        ]
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(tag, value)| string::encoded_len(tag, value))
        .sum::<usize>()
            + self
                .binding
                .as_ref()
                .map_or(0, |binding| message::encoded_len(BINDING, binding))
    }

    fn clear(&mut self) {
        *self = LookupAddressResponse::default();
    }
}

#[cfg(test)]
mod tests {
    use super::super::covered;
    use super::*;
    use crate::robustness::contract::LookupAddressResponse as Contract;

    #[test]
    fn an_encoded_answer_is_the_contract_message_and_decodes_into_the_fields() {
        let uncovered = api::LookupAddressResult {
            found: false,
            binding: None,
            ..covered()
        };
        for result in [covered(), uncovered] {
            let answer = LookupAddressResponse::encoded("192.0.2.7", &EncodedRoute::new(&result));
            let expected = Contract {
                address: "192.0.2.7".into(),
                prefix_id: result.prefix_id.clone(),
                account_id: result.account_id.clone(),
                binding: result.binding.clone(),
            };
            let bytes = answer.encode_to_vec();
            assert_eq!(bytes, expected.encode_to_vec());
            assert_eq!(answer.encoded_len(), bytes.len());
            let decoded = LookupAddressResponse::decode(bytes.as_slice()).unwrap();
            assert_eq!(
                (
                    decoded.address.as_str(),
                    decoded.prefix_id.as_str(),
                    decoded.account_id.as_str()
                ),
                ("192.0.2.7", expected.prefix_id.as_str(), expected.account_id.as_str())
            );
            assert_eq!(decoded.binding.as_deref(), expected.binding.as_ref());
            // A decoded answer encodes again to the same bytes.
            assert_eq!(decoded.encode_to_vec(), bytes);
            // As a gRPC frame: uncompressed, its length, then the same bytes.
            let frame = answer.into_grpc_frame();
            assert_eq!(frame[0], 0);
            assert_eq!(frame[1..5], (bytes.len() as u32).to_be_bytes());
            assert_eq!(frame[5..], bytes[..]);
            assert_eq!(decoded.into_grpc_frame(), frame, "written from its fields alike");
        }
    }
}
