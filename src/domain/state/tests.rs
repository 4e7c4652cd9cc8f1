//! Given events, when a command, expect events or an error.
use super::*;
use crate::domain::{Command, Micros, Outcome, Service};

mod copies;

const NOW: Micros = Micros(1_700_000_000_000_000);

fn account() -> AccountId {
    AccountId::generate()
}

fn net(text: &str) -> IpNet {
    text.parse().unwrap()
}

struct World {
    state: State,
    revision: u64,
    /// Every event applied, in order.
    log: Vec<Event>,
}

impl World {
    fn new() -> World {
        World {
            state: State::default(),
            revision: 0,
            log: Vec::new(),
        }
    }

    fn run(&mut self, command: Command) -> Result<Outcome, Error> {
        let decision = self.state.decide(&command, NOW)?;
        for change in decision.changes {
            self.revision += 1;
            let event = Event {
                revision: self.revision,
                time: NOW,
                change,
                actor: None,
            };
            self.state.apply(&event);
            self.log.push(event);
        }
        Ok(decision.outcome)
    }

    fn prefix(&mut self, account_id: AccountId, cidr: &str) -> Prefix {
        let command = Command::CreatePrefix {
            id: PrefixId::generate(),
            account_id,
            cidr: net(cidr),
            asn: None,
            description: String::new(),
        };
        match self.run(command).unwrap() {
            Outcome::Prefix(prefix) => prefix,
            other => panic!("{other:?}"),
        }
    }

    fn bind(&mut self, prefix: &Prefix, cidr: &str, service: Service) -> Result<Binding, Error> {
        let command = Command::CreateBinding {
            id: BindingId::generate(),
            account_id: prefix.account_id,
            prefix_id: prefix.id,
            cidr: net(cidr),
            service,
            request_id: None,
        };
        self.run(command).map(|outcome| match outcome {
            Outcome::Binding(binding) => binding,
            other => panic!("{other:?}"),
        })
    }
}

fn reason<T: std::fmt::Debug>(result: Result<T, Error>) -> Reason {
    result.unwrap_err().reason
}

#[test]
fn prefixes_never_overlap_across_accounts() {
    let mut world = World::new();
    world.prefix(account(), "192.0.2.0/24");
    for cidr in ["192.0.2.0/24", "192.0.0.0/16", "0.0.0.0/0"] {
        let command = Command::CreatePrefix {
            id: PrefixId::generate(),
            account_id: account(),
            cidr: net(cidr),
            asn: None,
            description: String::new(),
        };
        assert_eq!(reason(world.run(command)), Reason::PrefixOverlaps, "{cidr}");
    }
    world.prefix(account(), "192.0.3.0/24");
    world.prefix(account(), "2001:db8::/48");
}

#[test]
fn the_provisioning_count_follows_every_binding_change() {
    let mut world = World::new();
    let prefix = world.prefix(account(), "192.0.2.0/24");
    let wide = world.bind(&prefix, "192.0.2.0/24", Service::MagicTransit).unwrap();
    let one = world.bind(&prefix, "192.0.2.1/32", Service::Cdn).unwrap();
    let two = world.bind(&prefix, "192.0.2.2/32", Service::Cdn).unwrap();
    let counted = |world: &World| {
        (
            world.state.n_provisioning(),
            world.state.provisioning_bindings().count(),
        )
    };
    assert_eq!(counted(&world), (3, 3));
    world.run(Command::ActivateBinding { binding_id: wide.id }).unwrap();
    world.run(Command::ActivateBinding { binding_id: wide.id }).unwrap();
    assert_eq!(counted(&world), (2, 2), "activating twice counts once");
    let delete = |binding: &Binding| Command::DeleteBinding {
        account_id: binding.account_id,
        prefix_id: binding.prefix_id,
        binding_id: binding.id,
    };
    world.run(delete(&one)).unwrap();
    assert_eq!(counted(&world), (1, 1));
    world.run(Command::ActivateBinding { binding_id: two.id }).unwrap();
    world.run(delete(&two)).unwrap();
    assert_eq!(counted(&world), (0, 0));
    let restored = State::restore(
        world.state.prefixes().cloned(),
        world.state.bindings().cloned().chain([one]),
        [],
    );
    assert_eq!(restored.n_provisioning(), 1, "a restored state counts its bindings");
}

