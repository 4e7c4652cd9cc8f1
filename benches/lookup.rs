//! In-process longest-prefix-match benchmark, on one core, with 1,000,000 IPv4 and 100,000
//! IPv6 bindings; in the same run, per scenario:
//! - `prefix-trie`: the plain prefix-trie crate (the baseline), binding CIDR -> u32;
//! - `lpm` (IPv4 only): our `projection::lpm::Lpm`, the same CIDRs -> the same u32s;
//! - `lpm-batched` (IPv4 only): the same, 1000 addresses per `longest_matches` call (what a
//!   LookupAddresses call does), which overlaps the cache misses of 16 lookups at a time;
//! - `routing-table`: what the service runs, `RoutingTable::lookup` (address -> prefix id and
//!   binding id: the LPM plus reading the entry it points at);
//! - `routing-table-batched`: the same, 1000 addresses per `RoutingTable::lookup_many` call;
//! - `previous-routing`: the previous design (prefix-trie maps holding the ids, one for the
//!   prefixes and one for the bindings, so two searches per address).
//!
//! Every answer goes through `black_box`, so each side must produce all it returns (the
//! routing table its entry's ids): an answer only counted would let the compiler skip loads.
//!
//! Run: `cargo bench --bench lookup` (prints memory per binding first; for hits, the routing
//! table and prefix-trie alternated pass by pass, which one first swapping from round to round,
//! with the median of the rounds' ratios; then criterion's throughput per scenario). The data
//! is deterministic (seeded):
//! - IPv4: 250,000 random /24 prefixes in 1.0.0.0-223.255.255.255, each with its prefix-wide
//!   binding and three more-specific ones (/25../32), all ACTIVE.
//! - IPv6: 25,000 random /48 prefixes in 2000::/4, each with its prefix-wide binding and three
//!   more-specific ones (/56, /64, /128).
//! - Addresses: `hits` are random addresses inside random bindings; `random` are uniform over
//!   the family's space (IPv4: nearly all misses; IPv6: within 2000::/4, nearly all misses).
//! - The routing table is built prefix by prefix, each one's bindings right after it, so its
//!   IPv4 entries lie in address order, as a server's do after a start (`RoutingTable::of`).
//!   A table whose bindings were created interleaved across prefixes answers IPv4 hits ~1.4x
//!   slower until then (docs/benchmarks.md, the covering entry asked for early).

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipam_bindings::domain::{
    AccountId, Binding, BindingId, Change, Micros, Prefix, PrefixId, ProvisioningState, Service,
};
use ipam_bindings::projection::lpm::Lpm;
use ipam_bindings::projection::routing::RoutingTable;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use prefix_trie::PrefixMap;

/// Counts the bytes currently allocated, for memory per binding.
struct CountingAllocator;

static ALLOCATED: AtomicUsize = AtomicUsize::new(0);

// SAFETY: delegates to the system allocator and only counts.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATED.fetch_add(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        ALLOCATED.fetch_sub(layout.size(), Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

const V4_PREFIXES: usize = 250_000;
const V6_PREFIXES: usize = 25_000;
const MORE_SPECIFIC_PER_PREFIX: usize = 3;
const V4_BINDINGS: usize = V4_PREFIXES * (1 + MORE_SPECIFIC_PER_PREFIX);
const ADDRESSES: usize = 1 << 20;
/// Rounds of the side-by-side measurement of hits (`alternated`).
const ALTERNATED_ROUNDS: usize = 10;

struct Dataset {
    /// (prefix CIDR, binding CIDRs inside it: the prefix-wide one first)
    prefixes: Vec<(IpNet, Vec<IpNet>)>,
}

fn random_v4_prefix(rng: &mut fastrand::Rng) -> IpNet {
    let network = rng.u32(1 << 24..224 << 24) & !0xff;
    IpNet::V4(Ipv4Net::new(Ipv4Addr::from_bits(network), 24).unwrap())
}

