//! The longest-prefix-match table behind the Routing service: for an address, the prefix that
//! covers it and the most specific binding (or most specific ACTIVE binding) containing it.
//! Built on the prefix-trie crate, one trie per address family and per question.

use std::net::IpAddr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;

use crate::domain::{BindingId, Change, PrefixId, ProvisioningState};

/// One LPM trie per address family.
#[derive(Clone)]
struct DualTrie<T> {
    v4: PrefixMap<Ipv4Net, T>,
    v6: PrefixMap<Ipv6Net, T>,
}

impl<T> Default for DualTrie<T> {
    fn default() -> Self {
        DualTrie {
            v4: PrefixMap::new(),
            v6: PrefixMap::new(),
        }
    }
}

impl<T: Copy> DualTrie<T> {
    fn insert(&mut self, network: IpNet, value: T) {
        match network {
            IpNet::V4(net) => {
                self.v4.insert(net, value);
            }
            IpNet::V6(net) => {
                self.v6.insert(net, value);
            }
        }
    }

    fn remove(&mut self, network: IpNet) {
        match network {
            IpNet::V4(net) => {
                self.v4.remove(&net);
            }
            IpNet::V6(net) => {
                self.v6.remove(&net);
            }
        }
    }

    fn longest_match(&self, address: IpAddr) -> Option<T> {
        match address {
            IpAddr::V4(address) => self.v4.get_lpm(&Ipv4Net::from(address)).map(|(_, value)| *value),
            IpAddr::V6(address) => self.v6.get_lpm(&Ipv6Net::from(address)).map(|(_, value)| *value),
        }
    }
}

/// What a lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub prefix_id: PrefixId,
    /// The most specific (ACTIVE, when asked) binding containing the address, if any.
    pub binding_id: Option<BindingId>,
}

#[derive(Clone, Default)]
pub struct RoutingTable {
    prefixes: DualTrie<PrefixId>,
    bindings: DualTrie<BindingId>,
    active_bindings: DualTrie<BindingId>,
}

impl RoutingTable {
    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::PrefixCreated(prefix) => self.prefixes.insert(prefix.cidr, prefix.id),
            Change::PrefixUpdated(_) => {}
            Change::PrefixDeleted(prefix) => self.prefixes.remove(prefix.cidr),
            Change::BindingCreated { binding, .. } | Change::BindingProvisioningStateChanged(binding) => {
                self.bindings.insert(binding.cidr, binding.id);
                if binding.state == ProvisioningState::Active {
                    self.active_bindings.insert(binding.cidr, binding.id);
                }
            }
            Change::BindingDeleted(binding) => {
                self.bindings.remove(binding.cidr);
                self.active_bindings.remove(binding.cidr);
            }
        }
    }

    /// The route for `address`, or `None` when no prefix covers it.
    pub fn lookup(&self, address: IpAddr, active_only: bool) -> Option<Route> {
        let prefix_id = self.prefixes.longest_match(address)?;
        let bindings = if active_only {
            &self.active_bindings
        } else {
            &self.bindings
        };
        Some(Route {
            prefix_id,
            binding_id: bindings.longest_match(address),
        })
    }
}
