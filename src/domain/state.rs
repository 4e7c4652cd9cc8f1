//! The aggregate state of every account, and the two halves of event sourcing over it:
//! [`State::decide`] (command -> events, or the rule that refuses it) and [`State::apply`]
//! (event -> new state). Decide never mutates; apply never refuses. Queries used by reads live
//! here too, so that the writer and the read model answer from the same structure.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;

use ipnet::IpNet;

use super::command::{Command, Outcome};
use super::error::{Error, Reason};
use super::event::{Change, Event};
use super::ids::{AccountId, BindingId, PrefixId};
use super::model::{Binding, Micros, Prefix, ProvisioningState};
use super::network::{NetworkKey, contains, same_family};
use super::service::Service;

/// What decide produced: the changes to append and what the caller gets once they are durable.
#[derive(Debug)]
pub struct Decision {
    pub changes: Vec<Change>,
    pub outcome: Outcome,
}

impl Decision {
    fn one(change: Change, outcome: Outcome) -> Decision {
        Decision {
            changes: vec![change],
            outcome,
        }
    }

    fn nothing(outcome: Outcome) -> Decision {
        Decision {
            changes: Vec::new(),
            outcome,
        }
    }
}

/// What a request id was first used for: the binding as created and the request's fields.
#[derive(Clone, Debug)]
struct RememberedRequest {
    binding: Binding,
}

/// One page of a list, in network order.
#[derive(Debug)]
pub struct Page<'a, T> {
    pub items: Vec<&'a T>,
    /// The key of the last item when more items follow.
    pub next_after: Option<NetworkKey>,
}

/// A map keyed by ids this server generated (random UUIDs): a fast hash is safe for them.
/// Keys a caller chooses (request ids) keep std's DoS-resistant SipHash.
pub type IdMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Clone, Debug, Default)]
pub struct State {
    prefixes: IdMap<PrefixId, Prefix>,
    /// Every prefix by network, across accounts: the overlap check and the lookup of the
    /// prefix that covers an address.
    prefixes_by_network: BTreeMap<NetworkKey, PrefixId>,
    /// Each account's prefixes in list order. One tree keyed by (account, network) rather
    /// than a tree per account (and below, per prefix): 100,000 small trees cost a node
    /// allocation each, in memory, at a restore and in every copy of the state.
    prefixes_by_account: BTreeMap<(AccountId, NetworkKey), PrefixId>,
    bindings: IdMap<BindingId, Binding>,
    /// Each prefix's bindings in list order.
    bindings_by_prefix: BTreeMap<(PrefixId, NetworkKey), BindingId>,
    /// Idempotency keys, scoped to the account, kept for as long as the log exists.
    requests: HashMap<(AccountId, String), RememberedRequest>,
    /// How many bindings are PROVISIONING (the rollout backlog), kept so that reading it does
    /// not walk every binding.
    n_provisioning: usize,
}

impl State {
    // ---- decide -------------------------------------------------------------------------

