//! The rules: given events, when a command, expect events or an error. The fixture here
//! (`World`) serves the submodules too.
use super::*;
use crate::domain::{Command, Micros, Outcome, Service};

mod copies;
mod groups;
mod replay;

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
