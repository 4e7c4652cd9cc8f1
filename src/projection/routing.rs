//! The longest-prefix-match table behind the Routing service: for an address, the prefix that
//! covers it and the most specific binding (or most specific ACTIVE binding) containing it.
//!
//! One table holds every prefix and binding CIDR, so a lookup is one LPM search: the entry
//! found names the prefix (prefixes never overlap and bindings lie inside them), the binding at
//! that CIDR, if any, and whether that binding is ACTIVE. A prefix-wide binding shares its
//! prefix's CIDR and so its entry. An ACTIVE-only lookup that lands on a binding not ACTIVE yet
//! (a binding is PROVISIONING for seconds after its creation) looks for the next enclosing
//! entry that decides it, up to the prefix's; every other lookup costs the same as an
//! all-bindings one. A second table of the ACTIVE bindings alone doubled the memory of the
//! routes (docs/benchmarks.md, the routing table's memory) for that rare case.

use std::net::{IpAddr, Ipv6Addr};

use ipnet::IpNet;

use super::by_length::ByLength;
use super::lpm::Lpm;
use crate::domain::{Binding, BindingId, Change, Prefix, PrefixId, ProvisioningState, State};
use crate::huge_pages::push_advised;

/// What a lookup found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Route {
    pub prefix_id: PrefixId,
    /// The most specific (ACTIVE, when asked) binding containing the address, if any.
    pub binding_id: Option<BindingId>,
    /// That binding is ACTIVE (`false` when there is none). A binding changes once in its
    /// life, when it turns ACTIVE, so with the ids this tells which version of it was found.
    pub binding_active: bool,
}

impl Route {
    /// A prefix's route with no binding.
    fn prefix_only(prefix_id: PrefixId) -> Route {
        Route {
            prefix_id,
            binding_id: None,
            binding_active: false,
        }
    }
}

/// What one CIDR stands for in the table: the prefix and the binding at this CIDR (whatever
/// its state), in 34 bytes (a `Route` and two more fields took 36: a million of them are most
/// of the table's memory). The IPv4 table keeps its entries split in two arrays
/// ([`V4Entries`]).
#[derive(Clone, Copy)]
struct Entry {
    prefix_id: PrefixId,
    /// Meaningful when `flags` has [`HAS_BINDING`].
    binding_id: BindingId,
    flags: u8,
    /// The CIDR's prefix length: where the search for an enclosing ACTIVE binding starts.
    len: u8,
}

const _: () = assert!(std::mem::size_of::<Entry>() == 34);

/// `Entry::binding_id` when no binding is at the entry's CIDR.
const NO_BINDING: BindingId = BindingId(uuid::Uuid::nil());

/// In `Entry::flags`: a binding is at the entry's CIDR.
const HAS_BINDING: u8 = 1;
/// In `Entry::flags`: that binding is ACTIVE.
const BINDING_ACTIVE: u8 = 2;
/// In `Entry::flags`: the CIDR is a prefix's (its binding, if any, is the prefix-wide one).
const IS_PREFIX: u8 = 4;

impl Entry {
    fn new(route: Route, is_prefix: bool, len: u8) -> Entry {
        let mut entry = Entry {
            prefix_id: route.prefix_id,
            binding_id: NO_BINDING,
            flags: if is_prefix { IS_PREFIX } else { 0 },
            len,
        };
        entry.set_route(route);
        entry
    }

    #[inline]
    fn route(&self) -> Route {
        Route {
            prefix_id: self.prefix_id,
            binding_id: (self.flags & HAS_BINDING != 0).then_some(self.binding_id),
            binding_active: self.flags & BINDING_ACTIVE != 0,
        }
    }

    fn set_route(&mut self, route: Route) {
        self.prefix_id = route.prefix_id;
        self.binding_id = route.binding_id.unwrap_or(NO_BINDING);
        self.flags &= IS_PREFIX;
        if route.binding_id.is_some() {
            self.flags |= HAS_BINDING;
        }
        if route.binding_active {
            self.flags |= BINDING_ACTIVE;
        }
    }

    fn is_prefix(&self) -> bool {
        self.flags & IS_PREFIX != 0
    }