    /// Checks a command against the current state: the events it causes, or why not.
    pub fn decide(&self, command: &Command, now: Micros) -> Result<Decision, Error> {
        match command {
            Command::CreatePrefix {
                account_id,
                cidr,
                asn,
                description,
            } => {
                if let Some(existing) = self.overlapping_prefix(cidr) {
                    return Err(Error::field(
                        Reason::PrefixOverlaps,
                        "cidr",
                        format!("{cidr} overlaps the existing prefix {}", existing.cidr),
                    ));
                }
                let prefix = Prefix {
                    id: PrefixId::generate(),
                    account_id: *account_id,
                    cidr: *cidr,
                    asn: *asn,
                    description: description.clone(),
                    created_at: now,
                    modified_at: now,
                };
                Ok(Decision::one(
                    Change::PrefixCreated(prefix.clone()),
                    Outcome::Prefix(prefix),
                ))
            }
            Command::UpdatePrefix {
                account_id,
                prefix_id,
                description,
            } => {
                let mut prefix = self.prefix(*account_id, *prefix_id)?.clone();
                prefix.description = description.clone();
                prefix.modified_at = now;
                Ok(Decision::one(
                    Change::PrefixUpdated(prefix.clone()),
                    Outcome::Prefix(prefix),
                ))
            }
            Command::DeletePrefix { account_id, prefix_id } => {
                let prefix = self.prefix(*account_id, *prefix_id)?;
                let n_bindings = scoped(&self.bindings_by_prefix, *prefix_id).count();
                if n_bindings > 0 {
                    return Err(Error::new(
                        Reason::PrefixHasBindings,
                        format!(
                            "prefix {} still has {n_bindings} binding(s); delete them first",
                            prefix.cidr
                        ),
                    ));
                }
                Ok(Decision::one(
                    Change::PrefixDeleted(prefix.clone()),
                    Outcome::PrefixDeleted(*prefix_id),
                ))
            }
            Command::CreateBinding {
                account_id,
                prefix_id,
                cidr,
                service,
                request_id,
            } => self.decide_create_binding(*account_id, *prefix_id, cidr, *service, request_id.as_deref(), now),
            Command::DeleteBinding {
                account_id,
                prefix_id,
                binding_id,
            } => {
                let prefix = self.prefix(*account_id, *prefix_id)?;
                let binding = self.binding(*account_id, *prefix_id, *binding_id)?;
                let n_bindings = scoped(&self.bindings_by_prefix, *prefix_id).count();
                if binding.cidr == prefix.cidr && n_bindings > 1 {
                    return Err(Error::new(
                        Reason::PrefixWideBindingInUse,
                        format!(
                            "{} is the prefix-wide binding and {} more specific binding(s) rely on it; delete those first",
                            binding.cidr,
                            n_bindings - 1
                        ),
                    ));
                }
                Ok(Decision::one(
                    Change::BindingDeleted(binding.clone()),
                    Outcome::BindingDeleted(*binding_id),
                ))
            }
            Command::ActivateBinding { binding_id } => match self.bindings.get(binding_id) {
                Some(binding) if binding.state == ProvisioningState::Provisioning => {
                    let mut binding = binding.clone();
                    binding.state = ProvisioningState::Active;
                    binding.modified_at = now;
                    Ok(Decision::one(
                        Change::BindingProvisioningStateChanged(binding.clone()),
                        Outcome::Binding(binding),
                    ))
                }
                _ => Ok(Decision::nothing(Outcome::Nothing)),
            },
        }
    }

    fn decide_create_binding(
        &self,
        account_id: AccountId,
        prefix_id: PrefixId,
        cidr: &IpNet,
        service: Service,
        request_id: Option<&str>,
        now: Micros,
    ) -> Result<Decision, Error> {
        // A retry is answered before anything else: the prefix may be gone by now.
        if let Some(request_id) = request_id
            && let Some(remembered) = self.requests.get(&(account_id, request_id.to_string()))
        {
            let first = &remembered.binding;
            if first.prefix_id == prefix_id && first.cidr == *cidr && first.service == service {
                return Ok(Decision::nothing(Outcome::Binding(first.clone())));
            }
            return Err(Error::field(
                Reason::RequestIdReused,
                "request_id",
                format!(
                    "request_id {request_id:?} was already used to bind {} to {} in prefix {}",
                    first.cidr,
                    first.service.name(),
                    first.prefix_id
                ),
            ));
        }

        let prefix = self.prefix(account_id, prefix_id)?;
        if !same_family(&prefix.cidr, cidr) {
            return Err(Error::field(
                Reason::CidrFamilyMismatch,
                "cidr",
                format!("{cidr} is not of the same address family as the prefix {}", prefix.cidr),
            ));
        }
        if !contains(&prefix.cidr, cidr) {
            return Err(Error::field(
                Reason::CidrOutsidePrefix,
                "cidr",
                format!("{cidr} is not inside the prefix {}", prefix.cidr),
            ));
        }
        match self.prefix_wide_binding(prefix) {
            None if *cidr != prefix.cidr => {
                return Err(Error::field(
                    Reason::FirstBindingMustCoverPrefix,
                    "cidr",
                    format!(
                        "the first binding of a prefix must cover exactly {}, not {cidr}",
                        prefix.cidr
                    ),
                ));
            }
            None => {}
            Some(prefix_wide) => {
                if self.binding_at(prefix_id, cidr).is_some() {
                    return Err(Error::field(
                        Reason::BindingAlreadyExists,
                        "cidr",
                        format!("prefix {} already has a binding for {cidr}", prefix.cidr),
                    ));
                }
                if !service.may_layer_over(prefix_wide.service) {
                    return Err(Error::field(
                        Reason::ServiceLayeringNotAllowed,
                        "service_id",
                        format!(
                            "{} cannot be bound inside a prefix whose prefix-wide binding is {}",
                            service.name(),
                            prefix_wide.service.name()
                        ),
                    ));
                }
            }
        }

        let binding = Binding {
            id: BindingId::generate(),
            account_id,
            prefix_id,
            cidr: *cidr,
            service,
            state: ProvisioningState::Provisioning,
            created_at: now,
            modified_at: now,
        };
        Ok(Decision::one(
            Change::BindingCreated {
                binding: binding.clone(),
                request_id: request_id.map(str::to_string),
            },
            Outcome::Binding(binding),
        ))
    }

