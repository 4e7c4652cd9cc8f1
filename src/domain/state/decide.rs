//! Deciding: a command checked against the current state becomes the changes to append (or
//! the rule that refuses it). Deterministic: the new resource's id comes in with the command
//! and the time as an argument, so the same state and command always decide the same.

use std::collections::{HashMap, HashSet};

use ipnet::IpNet;

use super::State;
use super::scoped;
use crate::domain::command::{Command, Outcome};
use crate::domain::error::{Error, Reason};
use crate::domain::event::Change;
use crate::domain::ids::{AccountId, BindingId, PrefixId};
use crate::domain::model::{Binding, Micros, Prefix, ProvisioningState};
use crate::domain::network::{NetworkKey, contains, same_family};
use crate::domain::service::Service;

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

/// A CreateBinding command's fields, borrowed.
struct NewBinding<'a> {
    id: BindingId,
    account_id: AccountId,
    prefix_id: PrefixId,
    cidr: &'a IpNet,
    service: Service,
    request_id: Option<&'a str>,
}

impl State {
    /// Checks a command against the current state: the events it causes, or why not.
    pub fn decide(&self, command: &Command, now: Micros) -> Result<Decision, Error> {
        match command {
            Command::CreatePrefix {
                id,
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
                    id: *id,
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
                id,
                account_id,
                prefix_id,
                cidr,
                service,
                request_id,
            } => {
                let new = NewBinding {
                    id: *id,
                    account_id: *account_id,
                    prefix_id: *prefix_id,
                    cidr,
                    service: *service,
                    request_id: request_id.as_deref(),
                };
                self.decide_create_binding(new, now)
            }
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
                Some(binding) if binding.state == ProvisioningState::Provisioning => Ok(activation(binding, now)),
                _ => Ok(Decision::nothing(Outcome::Nothing)),
            },
            Command::CompleteProvisioning {
                account_id,
                prefix_id,
                binding_id,
            } => {
                let binding = self.binding(*account_id, *prefix_id, *binding_id)?;
                match binding.state {
                    ProvisioningState::Provisioning => Ok(activation(binding, now)),
                    // Already reported: the same answer, nothing appended.
                    ProvisioningState::Active => Ok(Decision::nothing(Outcome::Binding(binding.clone()))),
                }
            }
        }
    }

    /// For each command of a group, in order, whether a later one could read its decision, so
    /// that the group's writer must apply it before it decides the later ones.
    ///
    /// Only two binding creates can be independent. A create reads its account's request id,
    /// and in its prefix the binding at its own CIDR and the prefix-wide one (whose CIDR is the
    /// prefix's); so two creates are independent when they do not share an account's request
    /// id and, in one prefix (known to the state), their CIDRs differ and neither is the
    /// prefix's own. Every other pair (any delete, activation or prefix change) counts as
    /// dependent. Found in one pass from the end: a group holds up to a thousand commands, and
    /// pair by pair that was half a million checks.
    pub fn read_later(&self, group: &[&Command]) -> Vec<bool> {
        let mut read = vec![false; group.len()];
        // What the commands after the one at hand hold: any that is not a create (it depends
        // on everything before it), the creates' request ids, and by prefix their CIDRs and
        // whether one of them is the prefix's own.
        let mut other_later = false;
        let hasher = foldhash::fast::RandomState::default;
        let mut request_ids = HashSet::with_capacity_and_hasher(group.len(), hasher());
        let mut cidrs = HashSet::with_capacity_and_hasher(group.len(), hasher());
        let mut prefixes: HashMap<PrefixId, bool, _> = HashMap::with_hasher(hasher());
        for (index, command) in group.iter().enumerate().rev() {
            let Command::CreateBinding {
                account_id,
                prefix_id,
                cidr,
                request_id,
                ..
            } = command
            else {
                read[index] = index + 1 < group.len();
                other_later = true;
                continue;
            };
            let key = NetworkKey::of(cidr);
            let prefix_wide = (self.prefixes.get(prefix_id)).map(|prefix| key == NetworkKey::of(&prefix.cidr));
            let request_id = request_id.as_deref();
            read[index] = other_later
                || request_id.is_some_and(|request_id| request_ids.contains(&(*account_id, request_id)))
                || match prefixes.get(prefix_id) {
                    None => false,
                    // A later create in this prefix: dependent if either is the prefix-wide
                    // binding, the prefix is unknown (`prefix_wide` is None) or the CIDRs match.
                    Some(&later_prefix_wide) => {
                        later_prefix_wide || prefix_wide != Some(false) || cidrs.contains(&(*prefix_id, key))
                    }
                };
            if let Some(request_id) = request_id {
                request_ids.insert((*account_id, request_id));
            }
            cidrs.insert((*prefix_id, key));
            *prefixes.entry(*prefix_id).or_default() |= prefix_wide == Some(true);
        }
        read
    }

    fn decide_create_binding(&self, new: NewBinding<'_>, now: Micros) -> Result<Decision, Error> {
        let NewBinding {
            id,
            account_id,
            prefix_id,
            cidr,
            service,
            request_id,
        } = new;
        // A retry is answered before anything else: the prefix may be gone by now.
        if let Some(request_id) = request_id
            && let Some(first) = self.requests.get(account_id, request_id)
        {
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
            id,
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
}

/// A PROVISIONING binding turning ACTIVE: the one event the built-in rollout and an external
/// provisioner both append.
fn activation(binding: &Binding, now: Micros) -> Decision {
    let mut binding = binding.clone();
    binding.state = ProvisioningState::Active;
    binding.modified_at = now;
    Decision::one(
        Change::BindingProvisioningStateChanged(binding.clone()),
        Outcome::Binding(binding),
    )
}
