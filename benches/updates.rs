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

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipam_bindings::projection::lpm::Lpm;

const BASE: u32 = 0x0a00_0000;
const COUNT: u32 = 4_096;

fn updates(c: &mut Criterion) {
    let mut group = c.benchmark_group("lpm-updates");
    group.throughput(Throughput::Elements(u64::from(COUNT)));
    group.bench_function("fill-dense", |b| {
        b.iter(|| {
            let mut lpm = Lpm::default();
            lpm.insert(BASE, 16, 0);
            for i in 0..COUNT {
                lpm.insert(BASE + i, 32, i + 1);
            }
            black_box(lpm.len())
        })
    });
    group.bench_function("fill-sparse", |b| {
        b.iter(|| {
            let mut lpm = Lpm::default();
            lpm.insert(BASE, 8, 0);
            for i in 0..COUNT {
                lpm.insert(BASE + (i << 8) + 7, 32, i + 1);
            }
            black_box(lpm.len())
        })
    });
    group.bench_function("fill-mid", |b| {
        b.iter(|| {
            let mut lpm = Lpm::default();
            lpm.insert(BASE, 8, 0);
            for i in 0..COUNT {
                lpm.insert(BASE + (i << 8), 24, i + 1);
            }
            black_box(lpm.len())
        })
    });
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