    // ---- apply --------------------------------------------------------------------------

    /// Folds one event into the state. Events are facts: nothing here can refuse them.
    pub fn apply(&mut self, event: &Event) {
        self.apply_to_records(event);
        self.apply_to_indexes(event);
    }

    /// Folds a whole log into a state: the records event by event, the indexes built once at
    /// the end from the final records (a start without a snapshot; ~2x faster than keeping
    /// the ordered indexes up to date through every event).
    pub fn replay<E>(events: impl IntoIterator<Item = Result<Event, E>>) -> Result<(State, u64), E> {
        let mut state = State::default();
        let mut head = 0;
        for event in events {
            let event = event?;
            state.apply_to_records(&event);
            head = event.revision;
        }
        state.rebuild_indexes();
        Ok((state, head))
    }

    /// The records (by id), idempotency keys and counters.
    fn apply_to_records(&mut self, event: &Event) {
        match &event.change {
            Change::PrefixCreated(prefix) | Change::PrefixUpdated(prefix) => {
                self.prefixes.insert(prefix.id, prefix.clone());
            }
            Change::PrefixDeleted(prefix) => {
                self.prefixes.remove(&prefix.id);
            }
            Change::BindingCreated { binding, request_id } => {
                if let Some(request_id) = request_id {
                    self.requests.insert(
                        (binding.account_id, request_id.clone()),
                        RememberedRequest {
                            binding: binding.clone(),
                        },
                    );
                }
                let replaced = self.bindings.insert(binding.id, binding.clone());
                self.count_provisioning(replaced.as_ref(), Some(binding));
            }
            Change::BindingProvisioningStateChanged(binding) => {
                let replaced = self.bindings.insert(binding.id, binding.clone());
                self.count_provisioning(replaced.as_ref(), Some(binding));
            }
            Change::BindingDeleted(binding) => {
                let removed = self.bindings.remove(&binding.id);
                self.count_provisioning(removed.as_ref(), None);
            }
        }
    }

    /// The ordered indexes over the records.
    fn apply_to_indexes(&mut self, event: &Event) {
        match &event.change {
            Change::PrefixCreated(prefix) | Change::PrefixUpdated(prefix) => {
                let key = NetworkKey::of(&prefix.cidr);
                self.prefixes_by_network.insert(key, prefix.id);
                self.prefixes_by_account.insert((prefix.account_id, key), prefix.id);
            }
            Change::PrefixDeleted(prefix) => {
                // A prefix is deleted only without bindings: nothing left under it here.
                let key = NetworkKey::of(&prefix.cidr);
                self.prefixes_by_network.remove(&key);
                self.prefixes_by_account.remove(&(prefix.account_id, key));
            }
            Change::BindingCreated { binding, .. } => {
                self.bindings_by_prefix
                    .insert((binding.prefix_id, NetworkKey::of(&binding.cidr)), binding.id);
            }
            Change::BindingProvisioningStateChanged(_) => {}
            Change::BindingDeleted(binding) => {
                self.bindings_by_prefix
                    .remove(&(binding.prefix_id, NetworkKey::of(&binding.cidr)));
            }
        }
    }

