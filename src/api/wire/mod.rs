//! The lookups' and watch events' messages written by hand (build.rs maps them here): a batch
//! is up to 10,000 addresses, so what prost's generated code does per address (a `String` each
//! on the way in, a whole message per result on the way out) was most of the server's work;
//! the unary answer reuses the batch's encoded routes (`answer.rs`); a watch event and a route
//! delta are encoded once for all their watchers (`event.rs`, `route_delta.rs`). Each type is,
//! on the wire, the contract's message field for field. A create's answer, a `ServiceBinding`,
//! is written straight from the domain binding into its gRPC frame (`binding.rs`).

mod answer;
mod binding;
mod event;
mod request;
mod response;
mod route_delta;

pub use answer::LookupAddressResponse;
pub use binding::binding_frame;
pub use event::ServiceBindingEvent;
pub use request::LookupAddressesRequest;
pub use response::{Decoded, EncodedRoute, LookupAddressesResponse};
pub use route_delta::RouteDelta;

/// A result with a binding, for the encoders' tests.
#[cfg(test)]
fn covered() -> crate::pb::api::LookupAddressResult {
    use crate::pb::api;
    api::LookupAddressResult {
        found: true,
        prefix_id: "a".repeat(32),
        account_id: "b".repeat(32),
        binding: Some(api::ServiceBinding {
            id: "c".repeat(32),
            cidr: "192.0.2.1/32".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The bytes in front of a gRPC message on the wire: not compressed, then the message's length
/// (4 bytes, big-endian).
pub const GRPC_FRAME_PREFIX: usize = 5;

/// The [`GRPC_FRAME_PREFIX`] of an uncompressed message of `len` bytes.
pub fn grpc_frame_prefix(len: usize) -> [u8; GRPC_FRAME_PREFIX] {
    let len = u32::try_from(len).expect("an answer is far below 4 GiB");
    let mut prefix = [0u8; GRPC_FRAME_PREFIX];
    prefix[1..].copy_from_slice(&len.to_be_bytes());
    prefix
}

/// Names `field` of `message` in a decoding error, as prost's generated code does.
fn in_field(message: &'static str, field: &'static str) -> impl FnOnce(prost::DecodeError) -> prost::DecodeError {
    move |mut error| {
        error.push(message, field);
        error
    }
}

/// The body of a length-delimited field at the start of `chunk`, if all of it is there: the
/// bytes the field takes after its key (length included) and the body. Lets a decoder copy a
/// field straight from a received buffer (tonic's always holds a whole message) instead of
/// into a temporary of its own first.
fn whole_field(chunk: &[u8]) -> Option<(usize, &[u8])> {
    let mut rest = chunk;
    let len = usize::try_from(prost::encoding::decode_varint(&mut rest).ok()?).ok()?;
    let body = rest.get(..len)?;
    Some((chunk.len() - rest.len() + len, body))
}