    /// The route of the ACTIVE bindings for an address whose most specific CIDR is this one,
    /// or `None` when an enclosing entry decides it (this one's binding is not ACTIVE).
    fn active_route(&self) -> Option<Route> {
        if self.flags & HAS_BINDING == 0 || self.flags & BINDING_ACTIVE != 0 {
            return Some(self.route());
        }
        self.is_prefix().then(|| Route::prefix_only(self.prefix_id))
    }
}

/// How many IPv4 addresses ahead of the one answered a batch asks for the entry of (a
/// thousand-address batch reads its entries at a few nanoseconds each, against ~100 ns for a
/// miss to memory).
const ENTRY_LOOKAHEAD: usize = 16;

/// IPv4's entries, indexed by the LPM values, in two arrays: the ids, 32 bytes aligned to 32
/// so that a lookup's one cache miss on them is one line (34-byte entries straddled two
/// lines one time in two), and the flags and lengths (2 MiB at a million entries, mostly
/// cached). Freed slots are reused.
#[derive(Default)]
struct V4Entries {
    ids: Vec<EntryIds>,
    marks: Vec<EntryMarks>,
    free: Vec<u32>,
}

#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct EntryIds {
    prefix_id: PrefixId,
    binding_id: BindingId,
}

#[derive(Clone, Copy)]
struct EntryMarks {
    flags: u8,
    len: u8,
}

const _: () = assert!(std::mem::size_of::<EntryIds>() == 32);

impl V4Entries {
    #[inline]
    fn get(&self, slot: u32) -> Entry {
        let (ids, marks) = (self.ids[slot as usize], self.marks[slot as usize]);
        Entry {
            prefix_id: ids.prefix_id,
            binding_id: ids.binding_id,
            flags: marks.flags,
            len: marks.len,
        }
    }

    /// Starts loading `slot`'s ids and flags, and the ids of the entries after it up to its
    /// next cache line: those of the CIDRs inside `slot`'s, when the entries were added in
    /// address order. `slot` need not be one (the LPM's `NONE`): a prefetch never faults.
    #[inline(always)]
    fn prefetch_from(&self, slot: u32) {
        self.prefetch(slot);
        crate::prefetch::prefetch_at(self.ids.as_ptr().wrapping_add(slot as usize + 2));
    }

    /// Starts loading `slot`'s ids and flags.
    #[inline(always)]
    fn prefetch(&self, slot: u32) {
        crate::prefetch::prefetch_at(self.ids.as_ptr().wrapping_add(slot as usize));
        crate::prefetch::prefetch_at(self.marks.as_ptr().wrapping_add(slot as usize));
    }

    fn set(&mut self, slot: u32, entry: Entry) {
        let (ids, marks) = Self::split(entry);
        self.ids[slot as usize] = ids;
        self.marks[slot as usize] = marks;
    }

    /// Stores `entry` in a free slot and returns the slot.
    fn add(&mut self, entry: Entry) -> u32 {
        if let Some(slot) = self.free.pop() {
            self.set(slot, entry);
            return slot;
        }
        let slot = u32::try_from(self.ids.len()).expect("fewer than 2^32 routes");
        let (ids, marks) = Self::split(entry);
        push_advised(&mut self.ids, ids);
        push_advised(&mut self.marks, marks);
        slot
    }

    /// Makes `slot` free for reuse (its CIDR left the table).
    fn release(&mut self, slot: u32) {
        self.free.push(slot);
    }

    fn split(entry: Entry) -> (EntryIds, EntryMarks) {
        let ids = EntryIds {
            prefix_id: entry.prefix_id,
            binding_id: entry.binding_id,
        };
        let marks = EntryMarks {
            flags: entry.flags,
            len: entry.len,
        };
        (ids, marks)
    }
}

/// CIDR -> entry, for both families, with LPM search.
#[derive(Default)]
struct Table {
    v4: Lpm,
    /// IPv6: a hash map per prefix length holding the entries themselves (see `by_length`
    /// for why not a trie).
    v6: ByLength<Entry>,
    v4_entries: V4Entries,
}

