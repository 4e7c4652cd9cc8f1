//! Events applied, replayed and taken back: each way reaches exactly the same state.
use super::*;

#[test]
fn a_replay_builds_the_state_that_applying_each_event_does() {
    let mut world = World::new();
    let (account_id, other_account) = (account(), account());
    let kept = world.prefix(account_id, "192.0.2.0/24");
    let gone = world.prefix(account_id, "198.51.100.0/24");
    let elsewhere = world.prefix(other_account, "10.0.0.0/8");
    world.bind(&kept, "192.0.2.0/24", Service::MagicTransit).unwrap();
    let narrow = world.bind(&kept, "192.0.2.1/32", Service::Cdn).unwrap();
    let wide = world.bind(&gone, "198.51.100.0/24", Service::Cdn).unwrap();
    world.bind(&elsewhere, "10.0.0.0/8", Service::Spectrum).unwrap();
    world.run(Command::ActivateBinding { binding_id: narrow.id }).unwrap();
    world
        .run(Command::DeleteBinding {
            account_id,
            prefix_id: gone.id,
            binding_id: wide.id,
        })
        .unwrap();
    world
        .run(Command::DeletePrefix {
            account_id,
            prefix_id: gone.id,
        })
        .unwrap();

    let (replayed, head) = State::replay(world.log.iter().cloned().map(Ok::<_, ()>)).unwrap();
    assert_eq!(head, world.revision);
    let view = |state: &State| {
        let prefixes = |account| -> Vec<Prefix> {
            state
                .list_prefixes(account, None, 100)
                .items
                .into_iter()
                .cloned()
                .collect()
        };
        let bindings = |prefix: &Prefix| -> Vec<Binding> {
            state
                .list_bindings(prefix.id, None, 100)
                .items
                .into_iter()
                .cloned()
                .collect()
        };
        (
            prefixes(account_id),
            prefixes(other_account),
            bindings(&kept),
            bindings(&gone),
            bindings(&elsewhere),
            state.n_prefixes(),
            state.n_bindings(),
            state.n_provisioning(),
            state.covering_prefix(&net("192.0.2.7/32")).map(|prefix| prefix.id),
        )
    };
    assert_eq!(view(&replayed), view(&world.state));
    assert_eq!(contents(&replayed), contents(&world.state), "the indexes built at once");
    assert_eq!(
        view(&replayed).3,
        Vec::<Binding>::new(),
        "the deleted prefix's binding is gone"
    );
    assert_eq!(view(&replayed).7, 2, "two bindings still provisioning");
}

/// Everything a state holds, in a comparable order.
fn contents(state: &State) -> String {
    let mut prefixes: Vec<_> = state.prefixes.values().map(|p| format!("{p:?}")).collect();
    let mut bindings: Vec<_> = state.bindings.values().map(|b| format!("{b:?}")).collect();
    let mut requests: Vec<_> = (state.requests.iter())
        .map(|(account_id, request_id, binding)| format!("{account_id:?}/{request_id}={binding:?}"))
        .collect();
    prefixes.sort();
    bindings.sort();
    requests.sort();
    format!(
        "{prefixes:?}\n{bindings:?}\n{requests:?}\n{:?}\n{:?}\n{:?}\n{:?}",
        state.prefixes_by_network, state.prefixes_by_account, state.bindings_by_prefix, state.provisioning
    )
}

#[test]
fn a_group_applied_undoably_is_taken_back_exactly() {
    let mut world = World::new();
    let owner = account();
    let kept = world.prefix(owner, "192.0.2.0/24");
    let root = world.bind(&kept, "192.0.2.0/24", Service::MagicTransit).unwrap();
    let nested = world.bind(&kept, "192.0.2.8/29", Service::Cdn).unwrap();
    let emptied = world.prefix(owner, "198.51.100.0/24");
    let before = contents(&world.state);

    let to_create = PrefixId::generate();
    let group = [
        Command::ActivateBinding { binding_id: root.id },
        Command::DeleteBinding {
            account_id: owner,
            prefix_id: kept.id,
            binding_id: nested.id,
        },
        Command::CreateBinding {
            id: BindingId::generate(),
            account_id: owner,
            prefix_id: kept.id,
            cidr: net("192.0.2.128/25"),
            service: Service::Spectrum,
            request_id: Some("once".into()),
        },
        Command::UpdatePrefix {
            account_id: owner,
            prefix_id: kept.id,
            description: "changed".into(),
        },
        Command::DeletePrefix {
            account_id: owner,
            prefix_id: emptied.id,
        },
        Command::CreatePrefix {
            id: to_create,
            account_id: owner,
            cidr: net("203.0.113.0/24"),
            asn: Some(64500),
            description: String::new(),
        },
        Command::CreateBinding {
            id: BindingId::generate(),
            account_id: owner,
            prefix_id: to_create,
            cidr: net("203.0.113.0/24"),
            service: Service::MagicTransit,
            request_id: Some("fresh".into()),
        },
    ];
    let mut undos = Vec::new();
    for command in &group {
        let decision = world.state.decide(command, NOW).unwrap();
        assert!(!decision.changes.is_empty(), "{command:?} changes something");
        for change in decision.changes {
            let event = Event {
                revision: 0,
                time: NOW,
                change,
                actor: None,
            };
            undos.push(world.state.apply_undoably(&event));
        }
    }
    assert_ne!(contents(&world.state), before);
    for undo in undos.into_iter().rev() {
        world.state.undo(undo);
    }
    assert_eq!(contents(&world.state), before);
}
