//! `addressing.v1.LookupAddressesResponse` by hand (build.rs maps the message here): a batch
//! answer is up to 10,000 results, and building each as a message (seven formatted strings and
//! a nested binding) was most of the server's work. So the server writes the encoded `results`
//! entries straight into one buffer, reusing each route's encoded fields (everything but the
//! address), and a client keeps the entries as received until it asks for them decoded. In the
//! COMPACT view the `bindings` entries go in a second buffer and a result points into them. On
//! the wire it is the message of the contract, field for field.
//!
//! A client keeps the answer in the buffer it was received in ([`Entries::Received`]): tonic's
//! decode buffer hands its bytes over without a copy. Copying them out, entry by entry, was a
//! twelfth of a batch client's CPU (docs/benchmarks.md, a batch client's answer kept as received).

use prost::bytes::{Buf, BufMut, Bytes};
use prost::encoding::{DecodeContext, WireType, encode_key, encode_varint, encoded_len_varint};
use prost::{DecodeError, Message};

use crate::pb::api;

/// The field number of `results`.
const RESULTS: u32 = 1;
/// The field number of `bindings`.
const BINDINGS: u32 = 2;
/// The field number of `LookupAddressResult.address`.
const ADDRESS: u32 = 1;
/// The field number of `LookupAddressResult.binding`.
const BINDING: u32 = 5;
/// The field number of `LookupAddressResult.binding_index`.
const BINDING_INDEX: u32 = 6;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct LookupAddressesResponse {
    /// The `results` entries, encoded (key, length and body each), in order.
    entries: Entries,
    count: usize,
    /// The `bindings` entries (COMPACT), encoded the same way.
    bindings: Entries,
    binding_count: usize,
}

/// Encoded entries: written here (the server's answer), or as they were received.
#[derive(Clone, Debug)]
enum Entries {
    Written(Vec<u8>),
    Received(Bytes),
}

impl Entries {
    fn as_slice(&self) -> &[u8] {
        match self {
            Entries::Written(bytes) => bytes,
            Entries::Received(bytes) => bytes,
        }
    }

    /// The entries to append to (received ones are copied first).
    fn written(&mut self) -> &mut Vec<u8> {
        if let Entries::Received(bytes) = self {
            *self = Entries::Written(bytes.to_vec());
        }
        match self {
            Entries::Written(bytes) => bytes,
            Entries::Received(_) => unreachable!("made written above"),
        }
    }
}

impl Default for Entries {
    fn default() -> Entries {
        Entries::Written(Vec::new())
    }
}

impl PartialEq for Entries {
    fn eq(&self, other: &Entries) -> bool {
        self.as_slice() == other.as_slice()
    }
}

/// A result's fields shared by every address resolving to the same prefix and binding, encoded
/// once: [`head`](EncodedRoute::head) is `found`, `prefix_id` and `account_id`;
/// [`binding`](EncodedRoute::binding) the `ServiceBinding` message's body (`None` when there is
/// none); [`owner`](EncodedRoute::owner) is `prefix_id` and `account_id` as the unary
/// [`LookupAddressResponse`](super::LookupAddressResponse) numbers them. The three lie one
/// after the other in one allocation, so a cache entry is small and a batch's copy of a route
/// reads neighbouring lines.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EncodedRoute {
    bytes: Box<[u8]>,
    /// Where the binding's body starts (the head ends).
    binding_start: u32,
    /// Where the owner fields start (the binding's body ends), with [`HAS_BINDING`] set when
    /// there is a binding: a flag of its own would make the route cache's records (a route and
    /// this) 72 bytes, past one cache line.
    owner_start: u32,
}

/// The bit of `owner_start` that says a binding covers the address.
const HAS_BINDING: u32 = 1 << 31;

