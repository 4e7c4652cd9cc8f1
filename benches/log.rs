//! The log's records in process: what a replica spends storing one stream message of binding
//! creates in its local log, either encoding the decoded events again into runs
//! (`encode_runs`) or cutting the message's own record into the same runs
//! (`split_group`), and what a single node spends encoding a group (`encode_runs` is that too);
//! and what a background snapshot of 200,000 bindings (each created with a request id) costs
//! (`snapshot`: the copy taken a chunk at a time, completed with the 2,000 events written
//! meanwhile, and encoded; the file write is left out), in all and in its two parts: the copy,
//! which the writer takes a chunk per commit, and the rest, on the snapshot's own thread.
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
    AccountId, Actor, Binding, BindingId, Change, Event, Micros, Prefix, PrefixId, ProvisioningState, Service, State,
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

/// A state of `bindings` bindings, 200 in each /24 prefix, and the events that follow it:
/// `after` more creates in a prefix of their own.
fn state_of_size(bindings: u64, after: u64) -> (State, Vec<Event>) {
    let account_id = AccountId::generate();
    let time = Micros(1_764_000_000_000_000);
    let mut state = State::default();
    let mut prefix = None;
    for index in 0..bindings {
        if index % 200 == 0 {
            let created = Prefix {
                id: PrefixId::generate(),
                account_id,
                cidr: format!("10.{}.{}.0/24", index / 200 / 256, index / 200 % 256)
                    .parse()
                    .expect("a CIDR"),
                asn: Some(64_512),
                description: "bench".into(),
                created_at: time,
                modified_at: time,
            };
            prefix = Some(created.id);
            state.apply(&Event {
                revision: 0,
                time,
                change: Change::PrefixCreated(created),
                actor: None,
            });
        }
        let binding = Binding {
            id: BindingId::generate(),
            account_id,
            prefix_id: prefix.expect("a prefix"),
            cidr: format!("10.{}.{}.{}/32", index / 200 / 256, index / 200 % 256, index % 200)
                .parse()
                .expect("a CIDR"),
            service: Service::Cdn,
            state: ProvisioningState::Active,
            created_at: time,
            modified_at: time,
        };
        state.apply(&Event {
            revision: 0,
            time,
            change: Change::BindingCreated {
                binding,
                request_id: Some(format!("req-{index}")),
            },
            actor: None,
        });
    }
    (state, creates(bindings + 1, after))
}

fn snapshot(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot");
    group.sample_size(10);
    let (state, after) = state_of_size(200_000, 2_000);
    group.throughput(Throughput::Elements(200_000));
    // The writer's part: a chunk per commit.
    let copied = || {
        let mut copy = state.start_copy();
        while !copy.copy_from(&state, 4096) {}
        copy
    };
    group.bench_function("copy-complete-encode/200000", |b| {
        b.iter(|| codec::encode_snapshot(1, Some(0), &copied().complete(&after)))
    });
    group.bench_function("copy-only/200000", |b| b.iter(copied));
    group.bench_function("complete-encode/200000", |b| {
        b.iter_batched(
            copied,
            |copy| codec::encode_snapshot(1, Some(0), &copy.complete(&after)),
            criterion::BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(50);
    targets = store_a_group, snapshot
}
criterion_main!(benches);
