//! The service catalog (Magic Transit, CDN, Spectrum) and which service may be layered over
//! which. The ids are constants so that every server and data directory agrees on them.

use super::ids::ServiceId;
use uuid::Uuid;

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
        let raw: u128 = match self {
            Service::MagicTransit => 0x8a1b6bd5c1e24f3e9d3b7a0f5c2e4d61,
            Service::Cdn => 0xc2f0e7a4b9d84b6c8e1f3a5d7b9c0e12,
            Service::Spectrum => 0x5e7d9c1b3a2f4e6d8c0b1a3f5e7d9c23,
        };
        ServiceId(Uuid::from_u128(raw))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_distinct_and_round_trip() {
        for service in Service::ALL {
            assert_eq!(Service::from_id(service.id()), Some(service));
        }
        assert_eq!(Service::from_id(ServiceId(Uuid::nil())), None);
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
