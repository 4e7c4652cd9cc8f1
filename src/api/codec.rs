//! The protobuf codec of every addressing.v1 service: tonic-prost's, except that a request
//! that does not decode (say, a string field that is not UTF-8) is INVALID_ARGUMENT naming the
//! field, not INTERNAL: it is the caller's input that is wrong, not the server. And a
//! message is written into a buffer sized for it at once: tonic's starts at 8 KiB and grew by
//! doubling under a batch answer of ~200 KB, copying what it held at each step (the server
//! now sends that answer without this encoder: `routing_endpoint.rs`; a client's batch
//! request still goes through it). On a client, a batch answer is received into a buffer of
//! [`BATCH_ANSWER_BUFFER`] for the same reason.

use std::any::TypeId;

use prost::Message;
use tonic::Status;
use tonic::codec::{BufferSettings, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use crate::domain::{Error, Reason};
use crate::pb::api::LookupAddressesResponse;

/// The receive buffer of a batch answer. tonic's starts at 8 KiB; once the first chunk of a
/// message is in it, tonic reserves room for the message's whole length on top of that chunk,
/// and with large frames (ipamctl's are 1 MiB) the first chunk is the whole answer: so room
/// for twice an answer is needed, or the answer is copied into a new buffer. Answers for 1,000
/// addresses are ~210 KB (COMPACT) and ~260 KB (FULL) on ipamctl's bench fixture; a larger
/// one is copied once, as any message is.
pub const BATCH_ANSWER_BUFFER: usize = 1024 * 1024;
/// tonic's yield threshold (which only its encoder uses): its default.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Wraps [`ProstCodec`]; selected for the generated code in build.rs (`codec_path`).
#[derive(Debug, Clone, Default)]
pub struct AddressingCodec<T, U> {
    prost: ProstCodec<T, U>,
}

impl<T, U> tonic::codec::Codec for AddressingCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ResponseEncoder<T>;
    type Decoder = RequestDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseEncoder {
            prost: self.prost.encoder(),
        }
    }

    fn decoder(&mut self) -> Self::Decoder {
        RequestDecoder {
            prost: self.prost.decoder(),
        }
    }
}

#[derive(Debug)]
pub struct ResponseEncoder<T> {
    prost: ProstEncoder<T>,
}

impl<T: Message> Encoder for ResponseEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode_raw(buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.prost.buffer_settings()
    }
}

#[derive(Debug)]
pub struct RequestDecoder<U> {
    prost: ProstDecoder<U>,
}

impl<U: Message + Default + 'static> Decoder for RequestDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        self.prost
            .decode(buf)
            .map_err(|status| Status::from(malformed(status.message())))
    }

    /// tonic's, except for a batch answer (decoded by clients alone): the codec is generic over
    /// its messages, so the size is chosen by the message's type.
    fn buffer_settings(&self) -> BufferSettings {
        match TypeId::of::<U>() == TypeId::of::<LookupAddressesResponse>() {
            true => BufferSettings::new(BATCH_ANSWER_BUFFER, YIELD_THRESHOLD),
            false => self.prost.buffer_settings(),
        }
    }
}

/// prost describes a decode failure as "failed to decode Protobuf message: Message.field: why";
/// the field is named when prost names it.
fn malformed(description: &str) -> Error {
    let field = description
        .split(": ")
        .find_map(|part| part.split_once('.').map(|(_, field)| field))
        .filter(|field| {
            !field.is_empty()
                && field
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        })
        .unwrap_or("");
    let message = format!("the request is not a valid protobuf message: {description}");
    if field.is_empty() {
        Error::new(Reason::MalformedRequest, message)
    } else {
        Error::field(Reason::MalformedRequest, field, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::api;

    #[test]
    fn a_batch_answer_alone_is_received_into_a_large_buffer() {
        use tonic::codec::Codec;
        let batch_answer = AddressingCodec::<api::LookupAddressesRequest, LookupAddressesResponse>::default()
            .decoder()
            .buffer_settings();
        let other = AddressingCodec::<api::LookupAddressRequest, api::LookupAddressResponse>::default()
            .decoder()
            .buffer_settings();
        let expected = BufferSettings::new(BATCH_ANSWER_BUFFER, YIELD_THRESHOLD);
        assert_eq!(format!("{batch_answer:?}"), format!("{expected:?}"));
        assert_eq!(format!("{other:?}"), format!("{:?}", BufferSettings::default()));
    }

    #[test]
    fn names_the_field_prost_names() {
        let error = malformed(
            "failed to decode Protobuf message: CreatePrefixRequest.cidr: invalid string value: data is not UTF-8 encoded",
        );
        assert_eq!(error.reason, Reason::MalformedRequest);
        assert_eq!(error.violations[0].field, "cidr");
        assert!(
            malformed("failed to decode Protobuf message: buffer underflow")
                .violations
                .is_empty()
        );
    }
}