    /// Builds the ordered indexes from the records in one go (sorted runs, packed nodes).
    fn rebuild_indexes(&mut self) {
        let prefixes = self.prefixes.values();
        self.prefixes_by_network = (prefixes.clone())
            .map(|prefix| (NetworkKey::of(&prefix.cidr), prefix.id))
            .collect();
        self.prefixes_by_account = prefixes
            .map(|prefix| ((prefix.account_id, NetworkKey::of(&prefix.cidr)), prefix.id))
            .collect();
        self.bindings_by_prefix = (self.bindings.values())
            .map(|binding| ((binding.prefix_id, NetworkKey::of(&binding.cidr)), binding.id))
            .collect();
    }

    /// Keeps `n_provisioning` in step with a binding going from `before` to `after`.
    fn count_provisioning(&mut self, before: Option<&Binding>, after: Option<&Binding>) {
        let provisioning = |binding: Option<&Binding>| {
            usize::from(binding.is_some_and(|b| b.state == ProvisioningState::Provisioning))
        };
        self.n_provisioning = self.n_provisioning + provisioning(after) - provisioning(before);
    }

    // ---- snapshots ----------------------------------------------------------------------

    pub fn prefixes(&self) -> impl Iterator<Item = &Prefix> {
        self.prefixes.values()
    }

