//! `addressing.v1.LookupAddressesRequest` by hand (build.rs maps the message here): a batch is
//! up to 10,000 addresses, and decoding each into its own `String` (an allocation and a copy
//! each, then a free) was a sixth of the server's work on a batch. Here the addresses are kept
//! as one text and the ends of each, so a batch decodes into two buffers; a client builds one
//! the same way. On the wire it is the message of the contract, field for field, and anything
//! that does not decode fails with the error prost's generated code gives (the property test
//! `robustness::lookup_request` holds the two side by side).

use prost::bytes::{Buf, BufMut};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint};
use prost::{DecodeError, Message};

use crate::pb::api::LookupView;

/// The field number of `addresses`.
const ADDRESSES: u32 = 1;
/// The field number of `active_only`.
const ACTIVE_ONLY: u32 = 2;
/// The field number of `view`.
const VIEW: u32 = 3;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LookupAddressesRequest {
    /// Every address's text, one after the other.
    text: String,
    /// Where each address ends in `text` (its start is where the previous one ends).
    ends: Vec<usize>,
    pub active_only: bool,
    /// A `LookupView` as sent (an unknown value is kept, for the server to refuse by name).
    pub view: i32,
}

impl LookupAddressesRequest {
    pub fn new<A: AsRef<str>>(
        addresses: impl IntoIterator<Item = A>,
        active_only: bool,
        view: LookupView,
    ) -> LookupAddressesRequest {
        let mut request = LookupAddressesRequest {
            active_only,
            view: view as i32,
            ..LookupAddressesRequest::default()
        };
        for address in addresses {
            request.push(address.as_ref());
        }
        request
    }

    /// Adds an address to the batch.
    pub fn push(&mut self, address: &str) {
        self.text.push_str(address);
        self.ends.push(self.text.len());
    }

    /// The addresses, in order.
    pub fn addresses(&self) -> impl ExactSizeIterator<Item = &str> {
        (0..self.ends.len()).map(|index| {
            let start = index.checked_sub(1).map_or(0, |previous| self.ends[previous]);
            &self.text[start..self.ends[index]]
        })
    }

    /// How many addresses there are.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

impl Message for LookupAddressesRequest {
    /// prost's loop (a key, then the field, each through the `Buf`), with the run of addresses
    /// a request starts with read in one pass over the buffer first, when the whole message is
    /// in one chunk (always, for a request tonic received): per address, prost's loop decoded
    /// its key and advanced the buffer through calls that cost as much as reading the address.
    /// It stops at anything but a whole, textual `addresses` entry, which the loop then decodes
    /// (or refuses) as before, so what is accepted and refused is unchanged.
    fn merge(&mut self, mut buf: impl Buf) -> Result<(), DecodeError> {
        if buf.chunk().len() == buf.remaining() {
            let read = self.push_leading_addresses(buf.chunk());
            buf.advance(read);
        }
        let ctx = DecodeContext::default();
        while buf.has_remaining() {
            let (tag, wire_type) = prost::encoding::decode_key(&mut buf)?;
            self.merge_field(tag, wire_type, &mut buf, ctx.clone())?;
        }
        Ok(())
    }

    fn encode_raw(&self, buf: &mut impl BufMut) {
        for address in self.addresses() {
            encode_key(ADDRESSES, WireType::LengthDelimited, buf);
            encode_varint(address.len() as u64, buf);
            buf.put_slice(address.as_bytes());
        }
        if self.active_only {
            prost::encoding::bool::encode(ACTIVE_ONLY, &self.active_only, buf);
        }
        if self.view != 0 {
            prost::encoding::int32::encode(VIEW, &self.view, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let in_field = |field| super::in_field("LookupAddressesRequest", field);
        match tag {
            ADDRESSES => self.merge_address(wire_type, buf, ctx).map_err(in_field("addresses")),
            ACTIVE_ONLY => prost::encoding::bool::merge(wire_type, &mut self.active_only, buf, ctx)
                .map_err(in_field("active_only")),
            VIEW => prost::encoding::int32::merge(wire_type, &mut self.view, buf, ctx).map_err(in_field("view")),
            _ => prost::encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let addresses: usize = (self.addresses())
            .map(|address| 1 + encoded_len_varint(address.len() as u64) + address.len())
            .sum();
        let active_only = if self.active_only { 2 } else { 0 };
        let view = if self.view != 0 {
            1 + encoded_len_varint(i64::from(self.view) as u64)
        } else {
            0
        };
        addresses + active_only + view
    }

    fn clear(&mut self) {
        *self = LookupAddressesRequest::default();
    }
}

impl LookupAddressesRequest {
    /// Adds the `addresses` entries `message` starts with, as long as each is whole and text;
    /// returns how many bytes they took.
    fn push_leading_addresses(&mut self, message: &[u8]) -> usize {
        // The key of `addresses`: field 1, length-delimited.
        const KEY: u8 = (ADDRESSES << 3) as u8 | WireType::LengthDelimited as u8;
        // The text is at most the message; an entry takes at least 9 bytes (key, length and the
        // shortest IPv4 address, "0.0.0.0"), so that many ends are room for a batch of them.
        self.text.reserve(message.len());
        self.ends.reserve(message.len() / 9);
        let mut read = 0;
        while let Some(rest) = message.get(read..).filter(|rest| rest.first() == Some(&KEY))
            && let Some((consumed, body)) = super::whole_field(&rest[1..])
            && let Some(text) = as_text(body)
        {
            self.push(text);
            read += 1 + consumed;
        }
        read
    }

    /// One `addresses` entry: read in place when the whole of it is in the buffer's current
    /// chunk and is UTF-8 (always, for a request tonic received); anything else goes through
    /// prost's own string decoding, which gives prost's error or, across chunks, the text.
    fn merge_address(
        &mut self,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        if wire_type == WireType::LengthDelimited
            && let Some((consumed, body)) = super::whole_field(buf.chunk())
            && let Some(text) = as_text(body)
        {
            self.push(text);
            buf.advance(consumed);
            return Ok(());
        }
        let mut text = String::new();
        prost::encoding::string::merge(wire_type, &mut text, buf, ctx)?;
        self.push(&text);
        Ok(())
    }
}

/// `body` as text when it is UTF-8. An address is ASCII, which is checked inline in a few
/// instructions; `std::str::from_utf8`, an out-of-line call per entry, was 3.4% of a batch's
/// server CPU. Anything not ASCII gets the full check.
fn as_text(body: &[u8]) -> Option<&str> {
    if body.is_ascii() {
        // SAFETY: ASCII bytes are valid UTF-8.
        Some(unsafe { std::str::from_utf8_unchecked(body) })
    } else {
        std::str::from_utf8(body).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_each_address_apart_and_round_trips() {
        let request = LookupAddressesRequest::new(["192.0.2.1", "", "2001:db8::1"], true, LookupView::Compact);
        assert_eq!(request.len(), 3);
        assert_eq!(
            request.addresses().collect::<Vec<_>>(),
            ["192.0.2.1", "", "2001:db8::1"]
        );
        let bytes = request.encode_to_vec();
        assert_eq!(bytes.len(), request.encoded_len());
        assert_eq!(LookupAddressesRequest::decode(bytes.as_slice()).unwrap(), request);
    }

    #[test]
    fn an_address_that_is_not_utf8_is_refused_naming_the_field() {
        let error = LookupAddressesRequest::decode(&[0x0a, 0x02, 0xc3, 0x28][..]).unwrap_err();
        assert!(
            error.to_string().contains("LookupAddressesRequest.addresses"),
            "{error}"
        );
    }
}
