//! The longest-prefix-match table behind the Routing service: for an address, the prefix that
//! covers it and the most specific binding (or most specific ACTIVE binding) containing it.
//!
//! Two tables, one for all bindings and one for ACTIVE ones, each holding every prefix and
//! binding CIDR of its kind, so a lookup is one LPM search: the entry found names the prefix
//! (prefixes never overlap and bindings lie inside them) and the binding at that CIDR, if any.
//! A prefix-wide binding shares its prefix's CIDR and so its entry.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

use super::by_length::ByLength;
use super::lpm::{HUGE_PAGES_FROM, Lpm, advise_huge_pages};
use crate::domain::{Binding, BindingId, Change, Prefix, PrefixId, ProvisioningState, State};

/// What a lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    pub prefix_id: PrefixId,
    /// The most specific (ACTIVE, when asked) binding containing the address, if any.
    pub binding_id: Option<BindingId>,
}

/// What one CIDR stands for in a table.
#[derive(Clone, Copy)]
struct Entry {
    route: Route,
    /// The CIDR is a prefix's (its binding, if any, is the prefix-wide one).
    is_prefix: bool,
}

/// CIDR -> entry, for both families, with LPM search.
#[derive(Default)]
struct Table {
    v4: Lpm<u32>,
    /// IPv6: a hash map per prefix length holding the entries themselves (see `by_length`
    /// for why not a trie).
    v6: ByLength<Entry>,
    /// IPv4's entries, indexed by the LPM values; freed slots are reused.
    entries: Vec<Entry>,
    free: Vec<u32>,
}

impl Table {
    fn entry_mut(&mut self, cidr: IpNet) -> Option<&mut Entry> {
        match cidr {
            IpNet::V4(net) => {
                let slot = self.v4.get(net.network().to_bits(), net.prefix_len())?;
                Some(&mut self.entries[slot as usize])
            }
            IpNet::V6(net) => self.v6.get_mut(net.network().to_bits(), net.prefix_len()),
        }
    }

    fn insert(&mut self, cidr: IpNet, entry: Entry) {
        match self.entry_mut(cidr) {
            Some(existing) => *existing = entry,
            None => self.insert_new(cidr, entry),
        }
    }

    /// Inserts a CIDR the table does not hold yet.
    fn insert_new(&mut self, cidr: IpNet, entry: Entry) {
        let net = match cidr {
            IpNet::V4(net) => net,
            IpNet::V6(net) => {
                self.v6.insert(net.network().to_bits(), net.prefix_len(), entry);
                return;
            }
        };
        let slot = match self.free.pop() {
            Some(slot) => {
                self.entries[slot as usize] = entry;
                slot
            }
            None => {
                let capacity = self.entries.capacity();
                self.entries.push(entry);
                if self.entries.capacity() != capacity && self.entries.len() >= HUGE_PAGES_FROM {
                    advise_huge_pages(self.entries.spare_capacity_mut());
                }
                u32::try_from(self.entries.len() - 1).expect("fewer than 2^32 routes")
            }
        };
        self.v4.insert(net.network().to_bits(), net.prefix_len(), slot);
    }

    fn remove(&mut self, cidr: IpNet) {
        match cidr {
            IpNet::V4(net) => self
                .free
                .extend(self.v4.remove(net.network().to_bits(), net.prefix_len())),
            IpNet::V6(net) => drop(self.v6.remove(net.network().to_bits(), net.prefix_len())),
        }
    }

    fn set_binding(&mut self, cidr: IpNet, prefix_id: PrefixId, binding_id: BindingId) {
        match self.entry_mut(cidr) {
            Some(entry) => entry.route.binding_id = Some(binding_id),
            None => self.insert_new(
                cidr,
                Entry {
                    route: Route {
                        prefix_id,
                        binding_id: Some(binding_id),
                    },
                    is_prefix: false,
                },
            ),
        }
    }

    fn clear_binding(&mut self, cidr: IpNet) {
        match self.entry_mut(cidr) {
            Some(entry) if entry.is_prefix => entry.route.binding_id = None,
            Some(_) => self.remove(cidr),
            None => {}
        }
    }

    #[inline]
    fn longest_match(&self, address: IpAddr) -> Option<Route> {
        match address {
            IpAddr::V4(address) => {
                let slot = self.v4.longest_match(address.to_bits())?;
                Some(self.entries[slot as usize].route)
            }
            IpAddr::V6(address) => self.v6_longest_match(address),
        }
    }

    /// Routes for many addresses, in order (IPv4 ones with overlapped cache misses).
    fn longest_matches(&self, addresses: &[IpAddr]) -> Vec<Option<Route>> {
        let v4: Vec<u32> = addresses
            .iter()
            .filter_map(|address| match address {
                IpAddr::V4(address) => Some(address.to_bits()),
                IpAddr::V6(_) => None,
            })
            .collect();
        let mut v4_slots = self.v4.longest_matches(&v4).into_iter();
        addresses
            .iter()
            .map(|address| match address {
                IpAddr::V4(_) => {
                    let slot = v4_slots.next().flatten()?;
                    Some(self.entries[slot as usize].route)
                }
                IpAddr::V6(address) => self.v6_longest_match(*address),
            })
            .collect()
    }

    fn v6_longest_match(&self, address: Ipv6Addr) -> Option<Route> {
        self.v6.longest_match(address.to_bits()).map(|entry| entry.route)
    }
}

#[derive(Default)]
pub struct RoutingTable {
    all: Table,
    active: Table,
}

