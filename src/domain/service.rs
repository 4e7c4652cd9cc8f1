//! The service catalog (Magic Transit, CDN, Spectrum) and which service may be layered over
//! which. The ids are constants so that every server and data directory agrees on them.

use super::ids::ServiceId;
use uuid::Uuid;

/// Magic Transit's service id (32 lowercase hex characters, as the API writes ids).
pub const MAGIC_TRANSIT_ID: &str = "8a1b6bd5c1e24f3e9d3b7a0f5c2e4d61";
/// CDN's service id.
pub const CDN_ID: &str = "c2f0e7a4b9d84b6c8e1f3a5d7b9c0e12";
/// Spectrum's service id.
pub const SPECTRUM_ID: &str = "5e7d9c1b3a2f4e6d8c0b1a3f5e7d9c23";

/// A network service that addresses can be bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Service {
    MagicTransit,
    Cdn,
    Spectrum,
}

impl Service {
    /// The catalog, in the order ListServices returns it.
    pub const ALL: [Service; 3] = [Service::MagicTransit, Service::Cdn, Service::Spectrum];

    pub fn id(self) -> ServiceId {
        const IDS: [u128; 3] = [hex_u128(MAGIC_TRANSIT_ID), hex_u128(CDN_ID), hex_u128(SPECTRUM_ID)];
        let raw = match self {
            Service::MagicTransit => IDS[0],
            Service::Cdn => IDS[1],
            Service::Spectrum => IDS[2],
        };
        ServiceId(Uuid::from_u128(raw))
    }

    /// The name in the command-line form: `magic-transit`, `cdn`, `spectrum`.
    pub fn slug(self) -> &'static str {
        match self {
            Service::MagicTransit => "magic-transit",
            Service::Cdn => "cdn",
            Service::Spectrum => "spectrum",
        }
    }

    /// The service a person named: its name as ListServices prints it (`Magic Transit`), its
    /// slug (`magic-transit`, also with `_` or a space), case-insensitive, or its id.
    pub fn from_name(text: &str) -> Option<Service> {
        let wanted = text.trim().to_ascii_lowercase().replace(['_', ' '], "-");
        Service::ALL
            .into_iter()
            .find(|service| service.slug() == wanted || service.id().to_string() == wanted)
    }

    pub fn name(self) -> &'static str {
        match self {
            Service::MagicTransit => "Magic Transit",
            Service::Cdn => "CDN",
            Service::Spectrum => "Spectrum",
        }
    }

    pub fn from_id(id: ServiceId) -> Option<Service> {
        Service::ALL.into_iter().find(|service| service.id() == id)
    }

    /// Whether a more specific binding to `self` may sit inside a prefix whose prefix-wide
    /// binding is `prefix_wide`: over Magic Transit, CDN or Spectrum; over CDN, Spectrum; over
    /// Spectrum, CDN.
    pub fn may_layer_over(self, prefix_wide: Service) -> bool {
        matches!(
            (prefix_wide, self),
            (Service::MagicTransit, Service::Cdn | Service::Spectrum)
                | (Service::Cdn, Service::Spectrum)
                | (Service::Spectrum, Service::Cdn)
        )
    }
}

/// A 32-digit lowercase hex id as a number, at compile time.
const fn hex_u128(hex: &str) -> u128 {
    let digits = hex.as_bytes();
    assert!(digits.len() == 32, "a service id has 32 hex digits");
    let mut value = 0u128;
    let mut index = 0;
    while index < digits.len() {
        let digit = match digits[index] {
            digit @ b'0'..=b'9' => digit - b'0',
            digit @ b'a'..=b'f' => digit - b'a' + 10,
            _ => panic!("a service id is lowercase hex"),
        };
        value = value * 16 + digit as u128;
        index += 1;
    }
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_round_trip() {
        for service in Service::ALL {
            assert_eq!(Service::from_id(service.id()), Some(service));
        }
        assert_eq!(Service::from_id(ServiceId(Uuid::nil())), None);
        assert_eq!(Service::MagicTransit.id().to_string(), MAGIC_TRANSIT_ID);
    }

    #[test]
    fn names_people_type_find_the_service() {
        for (text, service) in [
            ("Magic Transit", Service::MagicTransit),
            ("magic-transit", Service::MagicTransit),
            ("MAGIC_TRANSIT", Service::MagicTransit),
            ("cdn", Service::Cdn),
            ("CDN", Service::Cdn),
            ("Spectrum", Service::Spectrum),
            (SPECTRUM_ID, Service::Spectrum),
        ] {
            assert_eq!(Service::from_name(text), Some(service), "{text}");
        }
        assert_eq!(Service::from_name("mt"), None);
        assert_eq!(Service::from_name("cloudflare"), None);
    }

    #[test]
    fn layering_matrix() {
        use Service::*;
        let allowed = [
            (MagicTransit, Cdn),
            (MagicTransit, Spectrum),
            (Cdn, Spectrum),
            (Spectrum, Cdn),
        ];
        for over in Service::ALL {
            for child in Service::ALL {
                assert_eq!(
                    child.may_layer_over(over),
                    allowed.contains(&(over, child)),
                    "{child:?} over {over:?}"
                );
            }
        }
    }
}
