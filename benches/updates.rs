//! The IPv4 longest-prefix-match table's updates in process (`projection::lpm::Lpm`): what
//! the writer pays per binding it makes visible, in the shape `ipamctl bench create` gives it
//! and in the one a sparse table gives it.
//!
//!   cargo bench --bench updates
//!
//! - `fill-dense`: a /16 (a prefix-wide binding), then its first 4,096 /32s one after the
//!   other: sixteen /24 leaves filled, each to 256 prefixes and as many runs.
//! - `churn-dense`: in a /24 holding all 256 of its /32s, one /32 removed and put back.
//! - `fill-sparse`: 4,096 /32s, one in each of 4,096 /24s of a /8 (a leaf of one prefix each).
//! - `fill-mid`: a /8, then the 256 /24s of each of sixteen /16s one after the other (mid nodes
//!   filled to 256 prefixes and as many runs).
//!
//! Throughput is in updates per second.

use std::hint::black_box;

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, Criterion, Throughput, criterion_group, criterion_main};
use ipam_bindings::projection::lpm::Lpm;

const BASE: u32 = 0x0a00_0000;
const COUNT: u32 = 4_096;

/// A fresh table holding a covering prefix of `cover_len` bits, then the `COUNT` prefixes
/// `nth` gives, inserted one after the other (`nth` is inlined, as a literal loop would be).
fn fill(group: &mut BenchmarkGroup<'_, WallTime>, name: &str, cover_len: u8, nth: impl Fn(u32) -> (u32, u8)) {
    group.bench_function(name, |b| {
        b.iter(|| {
            let mut lpm = Lpm::default();
            lpm.insert(BASE, cover_len, 0);
            for i in 0..COUNT {
                let (key, len) = nth(i);
                lpm.insert(key, len, i + 1);
            }
            black_box(lpm.len())
        })
    });
}

fn updates(c: &mut Criterion) {
    let mut group = c.benchmark_group("lpm-updates");
    group.throughput(Throughput::Elements(u64::from(COUNT)));
    fill(&mut group, "fill-dense", 16, |i| (BASE + i, 32));
    fill(&mut group, "fill-sparse", 8, |i| (BASE + (i << 8) + 7, 32));
    fill(&mut group, "fill-mid", 8, |i| (BASE + (i << 8), 24));
    let mut dense = Lpm::default();
    dense.insert(BASE, 24, 0);
    for i in 0..256 {
        dense.insert(BASE + i, 32, i + 1);
    }
    group.throughput(Throughput::Elements(2 * u64::from(COUNT)));
    group.bench_function("churn-dense", |b| {
        b.iter(|| {
            for i in 0..COUNT {
                let key = BASE + (i * 37) % 256;
                black_box(dense.remove(key, 32));
                dense.insert(key, 32, i + 1);
            }
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_secs(1));
    targets = updates
}
criterion_main!(benches);
