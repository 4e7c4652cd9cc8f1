//! The log's records in process: what a replica spends storing one stream message of binding
//! creates in its local log, either encoding the decoded events again into runs
//! (`encode_runs`) or cutting the message's own record into the same runs
//! (`split_group`), and what a single node spends encoding a group (`encode_runs` is that too).
//!
//!   cargo bench --bench log
//!
//! Groups of 25 creates (what 64 callers make on replicas, `ipam_log_group_commands`) and of
//! 200, each event with an actor as a call with a token makes it. Throughput is in events per
//! second.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipam_bindings::domain::{
    AccountId, Actor, Binding, BindingId, Change, Event, Micros, PrefixId, ProvisioningState, Service,
};
use ipam_bindings::log::codec;

fn creates(first_revision: u64, count: u64) -> Vec<Event> {
    let (account_id, prefix_id) = (AccountId::generate(), PrefixId::generate());
    (first_revision..first_revision + count)
        .map(|revision| {
            let time = Micros(1_764_000_000_000_000 + revision as i64);
            let binding = Binding {
                id: BindingId::generate(),
                account_id,
                prefix_id,
                cidr: format!("203.0.113.{}/32", revision % 256).parse().expect("a CIDR"),
                service: Service::Cdn,
                state: ProvisioningState::Provisioning,
                created_at: time,
                modified_at: time,
            };
            Event {
                revision,
                time,
                change: Change::BindingCreated {
                    binding,
                    request_id: Some(format!("req-{revision}")),
                },
                actor: Some(Arc::new(Actor {
                    principal: "provisioning-service".into(),
                    credential: "token:ci1".into(),
                    call_id: format!("0f3c2a9e-{revision:08}"),
                    peer: "127.0.0.1:41234".into(),
                    ..Actor::default()
                })),
            }
        })
        .collect()
}

fn store_a_group(c: &mut Criterion) {
    let mut group = c.benchmark_group("store-group");
    for size in [25u64, 200] {
        let events = creates(1_000_000, size);
        let record = codec::encode_group(&events);
        let last_revision = events.last().expect("a group").revision;
        assert_eq!(
            codec::split_group(last_revision, &record),
            Some(codec::encode_runs(&events)),
            "both make the same records"
        );
        group.throughput(Throughput::Elements(size));
        group.bench_function(format!("encode_runs/{size}"), |b| {
            b.iter(|| codec::encode_runs(black_box(&events)))
        });
        group.bench_function(format!("split_group/{size}"), |b| {
            b.iter(|| codec::split_group(last_revision, black_box(&record)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = store_a_group
}
criterion_main!(benches);
