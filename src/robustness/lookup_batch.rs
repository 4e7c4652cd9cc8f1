//! The batch lookup's answers (FULL, COMPACT, and the unary answer from the same routes)
//! checked against the one-address path, on a routing model and a batch both built from the
//! fuzz input.

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};

use ipnet::IpNet;
use prost::Message;
use uuid::Uuid;

use super::contract;
use crate::api::lookup::{self, RouteCache, View};
use crate::api::wire::{Decoded, LookupAddressesResponse};
use crate::domain::{AccountId, BindingId, Command, Micros, Outcome, Prefix, PrefixId, Service, fields};
use crate::pb::api;
use crate::projection::ReadModel;

/// LookupAddresses' hand-written encoder, on a routing table and a batch both built from the
/// input (prefixes and bindings through the real rules, addresses inside and outside them in
/// several spellings). Accepted batches: the FULL answer decodes with prost to exactly the
/// message of the one-address path for each address (`resolve`, a whole `LookupAddressResult`
/// built field by field), whether its routes were encoded fresh or taken from the cache; the
/// COMPACT answer says the same ([`compact_says_what_full_says`]); the unary answer written from
/// the same routes is prost's encoding of the contract's message with those fields.
pub fn lookup_batch(data: &[u8]) {
    ROUTING_MODEL.with_borrow_mut(|model| {
        let mut input = Input(data);
        let created = build_routing_model(model, &mut input);
        check_batch(model, &created, &mut input);
        clear_routing_model(model, created);
    });
}

thread_local! {
    /// One read model for every input of a fuzzing process (its tables and route cache are
    /// made once, not per input). Each input starts from an empty model and leaves it empty.
    static ROUTING_MODEL: RefCell<ReadModel> = RefCell::default();
}

/// What one input created in the shared model.
struct Created {
    prefixes: Vec<Prefix>,
    bindings: Vec<BindingId>,
}

fn check_batch(model: &ReadModel, created: &Created, input: &mut Input) {
    let active_only = input.byte() & 1 == 1;
    let cidrs: Vec<IpNet> = created.prefixes.iter().map(|prefix| prefix.cidr).collect();
    let texts = batch_addresses(input, &cidrs);
    let Ok(addresses) = fields::addresses("addresses", &texts) else {
        return;
    };
    let mut cache = RouteCache::default();
    let answer = |view, cached: &RouteCache, fresh: &mut RouteCache| {
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let response = lookup::answer(model, &texts, &addresses, active_only, view, cached, fresh);
        assert_eq!(response.len(), texts.len(), "one result per address");
        // As a client receives it.
        LookupAddressesResponse::decode(response.encode_to_vec().as_slice()).expect("the answer decodes")
    };
    let fresh_full = answer(View::Full, &RouteCache::default(), &mut cache);
    let cached_full = answer(View::Full, &cache, &mut RouteCache::default());
    let compact = answer(View::Compact, &cache, &mut RouteCache::default());
    let expected: Vec<_> = texts
        .iter()
        .zip(&addresses)
        .map(|(text, address)| {
            lookup::resolve(model, text, *address, active_only).unwrap_or_else(|| api::LookupAddressResult {
                address: text.clone(),
                ..Default::default()
            })
        })
        .collect();
    let decoded = Decoded::decode(fresh_full.encode_to_vec().as_slice()).expect("FULL decodes with prost");
    assert_eq!(decoded.results, expected, "FULL is the one-address answer");
    assert!(decoded.bindings.is_empty(), "FULL lists no bindings apart");
    assert_eq!(cached_full, fresh_full, "cached routes encode the same");
    compact_says_what_full_says(&texts, &compact, &expected);
    for (text, address) in texts.iter().zip(&addresses) {
        let whole = lookup::resolve(model, text, *address, active_only).map(|result| {
            contract::LookupAddressResponse {
                address: result.address,
                prefix_id: result.prefix_id,
                account_id: result.account_id,
                binding: result.binding,
            }
            .encode_to_vec()
        });
        for cached in [&RouteCache::default(), &cache] {
            let unary = lookup::answer_one(model, text, *address, active_only, cached, &mut RouteCache::default());
            assert_eq!(
                unary.map(|answer| answer.encode_to_vec()),
                whole,
                "the unary answer of {text:?} is the contract's message"
            );
        }
    }
}