fn random_v6_prefix(rng: &mut fastrand::Rng) -> IpNet {
    let network = (0x2u128 << 124) | (u128::from(rng.u64(..1 << 44)) << 80);
    IpNet::V6(Ipv6Net::new(Ipv6Addr::from_bits(network), 48).unwrap())
}

/// A random canonical subnet of `within` with a prefix length drawn from `lengths`.
fn random_subnet(rng: &mut fastrand::Rng, within: IpNet, lengths: &[u8]) -> IpNet {
    let len = lengths[rng.usize(..lengths.len())];
    let address = random_address_in(rng, within);
    IpNet::new(address, len).unwrap().trunc()
}

fn random_address_in(rng: &mut fastrand::Rng, net: IpNet) -> IpAddr {
    match net {
        IpNet::V4(net) => {
            let host = rng.u32(..) & net.hostmask().to_bits();
            IpAddr::V4(Ipv4Addr::from_bits(net.network().to_bits() | host))
        }
        IpNet::V6(net) => {
            let host = rng.u128(..) & net.hostmask().to_bits();
            IpAddr::V6(Ipv6Addr::from_bits(net.network().to_bits() | host))
        }
    }
}

fn dataset(rng: &mut fastrand::Rng) -> Dataset {
    let mut seen = std::collections::HashSet::new();
    let mut prefixes = Vec::new();
    for (count, family_prefix, lengths) in [
        (
            V4_PREFIXES,
            random_v4_prefix as fn(&mut fastrand::Rng) -> IpNet,
            &[25u8, 26, 27, 28, 29, 30, 31, 32][..],
        ),
        (V6_PREFIXES, random_v6_prefix, &[56, 64, 128]),
    ] {
        let mut made = 0;
        while made < count {
            let prefix = family_prefix(rng);
            if !seen.insert(prefix) {
                continue;
            }
            let mut bindings = vec![prefix];
            while bindings.len() < 1 + MORE_SPECIFIC_PER_PREFIX {
                let subnet = random_subnet(rng, prefix, lengths);
                if !bindings.contains(&subnet) {
                    bindings.push(subnet);
                }
            }
            prefixes.push((prefix, bindings));
            made += 1;
        }
    }
    Dataset { prefixes }
}

/// Our LPM table alone over the IPv4 binding CIDRs, valued like the baseline.
fn build_lpm(data: &Dataset) -> Lpm {
    let mut lpm = Lpm::default();
    for (index, cidr) in data.prefixes.iter().flat_map(|(_, bindings)| bindings).enumerate() {
        if let IpNet::V4(net) = cidr {
            lpm.insert(net.network().to_bits(), net.prefix_len(), index as u32);
        }
    }
    lpm
}

fn build_routing_table(data: &Dataset) -> RoutingTable {
    let mut table = RoutingTable::default();
    let (account_id, now) = (AccountId::generate(), Micros::now());
    for (cidr, bindings) in &data.prefixes {
        let prefix = Prefix {
            id: PrefixId::generate(),
            account_id,
            cidr: *cidr,
            asn: None,
            description: String::new(),
            created_at: now,
            modified_at: now,
        };
        table.apply(&Change::PrefixCreated(prefix.clone()));
        for (index, cidr) in bindings.iter().enumerate() {
            let binding = Binding {
                id: BindingId::generate(),
                account_id,
                prefix_id: prefix.id,
                cidr: *cidr,
                service: if index == 0 {
                    Service::MagicTransit
                } else {
                    Service::Cdn
                },
                state: ProvisioningState::Active,
                created_at: now,
                modified_at: now,
            };
            table.apply(&Change::BindingCreated {
                binding,
                request_id: None,
            });
        }
    }
    table
}

/// The previous routing design: prefix-trie maps from CIDR to ids, one for prefixes and one
/// for bindings.
#[derive(Default)]
struct PreviousRouting {
    prefixes_v4: PrefixMap<Ipv4Net, PrefixId>,
    prefixes_v6: PrefixMap<Ipv6Net, PrefixId>,
    bindings_v4: PrefixMap<Ipv4Net, BindingId>,
    bindings_v6: PrefixMap<Ipv6Net, BindingId>,
}