    pub fn bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings.values()
    }

    /// Every idempotency key with the binding it created, as created.
    pub fn remembered_requests(&self) -> impl Iterator<Item = (AccountId, &str, &Binding)> {
        self.requests
            .iter()
            .map(|((account_id, request_id), remembered)| (*account_id, request_id.as_str(), &remembered.binding))
    }

    /// Rebuilds a state from the records a snapshot holds; equal to the state the events up to
    /// the snapshot's revision fold into. The indexes are built from sorted runs in one go
    /// (`BTreeMap::from_iter`), packed, instead of one insert per record.
    pub fn restore(
        prefixes: impl IntoIterator<Item = Prefix>,
        bindings: impl IntoIterator<Item = Binding>,
        requests: impl IntoIterator<Item = (AccountId, String, Binding)>,
    ) -> State {
        let prefixes: IdMap<PrefixId, Prefix> = prefixes.into_iter().map(|prefix| (prefix.id, prefix)).collect();
        let bindings: IdMap<BindingId, Binding> = bindings.into_iter().map(|binding| (binding.id, binding)).collect();
        let mut state = State {
            n_provisioning: (bindings.values())
                .filter(|binding| binding.state == ProvisioningState::Provisioning)
                .count(),
            requests: (requests.into_iter())
                .map(|(account_id, request_id, binding)| ((account_id, request_id), RememberedRequest { binding }))
                .collect(),
            prefixes,
            bindings,
            ..State::default()
        };
        state.rebuild_indexes();
        state
    }

    /// Starts a copy of the records that is taken a chunk at a time ([`RecordCopy::copy_from`])
    /// while the state keeps changing: what a background snapshot needs without stopping
    /// writes for a whole copy.
    pub fn start_copy(&self) -> RecordCopy {
        RecordCopy {
            prefix_ids: self.prefixes.keys().copied().collect(),
            binding_ids: self.bindings.keys().copied().collect(),
            request_keys: self.requests.keys().cloned().collect(),
            copied: 0,
            prefixes: Vec::new(),
            bindings: Vec::new(),
            requests: Vec::new(),
        }
    }

    // ---- queries ------------------------------------------------------------------------

    /// The account's prefix; another account's is NOT_FOUND exactly like a missing one.
    pub fn prefix(&self, account_id: AccountId, prefix_id: PrefixId) -> Result<&Prefix, Error> {
        self.prefixes
            .get(&prefix_id)
            .filter(|prefix| prefix.account_id == account_id)
            .ok_or_else(|| {
                Error::field(
                    Reason::PrefixNotFound,
                    "prefix_id",
                    format!("prefix {prefix_id} not found"),
                )
            })
    }

    /// The prefix's binding; checks the prefix first.
    pub fn binding(
        &self,
        account_id: AccountId,
        prefix_id: PrefixId,
        binding_id: BindingId,
    ) -> Result<&Binding, Error> {
        self.prefix(account_id, prefix_id)?;
        self.bindings
            .get(&binding_id)
            .filter(|binding| binding.prefix_id == prefix_id && binding.account_id == account_id)
            .ok_or_else(|| {
                Error::field(
                    Reason::BindingNotFound,
                    "binding_id",
                    format!("binding {binding_id} not found"),
                )
            })
    }

    /// Any binding by id, whoever owns it (the rollout and the watch filters use it).
    pub fn binding_by_id(&self, binding_id: BindingId) -> Option<&Binding> {
        self.bindings.get(&binding_id)
    }

    pub fn prefix_by_id(&self, prefix_id: PrefixId) -> Option<&Prefix> {
        self.prefixes.get(&prefix_id)
    }

    pub fn list_prefixes(
        &self,
        account_id: AccountId,
        after: Option<NetworkKey>,
        page_size: usize,
    ) -> Page<'_, Prefix> {
        page(&self.prefixes_by_account, account_id, after, page_size, |id| {
            self.prefixes.get(id)
        })
    }

    pub fn list_bindings(&self, prefix_id: PrefixId, after: Option<NetworkKey>, page_size: usize) -> Page<'_, Binding> {
        page(&self.bindings_by_prefix, prefix_id, after, page_size, |id| {
            self.bindings.get(id)
        })
    }

    /// Every binding still provisioning (the rollout's backlog after a restart).
    pub fn provisioning_bindings(&self) -> impl Iterator<Item = &Binding> {
        self.bindings
            .values()
            .filter(|binding| binding.state == ProvisioningState::Provisioning)
    }

    pub fn n_prefixes(&self) -> usize {
        self.prefixes.len()
    }

    pub fn n_bindings(&self) -> usize {
        self.bindings.len()
    }

    /// How many bindings are PROVISIONING.
    pub fn n_provisioning(&self) -> usize {
        self.n_provisioning
    }

    /// The prefix that contains `network`, if any (prefixes never overlap, so there is at most
    /// one).
    pub fn covering_prefix(&self, network: &IpNet) -> Option<&Prefix> {
        let key = NetworkKey::of(network);
        let (_, id) = self.prefixes_by_network.range(..=key).next_back()?;
        let prefix = self.prefixes.get(id)?;
        contains(&prefix.cidr, network).then_some(prefix)
    }

    /// An existing prefix that overlaps `cidr`: one that contains it or one inside it.
    fn overlapping_prefix(&self, cidr: &IpNet) -> Option<&Prefix> {
        if let Some(container) = self.covering_prefix(cidr) {
            return Some(container);
        }
        let key = NetworkKey::of(cidr);
        let last = NetworkKey {
            family: key.family,
            address: key.last_address(),
            prefix_len: u8::MAX,
        };
        let (_, id) = self.prefixes_by_network.range(key..=last).next()?;
        self.prefixes.get(id)
    }

    /// The binding whose CIDR equals the prefix's: present whenever the prefix has bindings.
    fn prefix_wide_binding(&self, prefix: &Prefix) -> Option<&Binding> {
        self.binding_at(prefix.id, &prefix.cidr)
    }

    fn binding_at(&self, prefix_id: PrefixId, cidr: &IpNet) -> Option<&Binding> {
        let id = self.bindings_by_prefix.get(&(prefix_id, NetworkKey::of(cidr)))?;
        self.bindings.get(id)
    }
}

/// The entries of `index` under `scope` (an account's prefixes, a prefix's bindings), in
/// network order.
fn scoped<S: Ord + Copy, Id>(
    index: &BTreeMap<(S, NetworkKey), Id>,
    scope: S,
) -> std::collections::btree_map::Range<'_, (S, NetworkKey), Id> {
    index.range((scope, NetworkKey::MIN)..=(scope, NetworkKey::MAX))
}