impl RoutingTable {
    /// The routes of every prefix and binding of `state`.
    pub fn of(state: &State) -> RoutingTable {
        let mut routes = RoutingTable::default();
        for prefix in state.prefixes() {
            routes.add_prefix(prefix);
        }
        for binding in state.bindings() {
            routes.put_binding(binding);
        }
        routes
    }

    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::PrefixCreated(prefix) => self.add_prefix(prefix),
            Change::PrefixUpdated(_) => {}
            Change::PrefixDeleted(prefix) => {
                self.all.remove(prefix.cidr);
                self.active.remove(prefix.cidr);
            }
            Change::BindingCreated { binding, .. } | Change::BindingProvisioningStateChanged(binding) => {
                self.put_binding(binding)
            }
            Change::BindingDeleted(binding) => {
                self.all.clear_binding(binding.cidr);
                self.active.clear_binding(binding.cidr);
            }
        }
    }

    /// Adds a prefix (covering no binding yet).
    pub fn add_prefix(&mut self, prefix: &Prefix) {
        let entry = Entry {
            route: Route {
                prefix_id: prefix.id,
                binding_id: None,
            },
            is_prefix: true,
        };
        self.all.insert(prefix.cidr, entry);
        self.active.insert(prefix.cidr, entry);
    }

    /// Adds a binding, or records its new state.
    pub fn put_binding(&mut self, binding: &Binding) {
        self.all.set_binding(binding.cidr, binding.prefix_id, binding.id);
        if binding.state == ProvisioningState::Active {
            self.active.set_binding(binding.cidr, binding.prefix_id, binding.id);
        }
    }

    /// [`lookup`](Self::lookup) for many addresses at once, in order: faster per address.
    pub fn lookup_many(&self, addresses: &[IpAddr], active_only: bool) -> Vec<Option<Route>> {
        let table = if active_only { &self.active } else { &self.all };
        table.longest_matches(addresses)
    }

    /// The route for `address`, or `None` when no prefix covers it.
    pub fn lookup(&self, address: IpAddr, active_only: bool) -> Option<Route> {
        let table = if active_only { &self.active } else { &self.all };
        table.longest_match(address)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Binding, Prefix, Service};

    use crate::domain::fixtures::prefix;

    fn binding(prefix: &Prefix, cidr: &str, state: ProvisioningState) -> Binding {
        crate::domain::fixtures::binding(prefix, cidr, Service::MagicTransit, state)
    }

    fn route(table: &RoutingTable, address: &str, active_only: bool) -> Option<(PrefixId, Option<BindingId>)> {
        let route = table.lookup(address.parse().unwrap(), active_only)?;
        Some((route.prefix_id, route.binding_id))
    }

    #[test]
    fn a_prefix_wide_binding_shares_its_prefix_entry_through_its_whole_life() {
        let mut table = RoutingTable::default();
        let p = prefix("192.0.2.0/24");
        table.apply(&Change::PrefixCreated(p.clone()));
        assert_eq!(route(&table, "192.0.2.9", false), Some((p.id, None)));

        let mut wide = binding(&p, "192.0.2.0/24", ProvisioningState::Provisioning);
        let host = binding(&p, "192.0.2.9/32", ProvisioningState::Active);
        table.apply(&Change::BindingCreated {
            binding: wide.clone(),
            request_id: None,
        });
        table.apply(&Change::BindingCreated {
            binding: host.clone(),
            request_id: None,
        });
        assert_eq!(route(&table, "192.0.2.8", false), Some((p.id, Some(wide.id))));
        assert_eq!(
            route(&table, "192.0.2.8", true),
            Some((p.id, None)),
            "the wide one is not ACTIVE yet"
        );
        assert_eq!(route(&table, "192.0.2.9", true), Some((p.id, Some(host.id))));

        wide.state = ProvisioningState::Active;
        table.apply(&Change::BindingProvisioningStateChanged(wide.clone()));
        assert_eq!(route(&table, "192.0.2.8", true), Some((p.id, Some(wide.id))));

        table.apply(&Change::BindingDeleted(host));
        assert_eq!(route(&table, "192.0.2.9", true), Some((p.id, Some(wide.id))));
        table.apply(&Change::BindingDeleted(wide));
        assert_eq!(
            route(&table, "192.0.2.9", false),
            Some((p.id, None)),
            "the prefix stays"
        );
        assert_eq!(route(&table, "192.0.2.9", true), Some((p.id, None)));

        let addresses = ["192.0.2.9", "2001:db8::1", "192.0.2.200", "10.0.0.1"].map(|a| a.parse().unwrap());
        let one_by_one: Vec<_> = addresses.iter().map(|a| table.lookup(*a, false)).collect();
        assert_eq!(table.lookup_many(&addresses, false), one_by_one);
        assert_eq!(
            one_by_one[2],
            Some(Route {
                prefix_id: p.id,
                binding_id: None
            })
        );

        table.apply(&Change::PrefixDeleted(p));
        assert_eq!(route(&table, "192.0.2.9", false), None);
        assert_eq!(route(&table, "192.0.2.9", true), None);
    }

    #[test]
    fn ipv6_routes_like_ipv4() {
        let mut table = RoutingTable::default();
        let p = prefix("2001:db8::/48");
        table.apply(&Change::PrefixCreated(p.clone()));
        let host = binding(&p, "2001:db8::1/128", ProvisioningState::Active);
        table.apply(&Change::BindingCreated {
            binding: host.clone(),
            request_id: None,
        });
        assert_eq!(route(&table, "2001:db8::1", true), Some((p.id, Some(host.id))));
        assert_eq!(route(&table, "2001:db8::2", false), Some((p.id, None)));
        assert_eq!(route(&table, "2001:db9::1", false), None);
    }
}
