//! Copies of a state taken in chunks while writes go on (a background snapshot, a delta):
//! exact once completed with the events since their start.
use super::*;

/// Everything a state answers, for comparing two of them.
fn everything(state: &State, accounts: &[AccountId], prefix_ids: &[PrefixId]) -> impl PartialEq + std::fmt::Debug {
    let prefixes: Vec<Vec<Prefix>> = (accounts.iter())
        .map(|account| {
            state
                .list_prefixes(*account, None, 10_000)
                .items
                .into_iter()
                .cloned()
                .collect()
        })
        .collect();
    let bindings: Vec<Vec<Binding>> = (prefix_ids.iter())
        .map(|prefix| {
            state
                .list_bindings(*prefix, None, 10_000)
                .items
                .into_iter()
                .cloned()
                .collect()
        })
        .collect();
    let mut requests: Vec<(AccountId, String, Binding)> = (state.remembered_requests())
        .map(|(account, id, binding)| (account, id.to_string(), binding.clone()))
        .collect();
    requests.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut all_bindings: Vec<Binding> = state.bindings().cloned().collect();
    all_bindings.sort_by_key(|binding| binding.id);
    (
        prefixes,
        bindings,
        requests,
        all_bindings,
        state.n_prefixes(),
        state.n_provisioning(),
    )
}

#[test]
fn a_copy_and_a_delta_taken_in_chunks_while_writes_go_on_are_exact_after_the_events_since_their_start() {
    for seed in 0..20 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut world = World::new();
        let accounts = [account(), account()];
        let mut prefixes: Vec<Prefix> = Vec::new();
        let mut bindings: Vec<Binding> = Vec::new();
        let mut step = |world: &mut World, rng: &mut fastrand::Rng| match rng.u8(0..20) {
            0..=3 => {
                let cidr = format!("10.{}.{}.0/24", rng.u8(0..4), rng.u8(0..4));
                let command = Command::CreatePrefix {
                    id: PrefixId::generate(),
                    account_id: accounts[rng.usize(0..2)],
                    cidr: net(&cidr),
                    asn: None,
                    description: format!("d{}", rng.u8(..)),
                };
                if let Ok(Outcome::Prefix(prefix)) = world.run(command) {
                    prefixes.push(prefix);
                }
            }
            4..=13 if !prefixes.is_empty() => {
                let prefix = prefixes[rng.usize(0..prefixes.len())].clone();
                let base = u32::from(match prefix.cidr {
                    IpNet::V4(v4) => v4.network(),
                    IpNet::V6(_) => unreachable!(),
                });
                let cidr = match rng.u8(0..3) {
                    0 => prefix.cidr.to_string(),
                    _ => format!("{}/32", std::net::Ipv4Addr::from(base + rng.u32(0..64))),
                };
                let request_id = rng.bool().then(|| format!("r{}", rng.u16(0..1000)));
                let command = Command::CreateBinding {
                    id: BindingId::generate(),
                    account_id: prefix.account_id,
                    prefix_id: prefix.id,
                    cidr: net(&cidr),
                    service: Service::ALL[rng.usize(0..3)],
                    request_id,
                };
                if let Ok(Outcome::Binding(binding)) = world.run(command) {
                    bindings.push(binding);
                }
            }
            14 | 15 if !bindings.is_empty() => {
                let binding = &bindings[rng.usize(0..bindings.len())];
                let _ = world.run(Command::ActivateBinding { binding_id: binding.id });
            }
            16..=18 if !bindings.is_empty() => {
                let binding = &bindings[rng.usize(0..bindings.len())];
                let _ = world.run(Command::DeleteBinding {
                    account_id: binding.account_id,
                    prefix_id: binding.prefix_id,
                    binding_id: binding.id,
                });
            }
            _ if !prefixes.is_empty() => {
                let prefix = &prefixes[rng.usize(0..prefixes.len())];
                let _ = world.run(Command::DeletePrefix {
                    account_id: prefix.account_id,
                    prefix_id: prefix.id,
                });
            }
            _ => {}
        };
        for _ in 0..1000 {
            step(&mut world, &mut rng);
        }
        let started_at = world.revision;
        let mut copy = world.state.start_copy();
        loop {
            for _ in 0..rng.usize(0..8) {
                step(&mut world, &mut rng);
            }
            if copy.copy_from(&world.state, 1) {
                break;
            }
        }
        fn after(world: &World, revision: u64) -> impl Iterator<Item = &Event> {
            world.log.iter().filter(move |event| event.revision > revision)
        }
        // Every prefix ever created, to list the bindings of.
        fn prefix_ids(world: &World) -> Vec<PrefixId> {
            (world.log.iter())
                .filter_map(|event| match &event.change {
                    Change::PrefixCreated(prefix) => Some(prefix.id),
                    _ => None,
                })
                .collect()
        }
        let copied = copy.complete(after(&world, started_at));
        assert!(
            world.revision > started_at + 20,
            "seed {seed}: writes went on during the copy ({started_at} -> {}, {} prefixes, {} bindings)",
            world.revision,
            world.state.n_prefixes(),
            world.state.n_bindings()
        );
        let ids = prefix_ids(&world);
        assert_eq!(
            everything(&copied.clone().into_state(), &accounts, &ids),
            everything(&world.state, &accounts, &ids),
            "seed {seed}"
        );

        // A delta after that copy: the ids the events since touched, copied in chunks while
        // writes go on, completed with the events since its start; applied to the copy, the
        // state as of the last event.
        let (checkpoint, requests_at_checkpoint) = (world.revision, world.state.n_remembered_requests());
        for _ in 0..300 {
            step(&mut world, &mut rng);
        }
        let mut changed = ChangedIds::default();
        after(&world, checkpoint).for_each(|event| changed.record(event));
        let delta_started_at = world.revision;
        let mut delta = world.state.start_copy_of(changed, requests_at_checkpoint);
        loop {
            for _ in 0..rng.usize(0..8) {
                step(&mut world, &mut rng);
            }
            if delta.copy_from(&world.state, 1) {
                break;
            }
        }
        let mut records = copied;
        records.apply(delta.changes(after(&world, delta_started_at)));
        assert!(
            world.revision > delta_started_at,
            "seed {seed}: writes went on during the delta's copy"
        );
        let ids = prefix_ids(&world);
        assert_eq!(
            everything(&records.into_state(), &accounts, &ids),
            everything(&world.state, &accounts, &ids),
            "seed {seed}: the copy and the delta"
        );
    }
}
