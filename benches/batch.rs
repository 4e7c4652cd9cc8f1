//! The batch lookup's server work in process, without the transport: decoding a 1,000-address
//! `LookupAddressesRequest`, answering it (`api::lookup::answer`: parse, table lookups, the
//! encoded routes) and encoding the answer, in both views, on the scenario `ipamctl bench
//! lookup-batch` drives (200 prefixes, three IPv4 /24s for each IPv6 /48, a prefix-wide and a
//! nested binding each; one address in ten outside every prefix).
//!
//! `batch-large` answers the same batches over a table of 200,000 prefixes (400,000 bindings),
//! each batch another 1,000 addresses of them with every route already encoded and cached: the
//! table, the route cache and the encoded routes are then far larger than the CPU's cache, so
//! it measures what a lookup's cache misses cost where the scenario above keeps all in cache.
//!
//!   cargo bench --bench batch
//!
//! It runs on the server's allocator (`install_allocator!`): on glibc's, each answer's buffer
//! (~256 KB) was a mapping of its own, made and unmapped per call, until glibc raised its
//! threshold after a benchmark that freed such a block; the first one measured ran ~4x slower
//! (2.6 million page faults in one run), a cost the server never pays.
//!
//! Throughput is in addresses per second. What the transport adds (HTTP/2, the socket) is
//! measured end to end by `ipamctl bench lookup-batch` (docs/benchmarks.md).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipam_bindings::api::lookup::{self, RouteCache, View};
use ipam_bindings::domain::{AccountId, BindingId, Command, Micros, PrefixId, Service, fields};
use ipam_bindings::pb::api;
use ipam_bindings::projection::ReadModel;
use ipnet::IpNet;
use prost::Message;
use uuid::Uuid;

ipam_bindings::install_allocator!();

const PREFIXES: u32 = 200;
const BATCH: usize = 1000;
/// The prefixes of `batch-large`, and its batches (each iteration answers the next one).
const LARGE_PREFIXES: u32 = 200_000;
const LARGE_BATCHES: usize = 512;

fn apply(model: &mut ReadModel, command: &Command) {
    model
        .decide_and_apply(command, Micros(1))
        .expect("the fixture follows the rules");
}

/// The i-th prefix as `ipamctl bench` makes them: IPv4 /24s of 20.0.0.0/6, IPv6 /48s of
/// 2001:db8::/32, one IPv6 for three IPv4.
fn prefix(index: u32) -> IpNet {
    if index % 4 == 3 {
        IpNet::new(
            Ipv6Addr::from(0x2001_0db8_u128 << 96 | u128::from(index) << 80).into(),
            48,
        )
        .unwrap()
    } else {
        IpNet::new(Ipv4Addr::from(0x1400_0000 + index * 256).into(), 24).unwrap()
    }
}

fn model(prefixes: u32) -> ReadModel {
    let mut model = ReadModel::default();
    let account_id = AccountId(Uuid::from_u128(7));
    for index in 0..prefixes {
        let cidr = prefix(index);
        let prefix_id = PrefixId(Uuid::from_u128((u128::from(index) + 1) << 64));
        apply(
            &mut model,
            &Command::CreatePrefix {
                id: prefix_id,
                account_id,
                cidr,
                asn: None,
                description: String::new(),
            },
        );
        let half = IpNet::new(cidr.addr(), cidr.prefix_len() + 1).unwrap();
        for (n, (cidr, service)) in [(cidr, Service::MagicTransit), (half, Service::Cdn)]
            .into_iter()
            .enumerate()
        {
            apply(
                &mut model,
                &Command::CreateBinding {
                    id: BindingId(Uuid::from_u128(((u128::from(index) + 1) << 64) | (n as u128 + 1))),
                    account_id,
                    prefix_id,
                    cidr,
                    service,
                    request_id: None,
                },
            );
        }
    }
    model
}

fn batch(rng: &mut fastrand::Rng, prefixes: u32) -> Vec<String> {
    (0..BATCH)
        .map(|_| match rng.u32(0..10) {
            0 => Ipv4Addr::from(0xc612_0000 | rng.u32(0..0x1_0000)).to_string(),
            _ => match prefix(rng.u32(0..prefixes)) {
                IpNet::V4(net) => Ipv4Addr::from(u32::from(net.addr()) | rng.u32(0..256)).to_string(),
                IpNet::V6(net) => Ipv6Addr::from(u128::from(net.addr()) | u128::from(rng.u16(..))).to_string(),
            },
        })
        .collect()
}

fn batches(c: &mut Criterion) {
    let model = model(PREFIXES);
    let mut rng = fastrand::Rng::with_seed(7);
    let texts = batch(&mut rng, PREFIXES);
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let addresses: Vec<IpAddr> = fields::addresses("addresses", &texts).unwrap();
    let mut cache = RouteCache::default();
    lookup::answer(
        &model,
        &texts,
        &addresses,
        false,
        View::Full,
        &RouteCache::default(),
        &mut cache,
    );
    let request = api::LookupAddressesRequest::new(&texts, false, api::LookupView::Compact).encode_to_vec();

    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("decode-request", |b| {
        b.iter(|| api::LookupAddressesRequest::decode(black_box(request.as_slice())).unwrap())
    });
    group.bench_function("parse-addresses", |b| {
        b.iter(|| fields::addresses("addresses", black_box(&texts)))
    });
    for (name, view) in [("answer-full", View::Full), ("answer-compact", View::Compact)] {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut fresh = RouteCache::default();
                let response = lookup::answer(&model, &texts, black_box(&addresses), false, view, &cache, &mut fresh);
                response.encode_to_vec()
            })
        });
    }
    group.finish();
}

/// Batches over a table far larger than the CPU's cache, every route cached (see the top).
fn large_batches(c: &mut Criterion) {
    let model = model(LARGE_PREFIXES);
    let mut rng = fastrand::Rng::with_seed(11);
    let owned: Vec<(Vec<String>, Vec<IpAddr>)> = (0..LARGE_BATCHES)
        .map(|_| {
            let texts = batch(&mut rng, LARGE_PREFIXES);
            let addresses = fields::addresses("addresses", &texts).unwrap();
            (texts, addresses)
        })
        .collect();
    let batches: Vec<(Vec<&str>, &[IpAddr])> = owned
        .iter()
        .map(|(texts, addresses)| (texts.iter().map(String::as_str).collect(), addresses.as_slice()))
        .collect();
    let mut cache = RouteCache::default();
    for (texts, addresses) in &batches {
        let mut fresh = RouteCache::default();
        lookup::answer(&model, texts, addresses, false, View::Full, &cache, &mut fresh);
        cache.extend(fresh);
    }
    // What is measured below: answers from the cache alone, none encoding a route.
    for (texts, addresses) in &batches {
        let mut fresh = RouteCache::default();
        lookup::answer(&model, texts, addresses, false, View::Compact, &cache, &mut fresh);
        assert!(fresh.is_empty(), "every route of every batch is cached");
    }

    let mut group = c.benchmark_group("batch-large");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, view) in [("answer-full", View::Full), ("answer-compact", View::Compact)] {
        let mut next = batches.iter().cycle();
        group.bench_function(name, |b| {
            b.iter(|| {
                let (texts, addresses) = next.next().expect("the batches cycle");
                let mut fresh = RouteCache::default();
                let response = lookup::answer(&model, texts, black_box(addresses), false, view, &cache, &mut fresh);
                response.encode_to_vec()
            })
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(std::time::Duration::from_secs(3));
    targets = batches, large_batches
}
criterion_main!(benches);