impl EncodedRoute {
    /// Encodes `result` (its `address` is written per entry, so it must be empty).
    pub fn new(result: &api::LookupAddressResult) -> EncodedRoute {
        debug_assert!(result.address.is_empty(), "the address is written per entry");
        let head = api::LookupAddressResult {
            binding: None,
            ..result.clone()
        };
        let owner = super::LookupAddressResponse::owner_fields(&result.prefix_id, &result.account_id);
        let binding_len = result.binding.as_ref().map_or(0, Message::encoded_len);
        let mut bytes = Vec::with_capacity(head.encoded_len() + binding_len + owner.len());
        head.encode_raw(&mut bytes);
        let binding_start = bytes.len();
        if let Some(binding) = &result.binding {
            binding.encode_raw(&mut bytes);
        }
        let owner_start = bytes.len();
        bytes.extend_from_slice(&owner);
        let offset = |at: usize| {
            u32::try_from(at)
                .ok()
                .filter(|at| at & HAS_BINDING == 0)
                .expect("an encoded route is far below 2 GiB")
        };
        let has_binding = if result.binding.is_some() { HAS_BINDING } else { 0 };
        EncodedRoute {
            bytes: bytes.into_boxed_slice(),
            binding_start: offset(binding_start),
            owner_start: offset(owner_start) | has_binding,
        }
    }

    /// `found`, `prefix_id` and `account_id`, as a batch result numbers them.
    pub fn head(&self) -> &[u8] {
        &self.bytes[..self.binding_start as usize]
    }

    /// The `ServiceBinding` message's body, `None` when no binding covers the address.
    pub fn binding(&self) -> Option<&[u8]> {
        (self.owner_start & HAS_BINDING != 0).then(|| &self.bytes[self.binding_start as usize..self.owner_start()])
    }

    /// `prefix_id` and `account_id` as the unary answer numbers them.
    pub fn owner(&self) -> &[u8] {
        &self.bytes[self.owner_start()..]
    }

    fn owner_start(&self) -> usize {
        (self.owner_start & !HAS_BINDING) as usize
    }

    /// The encoded bytes (head, binding and owner fields).
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Asks the CPU to start loading what a batch answer copies: the head and the binding.
    pub fn prefetch(&self) {
        crate::prefetch::prefetch_bytes(&self.bytes[..self.owner_start()]);
    }
}

impl LookupAddressesResponse {
    /// Room for `count` results of about `entry_bytes` each, and for as many listed bindings
    /// of about `binding_bytes` (0 for FULL, which lists none).
    pub fn with_capacity(count: usize, entry_bytes: usize, binding_bytes: usize) -> LookupAddressesResponse {
        LookupAddressesResponse {
            entries: Entries::Written(Vec::with_capacity(count * entry_bytes)),
            bindings: Entries::Written(Vec::with_capacity(count * binding_bytes)),
            ..LookupAddressesResponse::default()
        }
    }

    /// FULL: appends the result for `address`; `route` is `None` when no prefix covers it.
    pub fn push(&mut self, address: &str, route: Option<&EncodedRoute>) {
        let address_field = 1 + encoded_len_varint(address.len() as u64) + address.len();
        let (head, binding) = match route {
            Some(route) => (route.head(), route.binding()),
            None => (&[][..], None),
        };
        let binding_field = binding.map_or(0, |body| 1 + encoded_len_varint(body.len() as u64) + body.len());
        let entries = self.entries.written();
        encode_key(RESULTS, WireType::LengthDelimited, entries);
        encode_varint((address_field + head.len() + binding_field) as u64, entries);
        encode_key(ADDRESS, WireType::LengthDelimited, entries);
        encode_varint(address.len() as u64, entries);
        entries.extend_from_slice(address.as_bytes());
        entries.extend_from_slice(head);
        if let Some(body) = binding {
            encode_key(BINDING, WireType::LengthDelimited, entries);
            encode_varint(body.len() as u64, entries);
            entries.extend_from_slice(body);
        }
        self.count += 1;
    }