/// A copy of a state's records, taken in chunks while the state changes: the ids are those
/// of the state it started from; each record is copied as it is when its chunk is taken
/// (one deleted meanwhile is left out). So the copy mixes the states between its start and
/// its end, and is exact once the events after its start are applied to it
/// ([`into_state`](Self::into_state), then [`State::apply`] each): every event carries the
/// full record it sets or removes, so applying one that the copy already reflects sets the
/// same value again. Records and keys never change their network or scope, so the indexes
/// rebuilt from the copy hold no conflicting entries.
pub struct RecordCopy {
    prefix_ids: Vec<PrefixId>,
    binding_ids: Vec<BindingId>,
    request_keys: Vec<(AccountId, String)>,
    /// How many ids (prefixes, then bindings, then request keys) have been copied.
    copied: usize,
    prefixes: Vec<Prefix>,
    bindings: Vec<Binding>,
    requests: Vec<(AccountId, String, Binding)>,
}

impl RecordCopy {
    /// Copies up to `max` more records from `state`; `true` once every id is copied.
    pub fn copy_from(&mut self, state: &State, max: usize) -> bool {
        let (n_prefixes, n_bindings) = (self.prefix_ids.len(), self.binding_ids.len());
        let total = n_prefixes + n_bindings + self.request_keys.len();
        let end = total.min(self.copied + max);
        for index in self.copied..end {
            if index < n_prefixes {
                self.prefixes
                    .extend(state.prefixes.get(&self.prefix_ids[index]).cloned());
            } else if index < n_prefixes + n_bindings {
                let id = self.binding_ids[index - n_prefixes];
                self.bindings.extend(state.bindings.get(&id).cloned());
            } else {
                let key = &self.request_keys[index - n_prefixes - n_bindings];
                if let Some(remembered) = state.requests.get(key) {
                    self.requests.push((key.0, key.1.clone(), remembered.binding.clone()));
                }
            }
        }
        self.copied = end;
        end == total
    }

    /// The state of the copied records (see the type's doc for what it still lacks).
    pub fn into_state(self) -> State {
        State::restore(self.prefixes, self.bindings, self.requests)
    }
}

fn page<'a, S: Ord + Copy, Id, T>(
    index: &BTreeMap<(S, NetworkKey), Id>,
    scope: S,
    after: Option<NetworkKey>,
    page_size: usize,
    resolve: impl Fn(&Id) -> Option<&'a T>,
) -> Page<'a, T> {
    let start = after.map_or(Bound::Included((scope, NetworkKey::MIN)), |after| {
        Bound::Excluded((scope, after))
    });
    let mut entries = index.range((start, Bound::Included((scope, NetworkKey::MAX))));
    let mut items = Vec::new();
    let mut last_key = None;
    for ((_, key), id) in entries.by_ref().take(page_size) {
        items.extend(resolve(id));
        last_key = Some(*key);
    }
    let next_after = if entries.next().is_some() { last_key } else { None };
    Page { items, next_after }
}

#[cfg(test)]
mod tests {
    //! Given events, when a command, expect events or an error.
    use super::*;

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
                };
                self.state.apply(&event);
                self.log.push(event);
            }
            Ok(decision.outcome)
        }

        fn prefix(&mut self, account_id: AccountId, cidr: &str) -> Prefix {
            let command = Command::CreatePrefix {
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
    fn a_copy_taken_in_chunks_while_writes_go_on_is_exact_after_the_events_since_its_start() {
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
            let mut copied = copy.into_state();
            for event in world.log.iter().filter(|event| event.revision > started_at) {
                copied.apply(event);
            }
            let prefix_ids: Vec<PrefixId> = prefixes.iter().map(|prefix| prefix.id).collect();
            assert!(
                world.revision > started_at + 20,
                "seed {seed}: writes went on during the copy ({started_at} -> {}, {} prefixes, {} bindings)",
                world.revision,
                world.state.n_prefixes(),
                world.state.n_bindings()
            );
            assert_eq!(
                everything(&copied, &accounts, &prefix_ids),
                everything(&world.state, &accounts, &prefix_ids),
                "seed {seed}"
            );
        }
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
        assert_eq!(
            view(&replayed).3,
            Vec::<Binding>::new(),
            "the deleted prefix's binding is gone"
        );
        assert_eq!(view(&replayed).7, 2, "two bindings still provisioning");
    }
}
