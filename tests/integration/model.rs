//! A model-based test of the rules: proptest generates sequences of prefix and binding
//! creates and deletes, lookups and restarts, runs each against the real server and against a
//! small, obviously correct model (lists of prefixes and bindings, longest match by brute
//! force), and compares every outcome: success, or the error's reason; for lookups, the
//! binding found. Shrunk failures are kept by proptest in `tests/proptest-regressions/model.txt`
//! and replayed first on every run (the one there was found by a deliberately wrong model:
//! Magic Transit layered over Magic Transit).

use std::net::IpAddr;

use ipam_bindings::pb::api;
use ipnet::IpNet;
use proptest::prelude::*;
use tonic::Code;

use crate::common::*;

const ACCOUNTS: [&str; 2] = ["0000000000000000000000000000000a", "0000000000000000000000000000000b"];
const PREFIXES: [&str; 6] = [
    "10.0.0.0/24",
    "10.0.0.0/23",
    "10.0.1.0/24",
    "10.0.2.0/24",
    "2001:db8::/48",
    "2001:db8::/47",
];
const CIDRS: [&str; 14] = [
    "10.0.0.0/23",
    "10.0.0.0/24",
    "10.0.0.0/25",
    "10.0.0.128/25",
    "10.0.0.0/26",
    "10.0.1.0/24",
    "10.0.1.0/25",
    "10.0.2.0/24",
    "10.0.2.0/25",
    "2001:db8::/47",
    "2001:db8::/48",
    "2001:db8::/49",
    "2001:db8:1::/48",
    "2001:db8::/64",
];
const ADDRESSES: [&str; 8] = [
    "10.0.0.1",
    "10.0.0.130",
    "10.0.1.5",
    "10.0.2.200",
    "10.0.3.1",
    "2001:db8::1",
    "2001:db8:1::1",
    "2001:db8::1:0:0:1",
];
const SERVICES: [&str; 3] = [MAGIC_TRANSIT, CDN, SPECTRUM];

#[derive(Clone, Debug)]
enum Op {
    CreatePrefix {
        account: usize,
        cidr: usize,
    },
    DeletePrefix {
        account: usize,
        slot: usize,
    },
    /// `inside`: the CIDR is picked among those inside the prefix (most are), else from all.
    CreateBinding {
        account: usize,
        slot: usize,
        cidr: usize,
        inside: bool,
        service: usize,
    },
    DeleteBinding {
        account: usize,
        slot: usize,
    },
    Lookup {
        address: usize,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0..2usize, 0..PREFIXES.len()).prop_map(|(account, cidr)| Op::CreatePrefix { account, cidr }),
        1 => (0..2usize, 0..8usize).prop_map(|(account, slot)| Op::DeletePrefix { account, slot }),
        8 => (0..2usize, 0..8usize, 0..CIDRS.len(), prop::bool::weighted(0.85), 0..3usize)
            .prop_map(|(account, slot, cidr, inside, service)| Op::CreateBinding { account, slot, cidr, inside, service }),
        2 => (0..2usize, 0..16usize).prop_map(|(account, slot)| Op::DeleteBinding { account, slot }),
        3 => (0..ADDRESSES.len()).prop_map(|address| Op::Lookup { address }),
        1 => Just(Op::Restart),
    ]
}

struct ModelPrefix {
    id: String,
    account: usize,
    cidr: IpNet,
    live: bool,
}

struct ModelBinding {
    id: String,
    prefix: usize,
    cidr: IpNet,
    service: usize,
    live: bool,
}

#[derive(Default)]
struct Model {
    prefixes: Vec<ModelPrefix>,
    bindings: Vec<ModelBinding>,
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

fn may_layer(service: usize, over: usize) -> bool {
    matches!(
        (SERVICES[over], SERVICES[service]),
        (MAGIC_TRANSIT, CDN | SPECTRUM) | (CDN, SPECTRUM) | (SPECTRUM, CDN)
    )
}

impl Model {
    fn live_bindings(&self, prefix: usize) -> impl Iterator<Item = &ModelBinding> {
        self.bindings.iter().filter(move |b| b.live && b.prefix == prefix)
    }

