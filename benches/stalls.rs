//! The slowest single applies while a state grows to 1,000,000 bindings, each created with a
//! request id (an idempotency key): a map that grows all at once stalls the write that crosses
//! its load factor, and with it every caller in the group and every reader waiting on the
//! projections' lock. Prints the time each 40,000 applies took (a map's incremental growth
//! shows as a window or two costing several times the others), then the total and the six
//! slowest applies with the binding count at which each happened. It runs on the server's
//! allocator, large blocks freed in the background as the server frees them, since where a
//! growing map or vector stalls depends on the allocator under it.
//!
//!   cargo bench --bench stalls

use std::time::{Duration, Instant};

use ipam_bindings::domain::{
    AccountId, Binding, BindingId, Change, Event, Micros, Prefix, PrefixId, ProvisioningState, Service, State,
};

ipam_bindings::install_allocator!();

fn main() {
    ipam_bindings::allocator::free_large_blocks_in_background();
    const BINDINGS: u64 = 1_000_000;
    let account_id = AccountId::generate();
    let time = Micros(1_764_000_000_000_000);
    let event = |change| Event {
        revision: 0,
        time,
        change,
        actor: None,
    };
    let mut state = State::default();
    let mut prefix_id = PrefixId::generate();
    let mut applies: Vec<(Duration, u64)> = Vec::with_capacity(BINDINGS as usize);
    for index in 0..BINDINGS {
        let (high, low) = (index / 200 / 256, index / 200 % 256);
        if index % 200 == 0 {
            let prefix = Prefix {
                id: PrefixId::generate(),
                account_id,
                cidr: format!("10.{high}.{low}.0/24").parse().expect("a CIDR"),
                asn: Some(64_512),
                description: "bench".into(),
                created_at: time,
                modified_at: time,
            };
            prefix_id = prefix.id;
            state.apply(&event(Change::PrefixCreated(prefix)));
        }
        let binding = Binding {
            id: BindingId::generate(),
            account_id,
            prefix_id,
            cidr: format!("10.{high}.{low}.{}/32", index % 200).parse().expect("a CIDR"),
            service: Service::Cdn,
            state: ProvisioningState::Active,
            created_at: time,
            modified_at: time,
        };
        let created = event(Change::BindingCreated {
            binding,
            request_id: Some(format!("request-{index}")),
        });
        let started = Instant::now();
        state.apply(&created);
        applies.push((started.elapsed(), index));
    }
    for window in applies.chunks(40_000) {
        let sum: Duration = window.iter().map(|(took, _)| *took).sum();
        println!("{:>8} {:>8.1} ms", window[0].1, sum.as_secs_f64() * 1e3);
    }
    let total: Duration = applies.iter().map(|(took, _)| *took).sum();
    applies.sort_unstable_by(|a, b| b.cmp(a));
    let slowest: Vec<String> = (applies.iter().take(6))
        .map(|(took, at)| format!("{:.1} ms at {at}", took.as_secs_f64() * 1e3))
        .collect();
    println!(
        "{BINDINGS} creates with request ids applied in {total:.2?}; slowest: {}",
        slowest.join(", ")
    );
}