#[test]
fn first_binding_must_cover_the_prefix() {
    let mut world = World::new();
    let prefix = world.prefix(account(), "192.0.2.0/24");
    assert_eq!(
        reason(world.bind(&prefix, "192.0.2.0/25", Service::Cdn)),
        Reason::FirstBindingMustCoverPrefix
    );
    let binding = world.bind(&prefix, "192.0.2.0/24", Service::Spectrum).unwrap();
    assert_eq!(binding.state, ProvisioningState::Provisioning);
}

#[test]
fn later_bindings_are_inside_same_family_unique_and_layered() {
    let mut world = World::new();
    let prefix = world.prefix(account(), "192.0.2.0/24");
    world.bind(&prefix, "192.0.2.0/24", Service::MagicTransit).unwrap();
    assert_eq!(
        reason(world.bind(&prefix, "2001:db8::/64", Service::Cdn)),
        Reason::CidrFamilyMismatch
    );
    assert_eq!(
        reason(world.bind(&prefix, "192.0.3.0/32", Service::Cdn)),
        Reason::CidrOutsidePrefix
    );
    assert_eq!(
        reason(world.bind(&prefix, "192.0.0.0/16", Service::Cdn)),
        Reason::CidrOutsidePrefix
    );
    assert_eq!(
        reason(world.bind(&prefix, "192.0.2.0/24", Service::Cdn)),
        Reason::BindingAlreadyExists
    );
    assert_eq!(
        reason(world.bind(&prefix, "192.0.2.1/32", Service::MagicTransit)),
        Reason::ServiceLayeringNotAllowed
    );
    world.bind(&prefix, "192.0.2.1/32", Service::Cdn).unwrap();
    assert_eq!(
        reason(world.bind(&prefix, "192.0.2.1/32", Service::Spectrum)),
        Reason::BindingAlreadyExists
    );
    // Layering is judged against the prefix-wide binding only.
    world.bind(&prefix, "192.0.2.0/31", Service::Spectrum).unwrap();
}

#[test]
fn deletes_keep_the_prefix_wide_binding_last() {
    let mut world = World::new();
    let prefix = world.prefix(account(), "192.0.2.0/24");
    let wide = world.bind(&prefix, "192.0.2.0/24", Service::Cdn).unwrap();
    let narrow = world.bind(&prefix, "192.0.2.128/25", Service::Spectrum).unwrap();
    let delete = |binding: &Binding| Command::DeleteBinding {
        account_id: prefix.account_id,
        prefix_id: prefix.id,
        binding_id: binding.id,
    };
    let delete_prefix = Command::DeletePrefix {
        account_id: prefix.account_id,
        prefix_id: prefix.id,
    };
    assert_eq!(reason(world.run(delete(&wide))), Reason::PrefixWideBindingInUse);
    assert_eq!(reason(world.run(delete_prefix.clone())), Reason::PrefixHasBindings);
    world.run(delete(&narrow)).unwrap();
    world.run(delete(&wide)).unwrap();
    assert_eq!(reason(world.run(delete(&wide))), Reason::BindingNotFound);
    assert_eq!(
        reason(world.bind(&prefix, "192.0.2.128/25", Service::Spectrum)),
        Reason::FirstBindingMustCoverPrefix,
        "without its prefix-wide binding, a prefix takes only a prefix-wide one"
    );
    world.run(delete_prefix.clone()).unwrap();
    assert_eq!(reason(world.run(delete_prefix)), Reason::PrefixNotFound);
}

#[test]
fn other_accounts_see_not_found() {
    let mut world = World::new();
    let prefix = world.prefix(account(), "192.0.2.0/24");
    let binding = world.bind(&prefix, "192.0.2.0/24", Service::Cdn).unwrap();
    let stranger = account();
    assert_eq!(reason(world.state.prefix(stranger, prefix.id)), Reason::PrefixNotFound);
    assert_eq!(
        reason(world.state.binding(stranger, prefix.id, binding.id)),
        Reason::PrefixNotFound
    );
    let other_prefix = world.prefix(prefix.account_id, "198.51.100.0/24");
    assert_eq!(
        reason(world.state.binding(prefix.account_id, other_prefix.id, binding.id)),
        Reason::BindingNotFound
    );
}

