//! Which decisions of a group a later command reads (`State::read_later`): the writer applies
//! only those, so the rule must never call a pair independent that is not.
use super::*;

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