/// A COMPACT answer to `addresses` against the FULL one's results: no address echoed and no
/// binding inline, a binding index exactly where a binding was found, every listed binding
/// listed once and pointed to, and written out as FULL (`results_for`), the same results.
pub fn compact_says_what_full_says(
    addresses: &[String],
    compact: &LookupAddressesResponse,
    full: &[api::LookupAddressResult],
) {
    let results = compact.results().expect("COMPACT results decode");
    let bindings = compact.bindings().expect("COMPACT bindings decode");
    let mut pointed = vec![false; bindings.len()];
    for result in &results {
        assert!(result.address.is_empty() && result.binding.is_none(), "{result:?}");
        assert_eq!(result.found, result.binding_index.is_some(), "{result:?}");
        if let Some(index) = result.binding_index {
            pointed[index as usize] = true;
        }
    }
    assert!(
        pointed.iter().all(|pointed| *pointed),
        "only matched bindings are listed"
    );
    let mut ids: Vec<&str> = bindings.iter().map(|binding| binding.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), bindings.len(), "each binding listed once");
    assert_eq!(
        compact.results_for(addresses).as_deref(),
        Ok(full),
        "COMPACT says what FULL says"
    );
}

/// Reads an input front to back; past its end every byte is 0.
struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (first, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        *first
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.byte())
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Up to 24 commands decided by the real rules (refusals skipped) on an empty model: prefixes
/// of three accounts in both families, bindings inside them, activations and deletions.
fn build_routing_model(model: &mut ReadModel, input: &mut Input) -> Created {
    assert_eq!(
        (model.state.n_prefixes(), model.state.n_bindings()),
        (0, 0),
        "starts empty"
    );
    let mut created = Created {
        prefixes: Vec::new(),
        bindings: Vec::new(),
    };
    for _ in 0..input.byte() % 25 {
        let pick = |list_len: usize, byte: u8| (list_len > 0).then(|| usize::from(byte) % list_len);
        let command = match input.byte() % 4 {
            0 => {
                let cidr = if input.byte() & 1 == 0 {
                    IpNet::new(Ipv4Addr::from(input.bytes::<4>()).into(), 16 + input.byte() % 9)
                } else {
                    let top: [u8; 6] = input.bytes();
                    let mut octets = [0; 16];
                    octets[..6].copy_from_slice(&top);
                    IpNet::new(Ipv6Addr::from(octets).into(), 32 + input.byte() % 17)
                };
                Command::CreatePrefix {
                    id: PrefixId(fresh_id()),
                    account_id: AccountId(Uuid::from_u128(1 + u128::from(input.byte() % 3))),
                    cidr: cidr
                        .map(|cidr| cidr.trunc())
                        .unwrap_or_else(|_| "192.0.2.0/24".parse().unwrap()),
                    asn: None,
                    description: String::new(),
                }
            }
            1 => {
                let Some(index) = pick(created.prefixes.len(), input.byte()) else {
                    continue;
                };
                let prefix = &created.prefixes[index];
                let longest = if prefix.cidr.addr().is_ipv4() { 32 } else { 128 };
                let length = prefix.cidr.prefix_len() + input.byte() % (longest - prefix.cidr.prefix_len() + 1);
                let cidr = IpNet::new(within(prefix.cidr, input.bytes()), length).map(|cidr| cidr.trunc());
                Command::CreateBinding {
                    id: BindingId(fresh_id()),
                    account_id: prefix.account_id,
                    prefix_id: prefix.id,
                    cidr: cidr.unwrap_or(prefix.cidr),
                    service: Service::ALL[usize::from(input.byte()) % Service::ALL.len()],
                    request_id: None,
                }
            }
            2 => {
                let Some(index) = pick(created.bindings.len(), input.byte()) else {
                    continue;
                };
                Command::ActivateBinding {
                    binding_id: created.bindings[index],
                }
            }
            _ => {
                let Some(index) = pick(created.bindings.len(), input.byte()) else {
                    continue;
                };
                let Some(binding) = model.state.binding_by_id(created.bindings[index]) else {
                    continue;
                };
                Command::DeleteBinding {
                    account_id: binding.account_id,
                    prefix_id: binding.prefix_id,
                    binding_id: binding.id,
                }
            }
        };
        match apply(model, &command) {
            Some(Outcome::Prefix(prefix)) => created.prefixes.push(prefix),
            Some(Outcome::Binding(binding)) => created.bindings.push(binding.id),
            _ => {}
        }
    }
    created
}

