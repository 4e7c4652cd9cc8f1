//! The resources: prefixes and service bindings, as the domain sees them.

use ipnet::IpNet;

use super::ids::{AccountId, BindingId, PrefixId};
use super::service::Service;

/// A point in time: microseconds since the Unix epoch, UTC (the contract's precision).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Micros(pub i64);

impl Micros {
    pub fn now() -> Micros {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        Micros(i64::try_from(since_epoch.as_micros()).unwrap_or(i64::MAX))
    }

    pub fn plus(self, duration: std::time::Duration) -> Micros {
        let micros = i64::try_from(duration.as_micros()).unwrap_or(i64::MAX);
        Micros(self.0.saturating_add(micros))
    }
}

/// An onboarded IP prefix of an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefix {
    pub id: PrefixId,
    pub account_id: AccountId,
    pub cidr: IpNet,
    pub asn: Option<u32>,
    pub description: String,
    pub created_at: Micros,
    pub modified_at: Micros,
}

/// Where a binding's rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ProvisioningState {
    /// Accepted, not yet propagated: traffic is not steered by it yet.
    Provisioning,
    /// Propagated: traffic for its addresses goes to its service.
    Active,
}

/// A CIDR of a prefix bound to a service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    pub id: BindingId,
    pub account_id: AccountId,
    pub prefix_id: PrefixId,
    pub cidr: IpNet,
    pub service: Service,
    pub state: ProvisioningState,
    pub created_at: Micros,
    pub modified_at: Micros,
}