    /// COMPACT: appends a result without its address; `binding_index` points into `bindings`
    /// (see [`LookupAddressesResponse::push_binding`]).
    pub fn push_compact(&mut self, route: Option<&EncodedRoute>, binding_index: Option<u32>) {
        let head = route.map_or(&[][..], EncodedRoute::head);
        let index_field = binding_index.map_or(0, |index| 1 + encoded_len_varint(u64::from(index)));
        let entries = self.entries.written();
        encode_key(RESULTS, WireType::LengthDelimited, entries);
        encode_varint((head.len() + index_field) as u64, entries);
        entries.extend_from_slice(head);
        if let Some(index) = binding_index {
            encode_key(BINDING_INDEX, WireType::Varint, entries);
            encode_varint(u64::from(index), entries);
        }
        self.count += 1;
    }

    /// COMPACT: lists a binding (its encoded body) and returns its index.
    pub fn push_binding(&mut self, body: &[u8]) -> u32 {
        let bindings = self.bindings.written();
        encode_key(BINDINGS, WireType::LengthDelimited, bindings);
        encode_varint(body.len() as u64, bindings);
        bindings.extend_from_slice(body);
        self.binding_count += 1;
        // A batch is at most MAX_LOOKUP_BATCH addresses, so at most that many bindings.
        u32::try_from(self.binding_count - 1).unwrap_or(u32::MAX)
    }

    /// The encoded message in the buffers it was written in (results, then listed bindings):
    /// handed to HTTP/2 as they are, with no copy (see `api::routing_endpoint`).
    pub fn into_encoded(self) -> [Bytes; 2] {
        let bytes = |entries: Entries| match entries {
            Entries::Written(bytes) => Bytes::from(bytes),
            Entries::Received(bytes) => bytes,
        };
        [bytes(self.entries), bytes(self.bindings)]
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

    /// The listed bindings (COMPACT), decoded.
    pub fn bindings(&self) -> Result<Vec<api::ServiceBinding>, DecodeError> {
        Ok(Decoded::decode(self.bindings.as_slice())?.bindings)
    }

    /// The results for `addresses` (the request's, in order) as FULL writes them, whichever
    /// view answered: each with its address and the binding its `binding_index` points to.
    /// An answer that does not decode, or does not fit the request, is an error saying how.
    pub fn results_for(&self, addresses: &[String]) -> Result<Vec<api::LookupAddressResult>, String> {
        let undecodable = |error: DecodeError| format!("it does not decode: {error}");
        let (results, bindings) = (
            self.results().map_err(undecodable)?,
            self.bindings().map_err(undecodable)?,
        );
        if results.len() != addresses.len() {
            return Err(format!("{} results for {} addresses", results.len(), addresses.len()));
        }
        let pointed_to = |index: i32| {
            let binding = usize::try_from(index).ok().and_then(|index| bindings.get(index));
            binding
                .cloned()
                .ok_or_else(|| format!("a result points to binding {index} of {}", bindings.len()))
        };
        (results.into_iter().zip(addresses))
            .map(|(result, address)| {
                let binding = match result.binding_index {
                    Some(index) => Some(pointed_to(index)?),
                    None => result.binding,
                };
                Ok(api::LookupAddressResult {
                    address: address.clone(),
                    binding,
                    binding_index: None,
                    ..result
                })
            })
            .collect()
    }
}

/// prost's own `merge`: each field in turn through `merge_field`.
fn merge_fields(message: &mut LookupAddressesResponse, mut buf: impl Buf) -> Result<(), DecodeError> {
    let context = DecodeContext::default();
    while buf.has_remaining() {
        let (tag, wire_type) = prost::encoding::decode_key(&mut buf)?;
        message.merge_field(tag, wire_type, &mut buf, context.clone())?;
    }
    Ok(())
}

/// Where a received answer's results end and how many entries of each list it holds, when it
/// is laid out as a server writes it: length-delimited `results`, then `bindings`, each whole.
struct Layout {
    results_end: usize,
    results: usize,
    bindings: usize,
}

impl Layout {
    fn of(message: &[u8]) -> Option<Layout> {
        let mut layout = Layout {
            results_end: 0,
            results: 0,
            bindings: 0,
        };
        let mut rest = message;
        while !rest.is_empty() {
            let (tag, wire_type) = prost::encoding::decode_key(&mut rest).ok()?;
            let (consumed, _) = super::whole_field(rest).filter(|_| wire_type == WireType::LengthDelimited)?;
            rest = &rest[consumed..];
            match tag {
                RESULTS if layout.bindings == 0 => {
                    layout.results += 1;
                    layout.results_end = message.len() - rest.len();
                }
                BINDINGS => layout.bindings += 1,
                _ => return None,
            }
        }
        Some(layout)
    }
}

/// The contract's message as prost would decode it: what a client built from the .proto sees.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Decoded {
    #[prost(message, repeated, tag = "1")]
    pub results: Vec<api::LookupAddressResult>,
    #[prost(message, repeated, tag = "2")]
    pub bindings: Vec<api::ServiceBinding>,
}