#[test]
fn request_ids_replay_the_first_binding_and_refuse_other_fields() {
    let mut world = World::new();
    let prefix = world.prefix(account(), "192.0.2.0/24");
    let create = |cidr: &str, service| Command::CreateBinding {
        id: BindingId::generate(),
        account_id: prefix.account_id,
        prefix_id: prefix.id,
        cidr: net(cidr),
        service,
        request_id: Some("retry-me".into()),
    };
    let first = world.run(create("192.0.2.0/24", Service::Cdn)).unwrap();
    let revision = world.revision;
    assert_eq!(world.run(create("192.0.2.0/24", Service::Cdn)).unwrap(), first);
    assert_eq!(world.revision, revision, "a retry appends nothing");
    assert_eq!(
        reason(world.run(create("192.0.2.0/24", Service::Spectrum))),
        Reason::RequestIdReused
    );
    // Another account may use the same key.
    let other = world.prefix(account(), "198.51.100.0/24");
    let command = Command::CreateBinding {
        id: BindingId::generate(),
        account_id: other.account_id,
        prefix_id: other.id,
        cidr: other.cidr,
        service: Service::Cdn,
        request_id: Some("retry-me".into()),
    };
    assert!(world.run(command).is_ok());
}

#[test]
fn activation_happens_once_and_never_after_delete() {
    let mut world = World::new();
    let prefix = world.prefix(account(), "192.0.2.0/24");
    let binding = world.bind(&prefix, "192.0.2.0/24", Service::Cdn).unwrap();
    let activate = Command::ActivateBinding { binding_id: binding.id };
    assert!(
        matches!(world.run(activate.clone()).unwrap(), Outcome::Binding(b) if b.state == ProvisioningState::Active)
    );
    let revision = world.revision;
    assert_eq!(world.run(activate.clone()).unwrap(), Outcome::Nothing);
    let second = world.bind(&prefix, "192.0.2.0/25", Service::Spectrum).unwrap();
    world
        .run(Command::DeleteBinding {
            account_id: prefix.account_id,
            prefix_id: prefix.id,
            binding_id: second.id,
        })
        .unwrap();
    assert_eq!(
        world.run(Command::ActivateBinding { binding_id: second.id }).unwrap(),
        Outcome::Nothing
    );
    assert_eq!(world.revision, revision + 2);
}

#[test]
fn pages_follow_network_order() {
    let mut world = World::new();
    let account_id = account();
    for cidr in ["2001:db8::/48", "198.51.100.0/24", "10.0.0.0/8", "192.0.2.0/24"] {
        world.prefix(account_id, cidr);
    }
    let first = world.state.list_prefixes(account_id, None, 3);
    let cidrs: Vec<_> = first.items.iter().map(|p| p.cidr.to_string()).collect();
    assert_eq!(cidrs, ["10.0.0.0/8", "192.0.2.0/24", "198.51.100.0/24"]);
    let second = world.state.list_prefixes(account_id, first.next_after, 3);
    assert_eq!(second.items.len(), 1);
    assert_eq!(second.next_after, None);
    let exact = world.state.list_prefixes(account_id, None, 4);
    assert_eq!(exact.next_after, None);
}

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

/// A state with a prefix that has its prefix-wide binding, one without bindings and another
/// account's, and binding creates over them: the prefix's own CIDR, a /25 and two /32s each,
/// by either account, with no request id or one of two.
fn creates_over_three_prefixes() -> (World, Vec<Command>) {
    let mut world = World::new();
    let (owner, other) = (account(), account());
    let bound = world.prefix(owner, "192.0.2.0/24");
    world.bind(&bound, "192.0.2.0/24", Service::MagicTransit).unwrap();
    let empty = world.prefix(owner, "198.51.100.0/24");
    let others = world.prefix(other, "203.0.113.0/24");
    world.bind(&others, "203.0.113.0/24", Service::Cdn).unwrap();

    let mut creates = Vec::new();
    for prefix in [&bound, &empty, &others] {
        let base = prefix.cidr.network().to_string();
        let base = base.trim_end_matches(".0");
        let cidrs = [
            prefix.cidr.to_string(),
            format!("{base}.0/25"),
            format!("{base}.1/32"),
            format!("{base}.2/32"),
        ];
        for cidr in &cidrs {
            for account_id in [owner, other] {
                for request_id in [None, Some("one"), Some("two")] {
                    creates.push(Command::CreateBinding {
                        id: BindingId::generate(),
                        account_id,
                        prefix_id: prefix.id,
                        cidr: net(cidr),
                        service: Service::Spectrum,
                        request_id: request_id.map(String::from),
                    });
                }
            }
        }
    }
    (world, creates)
}

