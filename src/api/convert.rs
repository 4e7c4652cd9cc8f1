//! Domain values to wire messages. Kept by hand and at the edge, so that the domain never
//! depends on generated types.

use prost_types::Timestamp;

use crate::domain::network::cidr_text;
use crate::domain::{Binding, Micros, Prefix, ProvisioningState, Service};
use crate::pb::api;

pub fn timestamp(time: Micros) -> Timestamp {
    Timestamp {
        seconds: time.0.div_euclid(1_000_000),
        nanos: (time.0.rem_euclid(1_000_000) * 1000) as i32,
    }
}

pub fn prefix(prefix: &Prefix) -> api::Prefix {
    api::Prefix {
        id: prefix.id.to_string(),
        account_id: prefix.account_id.to_string(),
        cidr: cidr_text(&prefix.cidr),
        asn: prefix.asn,
        description: prefix.description.clone(),
        created_at: Some(timestamp(prefix.created_at)),
        modified_at: Some(timestamp(prefix.modified_at)),
    }
}

pub fn provisioning_state(state: ProvisioningState) -> api::ProvisioningState {
    match state {
        ProvisioningState::Provisioning => api::ProvisioningState::Provisioning,
        ProvisioningState::Active => api::ProvisioningState::Active,
    }
}

pub fn binding(binding: &Binding) -> api::ServiceBinding {
    api::ServiceBinding {
        id: binding.id.to_string(),
        cidr: cidr_text(&binding.cidr),
        provisioning: Some(api::Provisioning {
            state: provisioning_state(binding.state) as i32,
        }),
        service_id: binding.service.id().to_string(),
        service_name: binding.service.name().to_string(),
        prefix_id: binding.prefix_id.to_string(),
        account_id: binding.account_id.to_string(),
        created_at: Some(timestamp(binding.created_at)),
        modified_at: Some(timestamp(binding.modified_at)),
    }
}

pub fn service(service: Service) -> api::Service {
    api::Service {
        id: service.id().to_string(),
        name: service.name().to_string(),
    }
}

/// A validate-only create's answer: no id (none was taken) and no timestamps.
pub fn as_not_yet_created(id: &mut String, timestamps: [&mut Option<Timestamp>; 2]) {
    id.clear();
    for timestamp in timestamps {
        *timestamp = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_microseconds_and_handle_negative_times() {
        assert_eq!(
            timestamp(Micros(1_500_001)),
            Timestamp {
                seconds: 1,
                nanos: 500_001_000
            }
        );
        assert_eq!(
            timestamp(Micros(-1)),
            Timestamp {
                seconds: -1,
                nanos: 999_999_000
            }
        );
    }
}
