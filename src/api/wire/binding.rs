//! `addressing.v1.ServiceBinding` written straight from a domain binding, as one gRPC frame:
//! a create's answer. tonic's path converted the binding into a message first (its three ids,
//! the service's id and name and the CIDR each a `String` of its own), encoded that into a
//! buffer of its own and copied it out: ~2,300 instructions of a create's ~78,000
//! (docs/benchmarks.md, Results: a create's answer written from the binding). The bytes are
//! the ones prost writes for [`convert::binding`](crate::api::convert::binding).

use bytes::Bytes;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use uuid::Uuid;

use super::{GRPC_FRAME_PREFIX as FRAME_PREFIX, grpc_frame_prefix};
use crate::api::convert::{provisioning_state, timestamp};
use crate::domain::network::write_cidr;
use crate::domain::{Binding, Micros};

/// The field numbers of the contract's message.
const ID: u32 = 1;
const CIDR: u32 = 2;
const PROVISIONING: u32 = 3;
const SERVICE_ID: u32 = 4;
const SERVICE_NAME: u32 = 5;
const PREFIX_ID: u32 = 6;
const ACCOUNT_ID: u32 = 7;
const CREATED_AT: u32 = 8;
const MODIFIED_AT: u32 = 9;
/// `Provisioning.state`, and `Timestamp.seconds` and `.nanos`.
const STATE: u32 = 1;
const SECONDS: u32 = 1;
const NANOS: u32 = 2;

/// `binding` as a whole gRPC frame (prefix, then the message). Not `created` (a validate-only
/// create's answer): without its id and timestamps, as `convert::as_not_yet_created` leaves it.
pub fn binding_frame(binding: &Binding, created: bool) -> Bytes {
    let mut frame = Vec::with_capacity(FRAME_PREFIX + 256);
    frame.resize(FRAME_PREFIX, 0);
    let mut hex = Uuid::encode_buffer();
    if created {
        string(ID, binding.id.0.simple().encode_lower(&mut hex), &mut frame);
    }
    // The CIDR's text (at most 43 bytes) written in place, its one-byte length set after.
    encode_key(CIDR, WireType::LengthDelimited, &mut frame);
    let length_at = frame.len();
    frame.push(0);
    write_cidr(&binding.cidr, &mut frame);
    frame[length_at] = u8::try_from(frame.len() - length_at - 1).expect("a CIDR's text is under 128 bytes");
    // Its state is never UNSPECIFIED, so the field is always there.
    let state = provisioning_state(binding.state) as u64;
    encode_key(PROVISIONING, WireType::LengthDelimited, &mut frame);
    encode_varint(1 + encoded_len_varint(state) as u64, &mut frame);
    encode_key(STATE, WireType::Varint, &mut frame);
    encode_varint(state, &mut frame);
    let service = binding.service;
    string(SERVICE_ID, service.id().0.simple().encode_lower(&mut hex), &mut frame);
    string(SERVICE_NAME, service.name(), &mut frame);
    string(
        PREFIX_ID,
        binding.prefix_id.0.simple().encode_lower(&mut hex),
        &mut frame,
    );
    string(
        ACCOUNT_ID,
        binding.account_id.0.simple().encode_lower(&mut hex),
        &mut frame,
    );
    if created {
        time(CREATED_AT, binding.created_at, &mut frame);
        time(MODIFIED_AT, binding.modified_at, &mut frame);
    }
    let prefix = grpc_frame_prefix(frame.len() - FRAME_PREFIX);
    frame[..FRAME_PREFIX].copy_from_slice(&prefix);
    Bytes::from(frame)
}

/// A string field, left out when empty (proto3).
fn string(tag: u32, value: &str, out: &mut Vec<u8>) {
    if !value.is_empty() {
        encode_key(tag, WireType::LengthDelimited, out);
        encode_varint(value.len() as u64, out);
        out.extend_from_slice(value.as_bytes());
    }
}

/// A `google.protobuf.Timestamp` field, always present (its zero fields left out).
fn time(tag: u32, time: Micros, out: &mut Vec<u8>) {
    let time = timestamp(time);
    // An `int64` and an `int32` are varints of their two's complement (10 bytes if negative).
    let (seconds, nanos) = (time.seconds as u64, i64::from(time.nanos) as u64);
    let field_len = |value: u64| if value == 0 { 0 } else { 1 + encoded_len_varint(value) };
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint((field_len(seconds) + field_len(nanos)) as u64, out);
    if seconds != 0 {
        encode_key(SECONDS, WireType::Varint, out);
        encode_varint(seconds, out);
    }
    if nanos != 0 {
        encode_key(NANOS, WireType::Varint, out);
        encode_varint(nanos, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::convert;
    use crate::domain::{AccountId, BindingId, PrefixId, ProvisioningState, Service};

    fn binding(cidr: &str, service: Service, state: ProvisioningState, created_at: i64, modified_at: i64) -> Binding {
        Binding {
            id: BindingId::generate(),
            account_id: AccountId::generate(),
            prefix_id: PrefixId::generate(),
            cidr: cidr.parse().unwrap(),
            service,
            state,
            created_at: Micros(created_at),
            modified_at: Micros(modified_at),
        }
    }

    /// The frame's message is prost's encoding of the converted binding, byte for byte, with
    /// every field's edge: both families, both states, each service, times at zero, negative,
    /// with and without a fraction of a second; and a validate-only answer without id and times.
    #[test]
    fn a_binding_frame_is_prost_s_encoding_of_the_converted_binding() {
        let bindings = [
            binding(
                "192.0.2.0/24",
                Service::MagicTransit,
                ProvisioningState::Provisioning,
                1_700_000_000_123_456,
                1_700_000_000_123_456,
            ),
            binding("0.0.0.0/0", Service::Cdn, ProvisioningState::Active, 0, 1),
            binding(
                "255.255.255.255/32",
                Service::Spectrum,
                ProvisioningState::Active,
                -1,
                -1_000_000,
            ),
            binding(
                "2001:db8::/32",
                Service::MagicTransit,
                ProvisioningState::Provisioning,
                5_000_000,
                1_000,
            ),
            binding(
                "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff/128",
                Service::Cdn,
                ProvisioningState::Active,
                i64::MAX,
                i64::MIN + 1,
            ),
        ];
        for binding in &bindings {
            for created in [true, false] {
                let mut expected = convert::binding(binding);
                if !created {
                    convert::as_not_yet_created(
                        &mut expected.id,
                        [&mut expected.created_at, &mut expected.modified_at],
                    );
                }
                let expected = prost::Message::encode_to_vec(&expected);
                let frame = binding_frame(binding, created);
                assert_eq!(frame[..FRAME_PREFIX], grpc_frame_prefix(expected.len()), "{binding:?}");
                assert_eq!(frame[FRAME_PREFIX..], expected[..], "{binding:?} created: {created}");
            }
        }
    }
}