/// Whether `later` could read `earlier`'s decision, as the writer asks for a group of two.
fn reads(state: &State, earlier: &Command, later: &Command) -> bool {
    state.read_later(&[earlier, later])[0]
}

/// The writer skips applying a decision that no later command of its group could read
/// (`read_later` false). For every pair of binding creates over prefixes with and without a
/// prefix-wide binding, shared and distinct CIDRs, request ids and accounts: whenever the rule
/// says independent, the later command decides exactly the same with or without the earlier
/// one's events applied; and the rule is not vacuous either way.
#[test]
fn creates_called_independent_decide_the_same_either_way() {
    let (mut world, creates) = creates_over_three_prefixes();
    let decided = |state: &State, command: &Command| format!("{:?}", state.decide(command, NOW));
    let alone: Vec<String> = creates.iter().map(|command| decided(&world.state, command)).collect();
    let (mut independent, mut changed_by_dependent) = (0, 0);
    for earlier in &creates {
        let Ok(decision) = world.state.decide(earlier, NOW) else {
            continue;
        };
        // Asked before the earlier decision is applied, as the writer asks.
        let read: Vec<bool> = creates
            .iter()
            .map(|later| reads(&world.state, earlier, later))
            .collect();
        let undos: Vec<Undo> = (decision.changes.into_iter())
            .map(|change| {
                let event = Event {
                    revision: 0,
                    time: NOW,
                    change,
                    actor: None,
                };
                world.state.apply_undoably(&event)
            })
            .collect();
        for ((later, alone), read) in creates.iter().zip(&alone).zip(read) {
            let after = decided(&world.state, later);
            if read {
                changed_by_dependent += usize::from(&after != alone);
            } else {
                independent += 1;
                assert_eq!(&after, alone, "{later:?} decides differently after {earlier:?}");
            }
        }
        for undo in undos.into_iter().rev() {
            world.state.undo(undo);
        }
    }
    assert!(independent > 1000, "most pairs are independent: {independent}");
    assert!(
        changed_by_dependent > 100,
        "dependent pairs do see each other: {changed_by_dependent}"
    );
    // Anything but two creates is dependent.
    let activate = Command::ActivateBinding {
        binding_id: BindingId::generate(),
    };
    assert!(reads(&world.state, &activate, &creates[0]));
    assert!(reads(&world.state, &creates[0], &activate));
}

/// The writer asks `read_later` for a whole group at once, in one pass; what it says of each
/// command must be what the pairs of that command with each later one say, for groups of
/// creates mixed with other commands.
#[test]
fn a_group_reads_what_its_pairs_read() {
    let (world, creates) = creates_over_three_prefixes();
    let others = [
        Command::ActivateBinding {
            binding_id: BindingId::generate(),
        },
        Command::DeleteBinding {
            account_id: account(),
            prefix_id: PrefixId::generate(),
            binding_id: BindingId::generate(),
        },
    ];
    // Creates into a prefix the state does not know (two CIDRs, one its would-be own).
    let unknown = PrefixId::generate();
    let into_unknown: Vec<Command> = ["10.0.0.0/24", "10.0.0.1/32"]
        .into_iter()
        .map(|cidr| Command::CreateBinding {
            id: BindingId::generate(),
            account_id: account(),
            prefix_id: unknown,
            cidr: net(cidr),
            service: Service::Cdn,
            request_id: None,
        })
        .collect();
    let mut random = fastrand::Rng::with_seed(7);
    for size in (1..40).cycle().take(2_000) {
        let group: Vec<&Command> = (0..size)
            .map(|_| match random.u8(..20) {
                0 => &others[random.usize(..others.len())],
                1 => &into_unknown[random.usize(..into_unknown.len())],
                _ => &creates[random.usize(..creates.len())],
            })
            .collect();
        let pair_by_pair: Vec<bool> = (0..size)
            .map(|index| (group[index + 1..].iter()).any(|later| reads(&world.state, group[index], later)))
            .collect();
        assert_eq!(world.state.read_later(&group), pair_by_pair, "{group:?}");
    }
}
