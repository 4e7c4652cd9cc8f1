//! `addressing.v1.LookupAddressesResponse` by hand (build.rs maps the message here): a batch
//! answer is up to 10,000 results, and building each as a message (seven formatted strings and
//! a nested binding) was most of the server's work. So the server writes the encoded `results`
//! entries straight into one buffer, reusing the encoded tail of each result (everything but
//! the address), and a client keeps the entries as received until it asks for them decoded.
//! On the wire it is the message of the contract, field for field.

use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint};
use prost::{DecodeError, Message};

use crate::pb::api;

/// The field number of `results`.
const RESULTS: u32 = 1;
/// The field number of `LookupAddressResult.address`.
const ADDRESS: u32 = 1;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LookupAddressesResponse {
    /// The `results` entries, encoded (key, length and body each), in order.
    entries: Vec<u8>,
    count: usize,
}

impl LookupAddressesResponse {
    /// Room for `count` results of about `entry_bytes` each.
    pub fn with_capacity(count: usize, entry_bytes: usize) -> LookupAddressesResponse {
        LookupAddressesResponse {
            entries: Vec::with_capacity(count * entry_bytes),
            count: 0,
        }
    }

    /// Appends the result for `address`: `tail` is the encoding of its other fields (`found`,
    /// `prefix_id`, `account_id`, `binding`), as [`encode_tail`] makes it; empty when no prefix
    /// covers the address.
    pub fn push(&mut self, address: &str, tail: &[u8]) {
        let address_field = 1 + encoded_len_varint(address.len() as u64) + address.len();
        encode_key(RESULTS, WireType::LengthDelimited, &mut self.entries);
        encode_varint((address_field + tail.len()) as u64, &mut self.entries);
        encode_key(ADDRESS, WireType::LengthDelimited, &mut self.entries);
        encode_varint(address.len() as u64, &mut self.entries);
        self.entries.extend_from_slice(address.as_bytes());
        self.entries.extend_from_slice(tail);
        self.count += 1;
    }

    /// How many results there are.
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The results, decoded.
    pub fn results(&self) -> Result<Vec<api::LookupAddressResult>, DecodeError> {
        Ok(Decoded::decode(self.entries.as_slice())?.results)
    }
}

/// The same entries as prost would decode them.
#[derive(Clone, PartialEq, prost::Message)]
struct Decoded {
    #[prost(message, repeated, tag = "1")]
    results: Vec<api::LookupAddressResult>,
}

/// The encoding of a result's fields after `address`: what every address resolving to the same
/// prefix and binding shares.
pub fn encode_tail(result: &api::LookupAddressResult) -> Vec<u8> {
    debug_assert!(result.address.is_empty(), "the address is written per entry");
    result.encode_to_vec()
}

impl Message for LookupAddressesResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(&self.entries);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if tag != RESULTS {
            return prost::encoding::skip_field(wire_type, tag, buf, ctx);
        }
        let mut body = Vec::new();
        prost::encoding::bytes::merge(wire_type, &mut body, buf, ctx)?;
        encode_key(RESULTS, WireType::LengthDelimited, &mut self.entries);
        encode_varint(body.len() as u64, &mut self.entries);
        self.entries.extend_from_slice(&body);
        self.count += 1;
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.entries.len()
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_and_decodes_as_the_contract_message() {
        let covered = api::LookupAddressResult {
            address: String::new(),
            found: true,
            prefix_id: "a".repeat(32),
            account_id: "b".repeat(32),
            binding: Some(api::ServiceBinding {
                id: "c".repeat(32),
                cidr: "192.0.2.1/32".into(),
                ..Default::default()
            }),
        };
        let mut response = LookupAddressesResponse::with_capacity(2, 64);
        response.push("192.0.2.1", &encode_tail(&covered));
        response.push("198.51.100.7", &[]);
        let expected = vec![
            api::LookupAddressResult {
                address: "192.0.2.1".into(),
                ..covered
            },
            api::LookupAddressResult {
                address: "198.51.100.7".into(),
                ..Default::default()
            },
        ];
        let bytes = response.encode_to_vec();
        assert_eq!(
            bytes,
            Decoded {
                results: expected.clone()
            }
            .encode_to_vec()
        );
        let received = LookupAddressesResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(received.len(), 2);
        assert_eq!(received.results().unwrap(), expected);
    }
}