impl Message for LookupAddressesResponse {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        buf.put_slice(self.entries.as_slice());
        buf.put_slice(self.bindings.as_slice());
    }

    /// Keeps a whole answer as received when it is laid out as a server writes it (every
    /// result, then every listed binding, nothing else): `copy_to_bytes` on tonic's decode
    /// buffer takes the bytes without copying them. Anything else is decoded field by field.
    fn merge(&mut self, mut buf: impl Buf) -> Result<(), DecodeError> {
        if self.count > 0 || self.binding_count > 0 || !buf.has_remaining() {
            return merge_fields(self, buf);
        }
        let received = buf.copy_to_bytes(buf.remaining());
        match Layout::of(&received) {
            Some(layout) => {
                self.entries = Entries::Received(received.slice(..layout.results_end));
                self.bindings = Entries::Received(received.slice(layout.results_end..));
                (self.count, self.binding_count) = (layout.results, layout.bindings);
                Ok(())
            }
            None => merge_fields(self, received),
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        let (entries, count) = match tag {
            RESULTS => (self.entries.written(), &mut self.count),
            BINDINGS => (self.bindings.written(), &mut self.binding_count),
            _ => return prost::encoding::skip_field(wire_type, tag, buf, ctx),
        };
        // A list's first entry makes room for the rest of the message at once: an answer of
        // thousands of entries grown by doubling was copied a dozen times on its way in.
        if entries.is_empty() {
            entries.reserve(buf.remaining());
        }
        encode_key(tag, WireType::LengthDelimited, entries);
        // Straight from the received buffer when the entry is whole in it (tonic's holds the
        // whole message): its length and body as they came, without a temporary per entry.
        if wire_type == WireType::LengthDelimited
            && let Some((consumed, _)) = super::whole_field(buf.chunk())
        {
            entries.extend_from_slice(&buf.chunk()[..consumed]);
            buf.advance(consumed);
        } else {
            let mut body = Vec::new();
            prost::encoding::bytes::merge(wire_type, &mut body, buf, ctx)?;
            encode_varint(body.len() as u64, entries);
            entries.extend_from_slice(&body);
        }
        *count += 1;
        Ok(())
    }

    fn encoded_len(&self) -> usize {
        self.entries.as_slice().len() + self.bindings.as_slice().len()
    }

    fn clear(&mut self) {
        *self = LookupAddressesResponse::default();
    }
}

#[cfg(test)]
mod tests {
    use super::super::covered;
    use super::*;

    #[test]
    fn full_encodes_and_decodes_as_the_contract_message() {
        let covered = covered();
        let mut response = LookupAddressesResponse::with_capacity(2, 64, 64);
        response.push("192.0.2.1", Some(&EncodedRoute::new(&covered)));
        response.push("198.51.100.7", None);
        let expected = Decoded {
            results: vec![
                api::LookupAddressResult {
                    address: "192.0.2.1".into(),
                    ..covered
                },
                api::LookupAddressResult {
                    address: "198.51.100.7".into(),
                    ..Default::default()
                },
            ],
            bindings: Vec::new(),
        };
        let bytes = response.encode_to_vec();
        assert_eq!(bytes, expected.encode_to_vec());
        let received = LookupAddressesResponse::decode(bytes.as_slice()).unwrap();
        assert_eq!(received.len(), 2);
        assert_eq!(received.results().unwrap(), expected.results);
    }