impl Table {
    fn entry(&self, cidr: IpNet) -> Option<Entry> {
        match cidr {
            IpNet::V4(net) => {
                let slot = self.v4.get(net.network().to_bits(), net.prefix_len())?;
                Some(self.v4_entries.get(slot))
            }
            IpNet::V6(net) => self.v6.get(net.network().to_bits(), net.prefix_len()).copied(),
        }
    }

    /// Sets the entry of `cidr`, whether or not the table holds the CIDR yet.
    fn insert(&mut self, cidr: IpNet, entry: Entry) {
        self.put(cidr, |_| entry);
    }

    /// Sets the entry of `cidr` to what `make` makes of the one it has, if any: one search
    /// for the CIDR, whether it is held or added.
    fn put(&mut self, cidr: IpNet, make: impl FnOnce(Option<Entry>) -> Entry) {
        match cidr {
            IpNet::V4(net) => {
                let (network, len) = (net.network().to_bits(), net.prefix_len());
                match self.v4.get(network, len) {
                    Some(slot) => self.v4_entries.set(slot, make(Some(self.v4_entries.get(slot)))),
                    None => {
                        let slot = self.v4_entries.add(make(None));
                        self.v4.insert(network, len, slot);
                    }
                }
            }
            IpNet::V6(net) => {
                let (network, len) = (net.network().to_bits(), net.prefix_len());
                match self.v6.get_mut(network, len) {
                    Some(existing) => *existing = make(Some(*existing)),
                    None => drop(self.v6.insert(network, len, make(None))),
                }
            }
        }
    }

    fn remove(&mut self, cidr: IpNet) {
        match cidr {
            IpNet::V4(net) => {
                if let Some(slot) = self.v4.remove(net.network().to_bits(), net.prefix_len()) {
                    self.v4_entries.release(slot);
                }
            }
            IpNet::V6(net) => drop(self.v6.remove(net.network().to_bits(), net.prefix_len())),
        }
    }

    fn set_binding(&mut self, cidr: IpNet, route: Route) {
        self.put(cidr, |existing| {
            let mut entry = existing.unwrap_or_else(|| Entry::new(route, false, cidr.prefix_len()));
            entry.set_route(route);
            entry
        });
    }

    fn clear_binding(&mut self, cidr: IpNet) {
        match self.entry(cidr) {
            Some(mut entry) if entry.is_prefix() => {
                entry.set_route(Route::prefix_only(entry.prefix_id));
                self.insert(cidr, entry);
            }
            Some(_) => self.remove(cidr),
            None => {}
        }
    }

    /// An IPv4 search asks for the entries near the covering /24's (or shorter prefix's)
    /// while the LPM reads its leaf, then reads the entry it found: with the entries laid out
    /// in address order, that one is usually among them, so its cache miss overlaps the
    /// leaf's instead of following it.
    #[inline(always)]
    fn longest_match(&self, address: IpAddr) -> Option<Entry> {
        match address {
            IpAddr::V4(address) => {
                let slot = self
                    .v4
                    .longest_match_with_cover(address.to_bits(), |cover| self.v4_entries.prefetch_from(cover))?;
                Some(self.v4_entries.get(slot))
            }
            IpAddr::V6(address) => self.v6_longest_match(address),
        }
    }

    /// `answer` of each address and its longest match, in order: the IPv4 addresses' LPM
    /// values first, all of them, with their cache misses overlapped (`Lpm::longest_matches`),
    /// then each entry read with the one [`ENTRY_LOOKAHEAD`] IPv4 addresses further on asked
    /// for, so that the entries' misses overlap too.
    fn longest_matches<T>(&self, addresses: &[IpAddr], answer: impl Fn(IpAddr, Option<Entry>) -> T) -> Vec<T> {
        let v4: Vec<u32> = addresses
            .iter()
            .filter_map(|address| match address {
                IpAddr::V4(address) => Some(address.to_bits()),
                IpAddr::V6(_) => None,
            })
            .collect();
        let v4_slots = self.v4.longest_matches(&v4);
        let mut next_v4 = 0;
        addresses
            .iter()
            .map(|&address| {
                let entry = match address {
                    IpAddr::V4(_) => {
                        if let Some(&Some(ahead)) = v4_slots.get(next_v4 + ENTRY_LOOKAHEAD) {
                            self.v4_entries.prefetch(ahead);
                        }
                        let slot = v4_slots[next_v4];
                        next_v4 += 1;
                        slot.map(|slot| self.v4_entries.get(slot))
                    }
                    IpAddr::V6(address) => self.v6_longest_match(address),
                };
                answer(address, entry)
            })
            .collect()
    }