    /// The prefix at `slot` as `account` sees it: `None` when missing, deleted or foreign.
    fn prefix_of(&self, account: usize, slot: usize) -> Option<usize> {
        (slot < self.prefixes.len())
            .then_some(slot)
            .filter(|&index| self.prefixes[index].live && self.prefixes[index].account == account)
    }

    fn create_prefix(&self, cidr: &IpNet) -> Result<(), &'static str> {
        if self.prefixes.iter().any(|p| p.live && overlaps(&p.cidr, cidr)) {
            return Err("PREFIX_OVERLAPS");
        }
        Ok(())
    }

    fn create_binding(&self, account: usize, slot: usize, cidr: &IpNet, service: usize) -> Result<(), &'static str> {
        let index = self.prefix_of(account, slot).ok_or("PREFIX_NOT_FOUND")?;
        let prefix = &self.prefixes[index].cidr;
        if prefix.addr().is_ipv4() != cidr.addr().is_ipv4() {
            return Err("CIDR_FAMILY_MISMATCH");
        }
        if !prefix.contains(cidr) {
            return Err("CIDR_OUTSIDE_PREFIX");
        }
        let Some(wide) = self.live_bindings(index).find(|b| b.cidr == *prefix) else {
            return if cidr == prefix {
                Ok(())
            } else {
                Err("FIRST_BINDING_MUST_COVER_PREFIX")
            };
        };
        if self.live_bindings(index).any(|b| b.cidr == *cidr) {
            return Err("BINDING_ALREADY_EXISTS");
        }
        if !may_layer(service, wide.service) {
            return Err("SERVICE_LAYERING_NOT_ALLOWED");
        }
        Ok(())
    }

    fn delete_binding(&self, account: usize, slot: usize) -> Result<(), &'static str> {
        let binding = &self.bindings[slot];
        self.prefix_of(account, binding.prefix).ok_or("PREFIX_NOT_FOUND")?;
        if !binding.live {
            return Err("BINDING_NOT_FOUND");
        }
        let prefix = &self.prefixes[binding.prefix].cidr;
        if binding.cidr == *prefix && self.live_bindings(binding.prefix).count() > 1 {
            return Err("PREFIX_WIDE_BINDING_IN_USE");
        }
        Ok(())
    }

    fn delete_prefix(&self, account: usize, slot: usize) -> Result<(), &'static str> {
        let index = self.prefix_of(account, slot).ok_or("PREFIX_NOT_FOUND")?;
        if self.live_bindings(index).next().is_some() {
            return Err("PREFIX_HAS_BINDINGS");
        }
        Ok(())
    }

    /// The covering prefix's id and the most specific binding's id, by brute force.
    fn lookup(&self, address: IpAddr) -> Option<(String, Option<String>)> {
        let (index, prefix) = self
            .prefixes
            .iter()
            .enumerate()
            .find(|(_, p)| p.live && p.cidr.contains(&address))?;
        let binding = (self.live_bindings(index))
            .filter(|b| b.cidr.contains(&address))
            .max_by_key(|b| b.cidr.prefix_len())
            .map(|b| b.id.clone());
        Some((prefix.id.clone(), binding))
    }
}

fn reason(status: &tonic::Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_else(|| format!("{status:?}"))
}

fn outcome<T>(result: &Result<T, tonic::Status>) -> Result<(), String> {
    result.as_ref().map(drop).map_err(reason)
}