impl PreviousRouting {
    fn build(data: &Dataset) -> PreviousRouting {
        let mut routing = PreviousRouting::default();
        for (prefix, bindings) in &data.prefixes {
            let prefix_id = PrefixId::generate();
            match prefix {
                IpNet::V4(net) => routing.prefixes_v4.insert(*net, prefix_id),
                IpNet::V6(net) => routing.prefixes_v6.insert(*net, prefix_id),
            };
            for cidr in bindings {
                match cidr {
                    IpNet::V4(net) => routing.bindings_v4.insert(*net, BindingId::generate()),
                    IpNet::V6(net) => routing.bindings_v6.insert(*net, BindingId::generate()),
                };
            }
        }
        routing
    }

    fn lookup(&self, address: IpAddr) -> Option<(PrefixId, Option<BindingId>)> {
        match address {
            IpAddr::V4(address) => {
                let key = Ipv4Net::from(address);
                let (_, prefix) = self.prefixes_v4.get_lpm(&key)?;
                Some((*prefix, self.bindings_v4.get_lpm(&key).map(|(_, id)| *id)))
            }
            IpAddr::V6(address) => {
                let key = Ipv6Net::from(address);
                let (_, prefix) = self.prefixes_v6.get_lpm(&key)?;
                Some((*prefix, self.bindings_v6.get_lpm(&key).map(|(_, id)| *id)))
            }
        }
    }
}

/// The baseline: the prefix-trie crate, one map per family, every binding CIDR -> an index.
struct Baseline {
    v4: PrefixMap<Ipv4Net, u32>,
    v6: PrefixMap<Ipv6Net, u32>,
}

impl Baseline {
    fn build(data: &Dataset) -> Baseline {
        let mut baseline = Baseline {
            v4: PrefixMap::new(),
            v6: PrefixMap::new(),
        };
        for (index, cidr) in data.prefixes.iter().flat_map(|(_, bindings)| bindings).enumerate() {
            match cidr {
                IpNet::V4(net) => baseline.v4.insert(*net, index as u32),
                IpNet::V6(net) => baseline.v6.insert(*net, index as u32),
            };
        }
        baseline
    }

    fn lookup(&self, address: IpAddr) -> Option<u32> {
        match address {
            IpAddr::V4(address) => self.v4.get_lpm(&Ipv4Net::from(address)).map(|(_, value)| *value),
            IpAddr::V6(address) => self.v6.get_lpm(&Ipv6Net::from(address)).map(|(_, value)| *value),
        }
    }
}

/// The process's resident set, in bytes (Linux; 0 elsewhere).
fn resident_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// What `build` built, the bytes it allocated and how much the resident set grew.
fn measured<T>(build: impl FnOnce() -> T) -> (T, usize, usize) {
    let (allocated, resident) = (ALLOCATED.load(Ordering::Relaxed), resident_bytes());
    let built = build();
    let grown = |before: usize, after: usize| after.saturating_sub(before);
    (
        built,
        grown(allocated, ALLOCATED.load(Ordering::Relaxed)),
        grown(resident, resident_bytes()),
    )
}

/// One pass of the routing table over `addresses`: how many are inside a prefix.
fn table_pass(table: &RoutingTable, addresses: &[IpAddr]) -> usize {
    addresses
        .iter()
        .filter_map(|a| table.lookup(black_box(*a), false))
        .map(black_box)
        .count()
}

/// One pass of prefix-trie over `addresses`: how many are inside a binding.
fn baseline_pass(baseline: &Baseline, addresses: &[IpAddr]) -> usize {
    addresses
        .iter()
        .filter_map(|a| baseline.lookup(black_box(*a)))
        .map(black_box)
        .count()
}