    fn v6_longest_match(&self, address: Ipv6Addr) -> Option<Entry> {
        self.v6.longest_match(address.to_bits()).copied()
    }
}

#[derive(Default)]
pub struct RoutingTable {
    table: Table,
}

impl RoutingTable {
    /// The routes of every prefix and binding of `state`, added in address order: the IPv4
    /// table then fills its nodes one after another, each growing at the end of its arrays
    /// instead of moving, and paints each node once at the end (docs/benchmarks.md, restart).
    pub fn of(state: &State) -> RoutingTable {
        let mut routes = RoutingTable::default();
        routes.table.v4.defer_painting();
        let mut prefixes: Vec<&Prefix> = state.prefixes().collect();
        prefixes.sort_unstable_by_key(|prefix| prefix.cidr);
        let mut bindings: Vec<&Binding> = state.bindings().collect();
        bindings.sort_unstable_by_key(|binding| binding.cidr);
        // Merged in address order, each prefix before the bindings inside it: the entries
        // are added, and so laid out, as the lookups expect (`V4Entries::prefetch_from`).
        let mut bindings = bindings.into_iter().peekable();
        for prefix in prefixes {
            while let Some(binding) = bindings.next_if(|binding| binding.cidr < prefix.cidr) {
                routes.put_binding(binding);
            }
            routes.add_prefix(prefix);
        }
        bindings.for_each(|binding| routes.put_binding(binding));
        routes.table.v4.paint_deferred();
        routes
    }

    pub fn apply(&mut self, change: &Change) {
        match change {
            Change::PrefixCreated(prefix) => self.add_prefix(prefix),
            Change::PrefixUpdated(_) => {}
            Change::PrefixDeleted(prefix) => self.table.remove(prefix.cidr),
            Change::BindingCreated { binding, .. } | Change::BindingProvisioningStateChanged(binding) => {
                self.put_binding(binding)
            }
            Change::BindingDeleted(binding) => self.table.clear_binding(binding.cidr),
        }
    }

    /// Adds a prefix (covering no binding yet).
    pub fn add_prefix(&mut self, prefix: &Prefix) {
        let entry = Entry::new(Route::prefix_only(prefix.id), true, prefix.cidr.prefix_len());
        self.table.insert(prefix.cidr, entry);
    }

    /// Adds a binding, or records its new state.
    pub fn put_binding(&mut self, binding: &Binding) {
        let route = Route {
            prefix_id: binding.prefix_id,
            binding_id: Some(binding.id),
            binding_active: binding.state == ProvisioningState::Active,
        };
        self.table.set_binding(binding.cidr, route);
    }

    /// [`lookup`](Self::lookup) for many addresses at once, in order: faster per address.
    pub fn lookup_many(&self, addresses: &[IpAddr], active_only: bool) -> Vec<Option<Route>> {
        self.table.longest_matches(addresses, |address, entry| {
            Some(self.route(address, entry?, active_only))
        })
    }