async fn run(ops: Vec<Op>) {
    let mut server = TestServer::start().await;
    let mut model = Model::default();
    for op in ops {
        match op {
            Op::CreatePrefix { account, cidr } => {
                let cidr_net: IpNet = PREFIXES[cidr].parse().unwrap();
                let expected = model.create_prefix(&cidr_net).map_err(String::from);
                let result = server.try_create_prefix(ACCOUNTS[account], PREFIXES[cidr]).await;
                assert_eq!(outcome(&result), expected, "{op:?}");
                if let Ok(prefix) = result {
                    model.prefixes.push(ModelPrefix {
                        id: prefix.id,
                        account,
                        cidr: cidr_net,
                        live: true,
                    });
                }
            }
            Op::DeletePrefix { account, slot } => {
                if model.prefixes.is_empty() {
                    continue;
                }
                let slot = slot % model.prefixes.len();
                let expected = model.delete_prefix(account, slot).map_err(String::from);
                let request = api::DeletePrefixRequest {
                    account_id: ACCOUNTS[account].into(),
                    prefix_id: model.prefixes[slot].id.clone(),
                    validate_only: false,
                };
                let result = server.prefixes().delete_prefix(request).await;
                assert_eq!(outcome(&result), expected, "{op:?}");
                if result.is_ok() {
                    model.prefixes[slot].live = false;
                }
            }
            Op::CreateBinding {
                account,
                slot,
                cidr,
                inside,
                service,
            } => {
                if model.prefixes.is_empty() {
                    continue;
                }
                let slot = slot % model.prefixes.len();
                let prefix = model.prefixes[slot].cidr;
                let within: Vec<&str> = CIDRS
                    .iter()
                    .copied()
                    .filter(|c| prefix.contains(&c.parse::<IpNet>().unwrap()))
                    .collect();
                let text = if inside && !within.is_empty() {
                    within[cidr % within.len()]
                } else {
                    CIDRS[cidr]
                };
                let cidr_net: IpNet = text.parse().unwrap();
                let expected = model
                    .create_binding(account, slot, &cidr_net, service)
                    .map_err(String::from);
                let request = api::CreateServiceBindingRequest {
                    account_id: ACCOUNTS[account].into(),
                    prefix_id: model.prefixes[slot].id.clone(),
                    cidr: text.into(),
                    service_id: SERVICES[service].into(),
                    ..Default::default()
                };
                let result = server.bindings().create_service_binding(request).await;
                assert_eq!(outcome(&result), expected, "{op:?}");
                if let Ok(binding) = result {
                    let binding = binding.into_inner();
                    model.bindings.push(ModelBinding {
                        id: binding.id,
                        prefix: slot,
                        cidr: cidr_net,
                        service,
                        live: true,
                    });
                }
            }
            Op::DeleteBinding { account, slot } => {
                if model.bindings.is_empty() {
                    continue;
                }
                let slot = slot % model.bindings.len();
                let expected = model.delete_binding(account, slot).map_err(String::from);
                let binding = &model.bindings[slot];
                let request = api::DeleteServiceBindingRequest {
                    account_id: ACCOUNTS[account].into(),
                    prefix_id: model.prefixes[binding.prefix].id.clone(),
                    binding_id: binding.id.clone(),
                    validate_only: false,
                };
                let result = server.bindings().delete_service_binding(request).await;
                assert_eq!(outcome(&result), expected, "{op:?}");
                if result.is_ok() {
                    model.bindings[slot].live = false;
                }
            }
            Op::Lookup { address } => {
                let address_ip: IpAddr = ADDRESSES[address].parse().unwrap();
                let request = api::LookupAddressRequest {
                    address: ADDRESSES[address].into(),
                    active_only: false,
                };
                let result = server.routing().lookup_address(request).await;
                match model.lookup(address_ip) {
                    None => {
                        let status = result.unwrap_err();
                        assert_eq!(
                            (status.code(), reason(&status).as_str()),
                            (Code::NotFound, "ADDRESS_NOT_COVERED")
                        );
                    }
                    Some((prefix_id, binding_id)) => {
                        let found = result.unwrap().into_inner();
                        assert_eq!(found.prefix_id, prefix_id, "{op:?}");
                        assert_eq!(found.binding.map(|b| b.id), binding_id, "{op:?}");
                    }
                }
            }
            Op::Restart => server = server.restart().await,
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn the_server_follows_the_model(ops in prop::collection::vec(op(), 1..40)) {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
            .block_on(run(ops));
    }
}
