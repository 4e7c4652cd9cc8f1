//! Identifiers: accounts, prefixes and bindings are 128-bit values written as 32 lowercase hex
//! characters (a UUID in simple form). Parsing is strict so that one resource has one spelling.

use std::fmt;

use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub Uuid);

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

/// Checks and reads the 32 digits in one pass (every call names two or three ids;
/// `u128::from_str_radix` after a separate check took most of a percent of a create's CPU).
fn parse_simple_hex(text: &str) -> Option<Uuid> {
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
}