/// The routing table against prefix-trie side by side: one pass of each over the same
/// addresses, alternated round after round, and each round's ratio. Criterion measures each
/// side in a window of its own, seconds apart, and this machine's speed drifts within
/// minutes; here the drift falls on both sides of a round alike, so the median of the rounds'
/// ratios is the figure to read against the goal (docs/benchmarks.md).
///
/// Which side runs first swaps from round to round (prefix-trie in the even rounds, the table
/// in the odd ones), since the pass that runs first in a round can be ahead by its place
/// alone; the medians of each order are printed too, so that such a bias shows.
fn alternated(name: &str, addresses: &[IpAddr], table: &RoutingTable, baseline: &Baseline) {
    let rate = |pass: &dyn Fn() -> usize| {
        let started = Instant::now();
        black_box(pass());
        addresses.len() as f64 / started.elapsed().as_secs_f64() / 1e6
    };
    let ours = || table_pass(table, addresses);
    let theirs = || baseline_pass(baseline, addresses);
    // A pass of each to warm up.
    rate(&theirs);
    rate(&ours);
    let rounds: Vec<Round> = (0..ALTERNATED_ROUNDS)
        .map(|round| {
            let table_first = round % 2 == 1;
            let (ours, theirs) = if table_first {
                let ours = rate(&ours);
                (ours, rate(&theirs))
            } else {
                let theirs = rate(&theirs);
                (rate(&ours), theirs)
            };
            Round {
                table_first,
                ours,
                theirs,
            }
        })
        .collect();
    let each = rounds
        .iter()
        .map(|r| format!("{:.2}/{:.2}{}", r.ours, r.theirs, if r.table_first { "*" } else { "" }))
        .collect::<Vec<_>>()
        .join(", ");
    let median_of = |table_first: Option<bool>| {
        let mut ratios: Vec<f64> = rounds
            .iter()
            .filter(|r| table_first.is_none_or(|first| r.table_first == first))
            .map(|r| r.ours / r.theirs)
            .collect();
        ratios.sort_by(f64::total_cmp);
        let middle = ratios.len() / 2;
        if ratios.len().is_multiple_of(2) {
            (ratios[middle - 1] + ratios[middle]) / 2.0
        } else {
            ratios[middle]
        }
    };
    println!(
        "{name}, alternated: routing-table / prefix-trie median {:.2}x over {ALTERNATED_ROUNDS} \
         rounds; {:.2}x with prefix-trie first, {:.2}x with the table first (M lookups/s, \
         table/prefix-trie per round, * where the table ran first: {each})",
        median_of(None),
        median_of(Some(false)),
        median_of(Some(true)),
    );
}

/// One round of `alternated`: each side's rate in M lookups/s and which ran first.
struct Round {
    table_first: bool,
    ours: f64,
    theirs: f64,
}

