//! Test fixtures of domain values, for the unit tests of every layer: one place builds them.

use super::{AccountId, Binding, BindingId, Change, Event, Micros, Prefix, PrefixId, ProvisioningState, Service};

/// A prefix of a fresh account.
pub fn prefix(cidr: &str) -> Prefix {
    Prefix {
        id: PrefixId::generate(),
        account_id: AccountId::generate(),
        cidr: cidr.parse().unwrap(),
        asn: Some(64_496),
        description: "d".into(),
        created_at: Micros(1),
        modified_at: Micros(1),
    }
}

/// A binding of `prefix`.
pub fn binding(prefix: &Prefix, cidr: &str, service: Service, state: ProvisioningState) -> Binding {
    Binding {
        id: BindingId::generate(),
        account_id: prefix.account_id,
        prefix_id: prefix.id,
        cidr: cidr.parse().unwrap(),
        service,
        state,
        created_at: Micros(1),
        modified_at: Micros(2),
    }
}

/// `change` as the event at `revision` (its time: the revision, in microseconds).
pub fn event(revision: u64, change: Change) -> Event {
    Event {
        revision,
        time: Micros(revision as i64),
        change,
        actor: None,
    }
}

/// The creation of a prefix (of a fresh account) at `revision`.
pub fn prefix_event(revision: u64, cidr: &str) -> Event {
    Event {
        revision,
        time: Micros(5),
        change: Change::PrefixCreated(prefix(cidr)),
        actor: None,
    }
}
