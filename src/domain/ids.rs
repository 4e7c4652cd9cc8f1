//! Identifiers: accounts, prefixes and bindings are 128-bit values written as 32 lowercase hex
//! characters (a UUID in simple form). Parsing is strict so that one resource has one spelling.

use std::cmp::Ordering;
use std::fmt;
use std::hash::{Hash, Hasher};

use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub struct $name(pub Uuid);

        /// The bytes' order, compared as one big-endian integer: the ordered indexes are keyed
        /// by ids, and `Uuid`'s byte-by-byte compare was ~1.2% of a create's instructions
        /// (docs/benchmarks.md, counted in instructions).
        impl Ord for $name {
            fn cmp(&self, other: &Self) -> Ordering {
                self.0.as_u128().cmp(&other.0.as_u128())
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
                Some(self.cmp(other))
            }
        }

        /// One 128-bit word, not a length and a slice of bytes.
        impl Hash for $name {
            fn hash<H: Hasher>(&self, state: &mut H) {
                state.write_u128(self.0.as_u128());
            }
        }

        impl $name {
            /// Parses exactly 32 lowercase hex characters; anything else is `None`.
            pub fn parse(text: &str) -> Option<Self> {
                parse_simple_hex(text).map(Self)
            }

            /// A fresh random id.
            pub fn generate() -> Self {
                Self(Uuid::new_v4())
            }

            pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
                Uuid::from_slice(bytes).ok().map(Self)
            }

            pub fn as_bytes(&self) -> &[u8; 16] {
                self.0.as_bytes()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.0.simple().encode_lower(&mut Uuid::encode_buffer()))
            }
        }
    };
}

id_type!(
    /// The customer account that owns prefixes and bindings.
    AccountId
);
id_type!(
    /// An onboarded prefix.
    PrefixId
);
id_type!(
    /// A service binding.
    BindingId
);
id_type!(
    /// A service of the catalog (see [`super::service`]).
    ServiceId
);

/// Checks and reads the 32 digits, eight at a time (every call names two or three ids; a
/// digit-by-digit loop was ~1.3% of a create's instructions, `u128::from_str_radix` after a
/// separate check most of a percent of its CPU).
fn parse_simple_hex(text: &str) -> Option<Uuid> {
    let digits: &[u8; 32] = text.as_bytes().try_into().ok()?;
    let mut value = 0u128;
    for eight in digits.as_chunks::<8>().0 {
        value = value << 32 | u128::from(eight_hex_digits(*eight)?);
    }
    Some(Uuid::from_u128(value))
}

/// Eight lowercase hex digits read as one word, a byte per digit: their value, or `None` if
/// any byte is not one of `0-9a-f`.
fn eight_hex_digits(text: [u8; 8]) -> Option<u32> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    let text = u64::from_le_bytes(text);
    // A letter has bit 6 set ('a' = 0x61), a digit does not ('0' = 0x30): a letter's low
    // nibble plus 9 is its value. No byte below carries into the next (each stays <= 0x8e).
    let letters = (text >> 6) & ONES;
    let nibbles = (text & (ONES * 0x0f)) + letters * 9;
    // Valid exactly when every value is at most 15 and spelling it again gives the text.
    let over_15 = (nibbles + ONES * 0x70) & (ONES * 0x80);
    let spelled_as_letter = ((nibbles + ONES * 0x76) >> 7) & ONES;
    if over_15 != 0 || nibbles + ONES * 0x30 + spelled_as_letter * 0x27 != text {
        return None;
    }
    // The first digit is the lowest byte and the most significant nibble: pair the digits
    // into bytes, gather the four bytes, then put the first one on top.
    let pairs = ((nibbles & 0x00ff_00ff_00ff_00ff) << 4) | ((nibbles >> 8) & 0x00ff_00ff_00ff_00ff);
    let quads = (pairs | (pairs >> 8)) & 0x0000_ffff_0000_ffff;
    Some(((quads | (quads >> 16)) as u32).swap_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_simple_lowercase_hex() {
        let id = PrefixId::generate();
        assert_eq!(PrefixId::parse(&id.to_string()), Some(id));
        assert_eq!(id.to_string().len(), 32);
        for digits in [
            "0123456789abcdef0123456789abcdef",
            "ffffffffffffffffffffffffffffffff",
            "00000000000000000000000000000000",
        ] {
            assert_eq!(
                PrefixId::parse(digits).unwrap().0,
                Uuid::parse_str(digits).unwrap(),
                "{digits}"
            );
            assert_eq!(PrefixId::parse(digits).unwrap().to_string(), digits);
        }
        for bad in [
            "",
            "ABCDEF0123456789abcdef0123456789",
            "abcdef01-2345-6789-abcd-ef0123456789",
            "abcdef0123456789abcdef012345678",
            "abcdef0123456789abcdef01234567890",
            "+bcdef0123456789abcdef0123456789",
            "ghcdef0123456789abcdef0123456789",
        ] {
            assert_eq!(PrefixId::parse(bad), None, "{bad:?}");
        }
    }

    /// The plain reading the word-at-a-time one must agree with.
    fn digit_by_digit(text: &str) -> Option<Uuid> {
        if text.len() != 32 {
            return None;
        }
        let mut value = 0u128;
        for byte in text.bytes() {
            let digit = match byte {
                b'0'..=b'9' => byte - b'0',
                b'a'..=b'f' => byte - b'a' + 10,
                _ => return None,
            };
            value = value << 4 | u128::from(digit);
        }
        Some(Uuid::from_u128(value))
    }

    #[test]
    fn every_byte_in_every_place_reads_as_digit_by_digit() {
        let base: Vec<u8> = b"0123456789abcdeffedcba9876543210".to_vec();
        for place in 0..32 {
            for byte in 0..=255u8 {
                let mut text = base.clone();
                text[place] = byte;
                let Ok(text) = std::str::from_utf8(&text) else {
                    assert_eq!(eight_hex_digits(text[place / 8 * 8..][..8].try_into().unwrap()), None);
                    continue;
                };
                assert_eq!(parse_simple_hex(text), digit_by_digit(text), "{text:?}");
            }
        }
        for _ in 0..1000 {
            let id = Uuid::new_v4();
            let text = id.simple().to_string();
            assert_eq!(parse_simple_hex(&text), Some(id));
            assert_eq!(
                parse_simple_hex(&text.to_uppercase()),
                digit_by_digit(&text.to_uppercase())
            );
        }
    }

    #[test]
    fn ids_order_as_their_bytes_do() {
        let mut ids: Vec<Uuid> = (0..200).map(|_| Uuid::new_v4()).collect();
        for byte in 0..16 {
            for value in [0x00, 0x01, 0x7f, 0x80, 0xff] {
                let mut bytes = [0x55; 16];
                bytes[byte] = value;
                ids.push(Uuid::from_bytes(bytes));
            }
        }
        for a in &ids {
            for b in &ids {
                assert_eq!(
                    BindingId(*a).cmp(&BindingId(*b)),
                    a.as_bytes().cmp(b.as_bytes()),
                    "{a} {b}"
                );
            }
        }
    }
}