fn lookups(c: &mut Criterion) {
    let mut rng = fastrand::Rng::with_seed(2026);
    let data = dataset(&mut rng);
    let bindings = data.prefixes.iter().map(|(_, bindings)| bindings.len()).sum::<usize>();
    let (table, table_allocated, table_resident) = measured(|| build_routing_table(&data));
    let (baseline, baseline_allocated, baseline_resident) = measured(|| Baseline::build(&data));
    let (lpm, lpm_allocated, lpm_resident) = measured(|| build_lpm(&data));
    let previous = PreviousRouting::build(&data);
    println!(
        "{bindings} bindings in {} prefixes. Per binding: routing table (one table of the prefixes \
         and bindings) allocated {} B, resident {} B; prefix-trie (one map of \
         the bindings) allocated {} B, resident {} B; lpm (IPv4 bindings only) allocated {} B, \
         resident {} B per IPv4 binding.",
        data.prefixes.len(),
        table_allocated / bindings,
        table_resident / bindings,
        baseline_allocated / bindings,
        baseline_resident / bindings,
        lpm_allocated / V4_BINDINGS,
        lpm_resident / V4_BINDINGS,
    );

    let all_bindings: Vec<IpNet> = data
        .prefixes
        .iter()
        .flat_map(|(_, bindings)| bindings.iter().copied())
        .collect();
    let v4_bindings: Vec<IpNet> = all_bindings
        .iter()
        .copied()
        .filter(|net| matches!(net, IpNet::V4(_)))
        .collect();
    let v6_bindings: Vec<IpNet> = all_bindings
        .iter()
        .copied()
        .filter(|net| matches!(net, IpNet::V6(_)))
        .collect();
    let hits = |rng: &mut fastrand::Rng, bindings: &[IpNet]| -> Vec<IpAddr> {
        (0..ADDRESSES)
            .map(|_| {
                let binding = bindings[rng.usize(..bindings.len())];
                random_address_in(rng, binding)
            })
            .collect()
    };
    let scenarios = [
        ("ipv4_hits", hits(&mut rng, &v4_bindings)),
        (
            "ipv4_random",
            (0..ADDRESSES)
                .map(|_| IpAddr::V4(Ipv4Addr::from_bits(rng.u32(..))))
                .collect(),
        ),
        ("ipv6_hits", hits(&mut rng, &v6_bindings)),
        (
            "ipv6_random",
            (0..ADDRESSES)
                .map(|_| IpAddr::V6(Ipv6Addr::from_bits((0x2u128 << 124) | (rng.u128(..) >> 4))))
                .collect(),
        ),
    ];

    for (name, addresses) in &scenarios {
        let ours = addresses
            .iter()
            .filter(|a| table.lookup(**a, false).and_then(|r| r.binding_id).is_some())
            .count();
        let theirs = addresses.iter().filter(|a| baseline.lookup(**a).is_some()).count();
        assert_eq!(ours, theirs, "{name}: both find the same number of bindings");
        println!("{name}: {ours} of {} addresses are inside a binding", addresses.len());
        if name.ends_with("_hits") {
            alternated(name, addresses, &table, &baseline);
        }

        let mut group = c.benchmark_group(*name);
        group.throughput(Throughput::Elements(addresses.len() as u64));
        group.bench_function("prefix-trie", |b| b.iter(|| baseline_pass(&baseline, addresses)));
        if name.starts_with("ipv4") {
            group.bench_function("lpm", |b| {
                b.iter(|| {
                    let v4 = addresses.iter().filter_map(|a| match a {
                        IpAddr::V4(address) => Some(address.to_bits()),
                        IpAddr::V6(_) => None,
                    });
                    v4.filter_map(|a| lpm.longest_match(black_box(a)))
                        .map(black_box)
                        .count()
                })
            });
        }
        if name.starts_with("ipv4") {
            let keys: Vec<u32> = addresses
                .iter()
                .filter_map(|a| match a {
                    IpAddr::V4(address) => Some(address.to_bits()),
                    IpAddr::V6(_) => None,
                })
                .collect();
            group.bench_function("lpm-batched", |b| {
                b.iter(|| {
                    // Batches of 1000, like a LookupAddresses call.
                    let found: usize = keys
                        .chunks(1000)
                        .map(|batch| {
                            black_box(lpm.longest_matches(black_box(batch)))
                                .iter()
                                .flatten()
                                .count()
                        })
                        .sum();
                    found
                })
            });
        }
        group.bench_function("routing-table", |b| b.iter(|| table_pass(&table, addresses)));
        group.bench_function("routing-table-batched", |b| {
            b.iter(|| {
                // Batches of 1000, as a LookupAddresses call asks (`RoutingTable::lookup_many`).
                let found: usize = addresses
                    .chunks(1000)
                    .map(|batch| {
                        let routes = table.lookup_many(black_box(batch), false);
                        routes.into_iter().flatten().map(black_box).count()
                    })
                    .sum();
                found
            })
        });
        group.bench_function("previous-routing", |b| {
            b.iter(|| {
                addresses
                    .iter()
                    .filter_map(|a| previous.lookup(black_box(*a)))
                    .map(black_box)
                    .count()
            })
        });
        group.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(std::time::Duration::from_secs(1));
    targets = lookups
}
criterion_main!(benches);