    #[test]
    fn compact_lists_bindings_apart_and_points_to_them() {
        let covered = covered();
        let route = EncodedRoute::new(&covered);
        let mut response = LookupAddressesResponse::default();
        let index = response.push_binding(route.binding().unwrap());
        response.push_compact(Some(&route), Some(index));
        response.push_compact(None, None);
        let expected = Decoded {
            results: vec![
                api::LookupAddressResult {
                    binding: None,
                    binding_index: Some(0),
                    ..covered.clone()
                },
                api::LookupAddressResult::default(),
            ],
            bindings: vec![covered.binding.unwrap()],
        };
        assert_eq!(Decoded::decode(response.encode_to_vec().as_slice()).unwrap(), expected);
        let received = LookupAddressesResponse::decode(response.encode_to_vec().as_slice()).unwrap();
        assert_eq!(received.results().unwrap(), expected.results);
        assert_eq!(received.bindings().unwrap(), expected.bindings);
    }

    /// A COMPACT answer of two results and one listed binding, and the contract's message.
    fn compact_answer() -> (LookupAddressesResponse, Decoded) {
        let covered = covered();
        let route = EncodedRoute::new(&covered);
        let mut response = LookupAddressesResponse::default();
        let index = response.push_binding(route.binding().unwrap());
        response.push_compact(Some(&route), Some(index));
        response.push_compact(None, None);
        let decoded = Decoded::decode(response.encode_to_vec().as_slice()).unwrap();
        (response, decoded)
    }

    #[test]
    fn an_answer_as_a_server_writes_it_is_kept_in_the_buffer_it_came_in() {
        let (response, expected) = compact_answer();
        let buffer = Bytes::from(response.encode_to_vec());
        let received = LookupAddressesResponse::decode(buffer.clone()).unwrap();
        let within = |entries: &Entries| {
            matches!(entries, Entries::Received(_)) && buffer.as_ptr_range().contains(&entries.as_slice().as_ptr())
        };
        assert!(within(&received.entries) && within(&received.bindings));
        assert_eq!((received.len(), received.binding_count), (2, 1));
        assert_eq!(received.results().unwrap(), expected.results);
        assert_eq!(received.bindings().unwrap(), expected.bindings);
        assert_eq!(received.encode_to_vec(), buffer);
    }

    #[test]
    fn any_other_layout_is_decoded_field_by_field() {
        let (response, expected) = compact_answer();
        let results = response.entries.as_slice();
        let bindings = response.bindings.as_slice();
        // A listed binding before the results, and a field this version does not know.
        let unknown = [9 << 3, 1]; // field 9, a varint: 1
        let message = [bindings, &unknown, results].concat();
        let received = LookupAddressesResponse::decode(message.as_slice()).unwrap();
        assert!(matches!(received.entries, Entries::Written(_)));
        assert_eq!((received.len(), received.binding_count), (2, 1));
        assert_eq!(received.results().unwrap(), expected.results);
        assert_eq!(received.bindings().unwrap(), expected.bindings);
        // A cut answer fails as prost's own decoding of the message fails.
        let cut = &results[..results.len() - 1];
        assert!(Decoded::decode(cut).is_err());
        assert!(LookupAddressesResponse::decode(Bytes::copy_from_slice(cut)).is_err());
    }

    #[test]
    fn a_received_answer_appended_to_is_copied_first() {
        let (response, _) = compact_answer();
        let mut received = LookupAddressesResponse::decode(Bytes::from(response.encode_to_vec())).unwrap();
        let mut written = response.clone();
        received.push_compact(None, None);
        written.push_compact(None, None);
        assert_eq!(received.encode_to_vec(), written.encode_to_vec());
        assert_eq!(received.len(), 3);
        // Merging a second answer into a received one appends its entries.
        received.merge(Bytes::from(response.encode_to_vec())).unwrap();
        assert_eq!((received.len(), received.binding_count), (5, 2));
    }
}