/// Deletes what `created` left (the most specific bindings first, then the prefixes).
fn clear_routing_model(model: &mut ReadModel, created: Created) {
    let mut live: Vec<(u8, BindingId)> = created
        .bindings
        .iter()
        .filter_map(|id| model.state.binding_by_id(*id))
        .map(|binding| (binding.cidr.prefix_len(), binding.id))
        .collect();
    live.sort_unstable_by(|a, b| b.cmp(a));
    for (_, binding_id) in live {
        let Some(binding) = model.state.binding_by_id(binding_id) else {
            continue;
        };
        let command = Command::DeleteBinding {
            account_id: binding.account_id,
            prefix_id: binding.prefix_id,
            binding_id,
        };
        apply(model, &command);
    }
    for prefix in created.prefixes {
        let command = Command::DeletePrefix {
            account_id: prefix.account_id,
            prefix_id: prefix.id,
        };
        apply(model, &command);
    }
    assert_eq!(
        (model.state.n_prefixes(), model.state.n_bindings()),
        (0, 0),
        "left empty"
    );
}

/// Decides `command` and applies its events; `None` if the rules refused it.
fn apply(model: &mut ReadModel, command: &Command) -> Option<Outcome> {
    let now = Micros(i64::try_from(model.head).unwrap_or(i64::MAX));
    model.decide_and_apply(command, now).ok()
}

/// Ids never reused within a process (a deleted binding's id stays taken).
fn fresh_id() -> Uuid {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    Uuid::from_u128(u128::from(NEXT.fetch_add(1, Ordering::Relaxed)) << 64)
}

/// The address `offset` points to inside `cidr` (its bits below the prefix length).
fn within(cidr: IpNet, offset: [u8; 16]) -> IpAddr {
    match cidr {
        IpNet::V4(net) => {
            let offset = u32::from_be_bytes([offset[0], offset[1], offset[2], offset[3]]);
            Ipv4Addr::from(u32::from(net.network()) | (offset & u32::from(net.hostmask()))).into()
        }
        IpNet::V6(net) => {
            let offset = u128::from_be_bytes(offset);
            Ipv6Addr::from(u128::from(net.network()) | (offset & u128::from(net.hostmask()))).into()
        }
    }
}

/// Up to 64 addresses: inside the model's prefixes (in canonical, IPv4-mapped or expanded
/// spelling), anywhere, or any text.
fn batch_addresses(input: &mut Input, prefixes: &[IpNet]) -> Vec<String> {
    let mut texts = Vec::new();
    while !input.is_empty() && texts.len() < 64 {
        let choice = input.byte();
        let inside = (!prefixes.is_empty()).then(|| prefixes[usize::from(input.byte()) % prefixes.len()]);
        let address = match inside {
            Some(cidr) if !choice.is_multiple_of(8) => within(cidr, input.bytes()),
            _ => IpAddr::from(input.bytes::<16>()).to_canonical(),
        };
        let text = match (choice >> 3) % 4 {
            0 => address.to_string(),
            1 => match address {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().to_string(),
                IpAddr::V6(v6) => v6.to_string().to_uppercase(),
            },
            2 => match address {
                IpAddr::V4(v4) => format!("::ffff:{v4}"),
                IpAddr::V6(v6) => v6.segments().map(|segment| format!("{segment:04x}")).join(":"),
            },
            _ => {
                let length = usize::from(input.byte() % 48);
                let raw: Vec<u8> = (0..length).map(|_| input.byte()).collect();
                String::from_utf8_lossy(&raw).into_owned()
            }
        };
        texts.push(text);
    }
    texts
}