    /// The route for `address`, or `None` when no prefix covers it, with the CPU's `popcnt`
    /// instruction where it has one (nearly every x86-64 server): the IPv4 LPM counts bits
    /// three times per lookup, and the portable count is a dozen instructions each time, which
    /// keep fewer lookups in flight at once. The whole lookup, its route made from the entry
    /// included, is the one function chosen, so the entry is not copied out of it first.
    #[inline]
    pub fn lookup(&self, address: IpAddr, active_only: bool) -> Option<Route> {
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("popcnt") {
            // SAFETY: this CPU has the feature.
            return unsafe { self.lookup_popcnt(address, active_only) };
        }
        self.lookup_portable(address, active_only)
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "popcnt")]
    fn lookup_popcnt(&self, address: IpAddr, active_only: bool) -> Option<Route> {
        self.lookup_portable(address, active_only)
    }

    #[inline(always)]
    fn lookup_portable(&self, address: IpAddr, active_only: bool) -> Option<Route> {
        let entry = self.table.longest_match(address)?;
        Some(self.route(address, entry, active_only))
    }

    /// The route of `address`, whose longest match is `entry`.
    #[inline]
    fn route(&self, address: IpAddr, entry: Entry, active_only: bool) -> Route {
        if !active_only {
            return entry.route();
        }
        entry
            .active_route()
            .unwrap_or_else(|| self.enclosing_active_route(address, &entry))
    }

    /// The ACTIVE route of `address` from the entries enclosing `entry` (whose binding is not
    /// ACTIVE): the nearest one with an ACTIVE binding, else the prefix with none. At most one
    /// exact search per shorter length, down to the prefix's entry, which always decides.
    #[cold]
    fn enclosing_active_route(&self, address: IpAddr, entry: &Entry) -> Route {
        (0..entry.len)
            .rev()
            .filter_map(|len| {
                let cidr = IpNet::new(address, len).expect("shorter than a valid length").trunc();
                self.table.entry(cidr)
            })
            .find_map(|entry| entry.active_route())
            .unwrap_or(Route::prefix_only(entry.prefix_id))
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
        assert_eq!(one_by_one[2], Some(Route::prefix_only(p.id)));

        table.apply(&Change::PrefixDeleted(p));
        assert_eq!(route(&table, "192.0.2.9", false), None);
        assert_eq!(route(&table, "192.0.2.9", true), None);
    }

    /// The expected route by brute force: the prefix containing the address, then the
    /// longest binding (ACTIVE, when asked) containing it.
    fn brute_force(prefixes: &[Prefix], bindings: &[Binding], address: IpAddr, active_only: bool) -> Option<Route> {
        let prefix = prefixes.iter().find(|p| p.cidr.contains(&address))?;
        let binding = (bindings.iter())
            .filter(|b| b.prefix_id == prefix.id && b.cidr.contains(&address))
            .filter(|b| !active_only || b.state == ProvisioningState::Active)
            .max_by_key(|b| b.cidr.prefix_len());
        Some(Route {
            prefix_id: prefix.id,
            binding_id: binding.map(|b| b.id),
            binding_active: binding.is_some_and(|b| b.state == ProvisioningState::Active),
        })
    }

    /// Random prefixes, nested bindings created, activated and deleted in any order, in both
    /// families: every lookup (one at a time and in batches, all and ACTIVE-only) agrees with
    /// a brute-force search.
    #[test]
    fn agrees_with_brute_force_through_nested_provisioning_bindings() {
        let mut rng = fastrand::Rng::with_seed(19);
        let mut table = RoutingTable::default();
        let prefixes: Vec<Prefix> = (0..4)
            .map(|i| prefix(&format!("10.{i}.0.0/16")))
            .chain((0..4).map(|i| prefix(&format!("2001:db8:{i}::/48"))))
            .collect();
        for p in &prefixes {
            table.apply(&Change::PrefixCreated(p.clone()));
        }
        let random_in = |rng: &mut fastrand::Rng, cidr: IpNet| -> IpAddr {
            match cidr {
                IpNet::V4(net) => IpAddr::V4((net.network().to_bits() | rng.u32(..) & net.hostmask().to_bits()).into()),
                IpNet::V6(net) => {
                    // Only the low 24 bits vary, so that nested bindings are often hit.
                    let host = u128::from(rng.u32(..1 << 24)) & net.hostmask().to_bits();
                    IpAddr::V6((net.network().to_bits() | host).into())
                }
            }
        };
        let mut bindings: Vec<Binding> = Vec::new();
        for step in 0..3_000 {
            let p = &prefixes[rng.usize(..prefixes.len())];
            match rng.u8(..4) {
                0 | 1 => {
                    let len = match p.cidr {
                        IpNet::V4(_) => rng.u8(16..=32),
                        IpNet::V6(_) => [48, 56, 64, 100, 112, 120, 128][rng.usize(..7)],
                    };
                    let cidr = IpNet::new(random_in(&mut rng, p.cidr), len).unwrap().trunc();
                    if !bindings.iter().any(|b| b.cidr == cidr) {
                        let state = [ProvisioningState::Active, ProvisioningState::Provisioning][rng.usize(..2)];
                        let b = binding(p, &cidr.to_string(), state);
                        table.apply(&Change::BindingCreated {
                            binding: b.clone(),
                            request_id: None,
                        });
                        bindings.push(b);
                    }
                }
                2 if !bindings.is_empty() => {
                    let index = rng.usize(..bindings.len());
                    let b = &mut bindings[index];
                    b.state = ProvisioningState::Active;
                    table.apply(&Change::BindingProvisioningStateChanged(b.clone()));
                }
                _ if !bindings.is_empty() => {
                    let b = bindings.swap_remove(rng.usize(..bindings.len()));
                    table.apply(&Change::BindingDeleted(b));
                }
                _ => {}
            }
            // Now and then a batch longer than a batch's lookahead (`ENTRY_LOOKAHEAD`).
            let batch = if step % 50 == 0 { 3 * ENTRY_LOOKAHEAD } else { 8 };
            let addresses: Vec<IpAddr> = (0..batch)
                .map(|_| {
                    let around = match bindings.is_empty() || rng.bool() {
                        true => prefixes[rng.usize(..prefixes.len())].cidr,
                        false => bindings[rng.usize(..bindings.len())].cidr,
                    };
                    random_in(&mut rng, around)
                })
                .chain(["10.9.0.1".parse().unwrap()])
                .collect();
            for active_only in [false, true] {
                let expected: Vec<_> = (addresses.iter())
                    .map(|a| brute_force(&prefixes, &bindings, *a, active_only))
                    .collect();
                let one_by_one: Vec<_> = addresses.iter().map(|a| table.lookup(*a, active_only)).collect();
                assert_eq!(one_by_one, expected, "active_only {active_only}");
                for address in &addresses {
                    let portable = table.lookup_portable(*address, active_only);
                    assert_eq!(portable, table.lookup(*address, active_only));
                }
                assert_eq!(table.lookup_many(&addresses, active_only), expected);
            }
        }
        assert!(bindings.iter().any(|b| b.state == ProvisioningState::Provisioning));
    }

    #[test]
    fn a_table_loaded_at_a_start_lays_each_prefix_before_the_cidrs_inside_it() {
        let mut state = State::default();
        let mut changes = Vec::new();
        let (a, b) = (prefix("192.0.2.0/24"), prefix("198.51.100.0/24"));
        changes.push(Change::PrefixCreated(b.clone()));
        changes.push(Change::PrefixCreated(a.clone()));
        // Created interleaved, and not in address order.
        for cidr in [
            "198.51.100.64/26",
            "192.0.2.128/25",
            "192.0.2.0/24",
            "192.0.2.7/32",
            "198.51.100.0/24",
        ] {
            let p = if cidr.starts_with("192.") { &a } else { &b };
            let binding = binding(p, cidr, ProvisioningState::Active);
            changes.push(Change::BindingCreated {
                binding,
                request_id: None,
            });
        }
        let mut grown = RoutingTable::default();
        for (revision, change) in changes.into_iter().enumerate() {
            grown.apply(&change);
            state.apply(&crate::domain::fixtures::event(revision as u64 + 1, change));
        }

        let loaded = RoutingTable::of(&state);
        let slot = |cidr: &str| match cidr.parse::<IpNet>().unwrap() {
            IpNet::V4(net) => loaded.table.v4.get(net.network().to_bits(), net.prefix_len()).unwrap(),
            IpNet::V6(_) => unreachable!(),
        };
        let slots: Vec<u32> = [
            "192.0.2.0/24",
            "192.0.2.7/32",
            "192.0.2.128/25",
            "198.51.100.0/24",
            "198.51.100.64/26",
        ]
        .into_iter()
        .map(slot)
        .collect();
        assert_eq!(slots, [0, 1, 2, 3, 4], "entries in address order, each prefix first");
        for address in [
            "192.0.2.7",
            "192.0.2.8",
            "192.0.2.200",
            "198.51.100.70",
            "198.51.100.1",
            "203.0.113.1",
        ] {
            assert_eq!(
                route(&loaded, address, false),
                route(&grown, address, false),
                "{address}"
            );
        }
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
