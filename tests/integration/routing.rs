//! Routing: longest-prefix match through the real server, checked against the seed's example,
//! nesting, IPv6, IPv4-mapped addresses, active_only, malformed input, a randomized comparison
//! with a brute-force reference, and lookups during a storm of writes.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ipam_bindings::pb::api;
use ipam_bindings::robustness::compact_says_what_full_says;
use ipnet::IpNet;
use tonic::Code;

use crate::common::*;

async fn lookup(
    server: &TestServer,
    address: &str,
    active_only: bool,
) -> Result<api::LookupAddressResponse, tonic::Status> {
    let request = api::LookupAddressRequest {
        address: address.into(),
        active_only,
    };
    server.routing().lookup_address(request).await.map(|r| r.into_inner())
}

async fn lookup_batch(
    server: &TestServer,
    addresses: Vec<String>,
    active_only: bool,
) -> Result<Vec<api::LookupAddressResult>, tonic::Status> {
    let full = api::LookupAddressesRequest::new(&addresses, active_only, api::LookupView::Unspecified);
    let full = server.routing().lookup_addresses(full).await?.into_inner();
    let compact = api::LookupAddressesRequest::new(&addresses, active_only, api::LookupView::Compact);
    let compact = server.routing().lookup_addresses(compact).await?.into_inner();
    let results = full.results().unwrap();
    assert!(full.bindings().unwrap().is_empty(), "FULL lists no bindings apart");
    compact_says_what_full_says(&addresses, &compact, &results);
    Ok(results)
}

async fn service_of(server: &TestServer, address: &str) -> Option<String> {
    lookup(server, address, false)
        .await
        .unwrap()
        .binding
        .map(|b| b.service_name)
}

/// The seed example's bindings: Magic Transit across 192.0.2.0/24, CDN on 192.0.2.1/32.
async fn seed_example(server: &TestServer) -> (api::Prefix, api::ServiceBinding, api::ServiceBinding) {
    let prefix = server.create_prefix(&account(), "192.0.2.0/24").await;
    let wide = server.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await;
    let narrow = server.bind(&prefix, "192.0.2.1/32", CDN).await;
    (prefix, wide, narrow)
}

#[tokio::test]
async fn the_seed_example() {
    let server = TestServer::start().await;
    let (prefix, ..) = seed_example(&server).await;
    assert_eq!(service_of(&server, "192.0.2.1").await.as_deref(), Some("CDN"));
    for other in ["192.0.2.0", "192.0.2.2", "192.0.2.255"] {
        assert_eq!(
            service_of(&server, other).await.as_deref(),
            Some("Magic Transit"),
            "{other}"
        );
    }
    let found = lookup(&server, "192.0.2.1", false).await.unwrap();
    assert_eq!(
        (found.prefix_id, found.account_id, found.address),
        (prefix.id, prefix.account_id, "192.0.2.1".to_string())
    );
}

#[tokio::test]
async fn nested_three_deep_ipv6_and_mapped_addresses() {
    let server = TestServer::start().await;
    let v4 = server.create_prefix(&account(), "198.51.100.0/24").await;
    server.bind(&v4, "198.51.100.0/24", MAGIC_TRANSIT).await;
    server.bind(&v4, "198.51.100.0/25", CDN).await;
    server.bind(&v4, "198.51.100.0/26", SPECTRUM).await;
    server.bind(&v4, "198.51.100.7/32", CDN).await;
    // address asked -> the CIDR of the most specific binding that holds it
    for (address, cidr) in [
        ("198.51.100.7", "198.51.100.7/32"),
        ("198.51.100.8", "198.51.100.0/26"),
        ("198.51.100.100", "198.51.100.0/25"),
        ("198.51.100.200", "198.51.100.0/24"),
        ("::ffff:198.51.100.7", "198.51.100.7/32"),
    ] {
        let found = lookup(&server, address, false).await.unwrap();
        assert_eq!(found.binding.unwrap().cidr, cidr, "{address}");
    }
    assert_eq!(service_of(&server, "198.51.100.7").await.as_deref(), Some("CDN"));

    let v6 = server.create_prefix(&account(), "2001:db8:abcd::/48").await;
    server.bind(&v6, "2001:db8:abcd::/48", CDN).await;
    server.bind(&v6, "2001:db8:abcd:12::/64", SPECTRUM).await;
    for (address, service) in [
        ("2001:DB8:ABCD:12::1", "Spectrum"),
        ("2001:db8:abcd:0012:0000:0000:0000:0001", "Spectrum"),
        ("2001:db8:abcd:13::1", "CDN"),
    ] {
        assert_eq!(
            service_of(&server, address).await.as_deref(),
            Some(service),
            "{address}"
        );
    }
}

#[tokio::test]
async fn uncovered_unbound_and_malformed_addresses() {
    let server = TestServer::start().await;
    let prefix = server.create_prefix(&account(), "203.0.113.0/24").await;
    let status = lookup(&server, "203.0.114.1", false).await.unwrap_err();
    assert_error(&status, Code::NotFound, "ADDRESS_NOT_COVERED", 1105, Some("address"));
    // Inside the prefix, but no binding yet: OK with the prefix and no binding.
    let unbound = lookup(&server, "203.0.113.9", false).await.unwrap();
    assert_eq!(unbound.prefix_id, prefix.id);
    assert_eq!(unbound.binding, None);
    for bad in [
        "",
        "203.0.113",
        "203.0.113.0/24",
        "1.2.3.4.5",
        "gggg::1",
        " 203.0.113.1",
    ] {
        let status = lookup(&server, bad, false).await.unwrap_err();
        assert_error(&status, Code::InvalidArgument, "INVALID_ADDRESS", 1016, Some("address"));
    }

    server.bind(&prefix, "203.0.113.0/24", CDN).await;
    let addresses = vec!["203.0.113.1".into(), "8.8.8.8".into(), "2001:db8::1".into()];
    let results = lookup_batch(&server, addresses, false).await.unwrap();
    assert_eq!(results.len(), 3);
    assert!(results[0].found && results[0].prefix_id == prefix.id);
    assert!(!results[1].found && results[1].prefix_id.is_empty() && results[1].binding.is_none());
    assert_eq!(results[2].address, "2001:db8::1");

    assert!(lookup_batch(&server, vec![], true).await.unwrap().is_empty());
    let one_bad = vec!["203.0.113.1".into(), "203.0.113.2".into(), "nope".into()];
    let status = lookup_batch(&server, one_bad, false).await.unwrap_err();
    assert_error(
        &status,
        Code::InvalidArgument,
        "INVALID_ADDRESS",
        1016,
        Some("addresses[2]"),
    );
    let too_many = vec!["203.0.113.1".into(); 10_001];
    let status = lookup_batch(&server, too_many, false).await.unwrap_err();
    assert_error(
        &status,
        Code::InvalidArgument,
        "TOO_MANY_ADDRESSES",
        1017,
        Some("addresses"),
    );
    let at_limit = vec!["203.0.113.1".into(); 10_000];
    assert_eq!(lookup_batch(&server, at_limit, false).await.unwrap().len(), 10_000);
}

/// COMPACT: each matched binding once, in order of first match, results pointing into them;
/// an unknown view is refused naming the field.
#[tokio::test]
async fn the_compact_view_lists_each_binding_once() {
    let server = TestServer::start().await;
    let (_, wide, narrow) = seed_example(&server).await;
    let unbound = server.create_prefix(&account(), "198.51.100.0/24").await;
    let addresses: Vec<String> = [
        "192.0.2.1",
        "192.0.2.7",
        "198.51.100.1",
        "192.0.2.1",
        "192.0.2.9",
        "8.8.8.8",
    ]
    .map(String::from)
    .to_vec();
    let request = api::LookupAddressesRequest::new(&addresses, false, api::LookupView::Compact);
    let response = server.routing().lookup_addresses(request).await.unwrap().into_inner();
    let bindings: Vec<String> = response.bindings().unwrap().into_iter().map(|b| b.id).collect();
    assert_eq!(bindings, [narrow.id, wide.id]);
    let results = response.results().unwrap();
    let indexes: Vec<Option<i32>> = results.iter().map(|result| result.binding_index).collect();
    assert_eq!(indexes, [Some(0), Some(1), None, Some(0), Some(1), None]);
    assert_eq!(results[2].prefix_id, unbound.id);
    assert!(results[5].prefix_id.is_empty() && !results[5].found);
    // The same through the FULL view, result by result.
    let full = lookup_batch(&server, addresses.clone(), false).await.unwrap();
    compact_says_what_full_says(&addresses, &response, &full);

    let mut unknown = api::LookupAddressesRequest::new(["192.0.2.1"], false, api::LookupView::Unspecified);
    unknown.view = 7;
    let status = server.routing().lookup_addresses(unknown).await.unwrap_err();
    assert_error(&status, Code::InvalidArgument, "MALFORMED_REQUEST", 1019, Some("view"));
}

const LOOKUP_ADDRESS: &str = "/addressing.v1.Routing/LookupAddress";
const LOOKUP_ADDRESSES: &str = "/addressing.v1.Routing/LookupAddresses";

/// The batch answer is served outside tonic's encoder (in the buffers it was written in):
/// its bytes are the message a generated client decodes, in both views.
#[tokio::test]
async fn the_batch_answer_is_the_contracts_message_byte_for_byte() {
    let server = TestServer::start().await;
    seed_example(&server).await;
    let addresses = ["192.0.2.1", "192.0.2.9", "8.8.8.8", "2001:db8::1"];
    for view in [api::LookupView::Unspecified, api::LookupView::Compact] {
        let request = api::LookupAddressesRequest::new(addresses, false, view);
        let raw_request = tonic::Request::new(prost::Message::encode_to_vec(&request));
        let raw = raw_call(&server, LOOKUP_ADDRESSES, raw_request)
            .await
            .unwrap()
            .into_inner();
        let typed = server.routing().lookup_addresses(request).await.unwrap().into_inner();
        assert_eq!(raw, prost::Message::encode_to_vec(&typed), "{view:?}");
        let decoded = <api::LookupAddressesResponse as prost::Message>::decode(raw.as_slice()).unwrap();
        let texts = addresses.map(String::from);
        let services: Vec<Option<String>> = (decoded.results_for(&texts).unwrap().into_iter())
            .map(|result| result.binding.map(|binding| binding.service_id))
            .collect();
        let bound = |service: &str| Some(service.to_string());
        assert_eq!(services, [bound(CDN), bound(MAGIC_TRANSIT), None, None], "{view:?}");
    }
}

/// The unary lookup's answer is served outside tonic's encoder too (one buffer from the route
/// cache to HTTP/2): its bytes are the message a generated client decodes, with the call's
/// headers, and an address no prefix covers is refused as through the generated server.
#[tokio::test]
async fn the_unary_answer_is_the_contracts_message_byte_for_byte() {
    let server = TestServer::start().await;
    let (prefix, ..) = seed_example(&server).await;
    for (address, service) in [("192.0.2.1", Some(CDN)), ("192.0.2.9", Some(MAGIC_TRANSIT))] {
        let request = api::LookupAddressRequest {
            address: address.into(),
            active_only: false,
        };
        let mut raw_request = tonic::Request::new(prost::Message::encode_to_vec(&request));
        raw_request
            .metadata_mut()
            .insert("x-request-id", "unary-answer".parse().unwrap());
        let answer = raw_call(&server, LOOKUP_ADDRESS, raw_request).await.unwrap();
        assert_eq!(answer.metadata().get("x-request-id").unwrap(), "unary-answer");
        assert!(
            answer.metadata().get("x-ipam-revision").is_some(),
            "{:?}",
            answer.metadata()
        );
        let raw = answer.into_inner();
        let typed = server.routing().lookup_address(request).await.unwrap().into_inner();
        assert_eq!(raw, prost::Message::encode_to_vec(&typed), "{address}");
        // Both sides above come through the same server path; the contract's message as prost
        // generates it checks the bytes apart from this crate's hand-written decoder.
        let contract =
            <ipam_bindings::robustness::contract::LookupAddressResponse as prost::Message>::decode(raw.as_slice())
                .unwrap();
        assert_eq!(prost::Message::encode_to_vec(&contract), raw, "{address}");
        assert_eq!(contract.binding.map(|binding| binding.service_id).as_deref(), service);
        let decoded = <api::LookupAddressResponse as prost::Message>::decode(raw.as_slice()).unwrap();
        assert_eq!(
            (decoded.address.as_str(), decoded.prefix_id.as_str()),
            (address, prefix.id.as_str())
        );
        assert_eq!(decoded.binding.map(|binding| binding.service_id).as_deref(), service);
    }

    // An address not covered is the same refusal as through the generated client.
    let request = api::LookupAddressRequest {
        address: "8.8.8.8".into(),
        active_only: false,
    };
    let raw_request = tonic::Request::new(prost::Message::encode_to_vec(&request));
    let status = raw_call(&server, LOOKUP_ADDRESS, raw_request).await.unwrap_err();
    assert_error(&status, Code::NotFound, "ADDRESS_NOT_COVERED", 1105, Some("address"));
}

/// Both lookups, served outside tonic's generated server, refuse what it refuses: a request
/// that is not the contract's message (a string field not UTF-8, named), or comes compressed.
#[tokio::test]
async fn both_lookups_refuse_malformed_and_compressed_requests_as_tonic_does() {
    let server = TestServer::start().await;
    for (method, field) in [(LOOKUP_ADDRESS, "address"), (LOOKUP_ADDRESSES, "addresses")] {
        // The field (1) that is not UTF-8.
        let not_utf8 = tonic::Request::new(vec![0x0a, 0x02, 0xff, 0xfe]);
        let status = raw_call(&server, method, not_utf8).await.unwrap_err();
        assert_error(&status, Code::InvalidArgument, "MALFORMED_REQUEST", 1019, Some(field));

        let mut compressed = tonic::Request::new(Vec::new());
        compressed
            .metadata_mut()
            .insert("grpc-encoding", "gzip".parse().unwrap());
        let status = raw_call(&server, method, compressed).await.unwrap_err();
        assert_eq!(status.code(), Code::Unimplemented, "{method}: {status:?}");
        assert_eq!(status.metadata().get("grpc-accept-encoding").unwrap(), "identity");
    }
}

#[tokio::test]
async fn active_only_sees_bindings_once_the_rollout_activates_them() {
    // Nothing activates within the test on this server...
    let slow = TestServer::start().await;
    let prefix = slow.create_prefix(&account(), "192.0.2.0/24").await;
    slow.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await;
    let pending = lookup(&slow, "192.0.2.1", true).await.unwrap();
    assert_eq!(
        (pending.prefix_id.as_str(), pending.binding.is_none()),
        (prefix.id.as_str(), true)
    );
    assert!(lookup(&slow, "192.0.2.1", false).await.unwrap().binding.is_some());

    // ...and everything activates at once on this one.
    let fast = TestServer::start_with_delay(Duration::ZERO).await;
    let prefix = fast.create_prefix(&account(), "192.0.2.0/24").await;
    fast.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let answer = lookup(&fast, "192.0.2.1", true).await.unwrap();
        if let Some(binding) = answer.binding {
            assert_eq!(
                binding.provisioning.unwrap().state,
                api::ProvisioningState::Active as i32
            );
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "binding never turned ACTIVE");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The reference: the most specific of `bindings` containing the address, by brute force.
fn brute_force(bindings: &[(IpNet, String)], address: IpAddr) -> Option<String> {
    bindings
        .iter()
        .filter(|(net, _)| net.contains(&address))
        .max_by_key(|(net, _)| net.prefix_len())
        .map(|(_, id)| id.clone())
}

fn random_address_in(rng: &mut fastrand::Rng, net: &IpNet) -> IpAddr {
    match net {
        IpNet::V4(v4) => {
            let host_bits = 32 - u32::from(v4.prefix_len());
            let offset = if host_bits == 0 {
                0
            } else {
                rng.u32(..) & (u32::MAX >> (32 - host_bits))
            };
            IpAddr::from(std::net::Ipv4Addr::from(u32::from(v4.network()) | offset))
        }
        IpNet::V6(v6) => {
            let host_bits = 128 - u32::from(v6.prefix_len());
            let offset = if host_bits == 0 {
                0
            } else {
                rng.u128(..) & (u128::MAX >> (128 - host_bits))
            };
            IpAddr::from(std::net::Ipv6Addr::from(u128::from(v6.network()) | offset))
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn randomized_lookups_match_a_brute_force_reference() {
    let server = TestServer::start().await;
    let mut rng = fastrand::Rng::with_seed(0x1ba5_u64);
    let mut prefixes = Vec::new();
    let mut bindings: Vec<(IpNet, String)> = Vec::new();
    for index in 0..6u32 {
        let cidr = if index % 2 == 0 {
            format!("10.{index}.0.0/16")
        } else {
            format!("2001:db8:{index:x}::/48")
        };
        let prefix = server.create_prefix(&account(), &cidr).await;
        let net: IpNet = prefix.cidr.parse().unwrap();
        bindings.push((net, server.bind(&prefix, &prefix.cidr, MAGIC_TRANSIT).await.id));
        for _ in 0..60 {
            let extra = rng.u8(1..=if net.addr().is_ipv4() { 16 } else { 80 });
            let len = net.prefix_len() + extra;
            let sub = IpNet::new(random_address_in(&mut rng, &net), len).unwrap().trunc();
            let service = if rng.bool() { CDN } else { SPECTRUM };
            if let Ok(binding) = server.try_bind(&prefix, &sub.to_string(), service).await {
                bindings.push((sub, binding.id));
            }
        }
        prefixes.push(net);
    }
    assert!(
        bindings.len() > 300,
        "the generator should create many distinct bindings"
    );

    let mut addresses = Vec::new();
    for _ in 0..5000 {
        // Mostly addresses inside a binding, some inside prefixes, some outside everything.
        let address = match rng.u8(0..10) {
            0 => IpAddr::from(std::net::Ipv4Addr::from(rng.u32(..))),
            1..=3 => {
                let net = prefixes[rng.usize(..prefixes.len())];
                random_address_in(&mut rng, &net)
            }
            _ => {
                let net = bindings[rng.usize(..bindings.len())].0;
                random_address_in(&mut rng, &net)
            }
        };
        addresses.push(address);
    }
    for chunk in addresses.chunks(1000) {
        let texts = chunk.iter().map(|a| a.to_string()).collect();
        let results = lookup_batch(&server, texts, false).await.unwrap();
        assert_eq!(results.len(), chunk.len());
        for (address, result) in chunk.iter().zip(results) {
            let expected = brute_force(&bindings, *address);
            assert_eq!(result.binding.map(|b| b.id), expected, "{address}");
            assert_eq!(result.found, expected.is_some());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lookups_stay_correct_during_a_storm_of_writes() {
    let server = Arc::new(TestServer::start().await);
    let prefix = server.create_prefix(&account(), "172.20.0.0/16").await;
    let wide = server.bind(&prefix, "172.20.0.0/16", MAGIC_TRANSIT).await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (server, prefix, stop) = (Arc::clone(&server), prefix.clone(), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut round = 0u32;
            while !stop.load(Ordering::Relaxed) && round < 2000 {
                let cidr = format!("172.20.{}.0/24", round % 256);
                let binding = server.bind(&prefix, &cidr, CDN).await;
                server.delete_binding(&binding).await.unwrap();
                round += 1;
            }
            round
        })
    };
    let mut n_lookups = 0;
    for i in 0..300 {
        let address = format!("172.20.{}.1", i % 256);
        let answer = lookup(&server, &address, false).await.unwrap();
        let binding = answer.binding.expect("the prefix-wide binding always matches");
        assert!(
            binding.id == wide.id || binding.cidr == format!("172.20.{}.0/24", i % 256),
            "{binding:?}"
        );
        n_lookups += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let rounds = writer.await.unwrap();
    assert!(rounds > 0 && n_lookups == 300);
}

/// Batch results reuse each binding's encoded answer; every change must still show at once.
#[tokio::test]
async fn batch_lookups_follow_every_change_of_a_binding() {
    let server = TestServer::start_with_delay(Duration::from_millis(300)).await;
    let prefix = server.create_prefix(&account(), "192.0.2.0/24").await;
    let wide = server.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await;
    let batch = |active_only: bool| {
        let addresses = vec!["192.0.2.1".into(), "192.0.2.2".into(), "192.0.2.1".into()];
        let server = &server;
        async move {
            let results = lookup_batch(server, addresses, active_only).await.unwrap();
            results
                .into_iter()
                .map(|result| {
                    let binding = result.binding.unwrap_or_default();
                    let state = binding.provisioning.map(|p| p.state).unwrap_or_default();
                    (result.address, binding.service_name, state)
                })
                .collect::<Vec<_>>()
        }
    };
    let provisioning = api::ProvisioningState::Provisioning as i32;
    let active = api::ProvisioningState::Active as i32;
    let mt = |address: &str, state| (address.to_string(), "Magic Transit".to_string(), state);
    assert_eq!(
        batch(false).await,
        [
            mt("192.0.2.1", provisioning),
            mt("192.0.2.2", provisioning),
            mt("192.0.2.1", provisioning)
        ]
    );
    assert_eq!(batch(true).await[0].1, "", "nothing ACTIVE yet");

    let host = server.bind(&prefix, "192.0.2.1/32", CDN).await;
    assert_eq!(batch(false).await[0].1, "CDN");
    assert_eq!(batch(false).await[2].1, "CDN");
    assert_eq!(batch(false).await[1].1, "Magic Transit");

    server.delete_binding(&host).await.unwrap();
    assert_eq!(batch(false).await[0].1, "Magic Transit");

    let deadline = tokio::time::Instant::now() + PATIENCE;
    while batch(false).await[1].2 != active {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} never turned ACTIVE",
            wide.id
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        batch(true).await,
        [
            mt("192.0.2.1", active),
            mt("192.0.2.2", active),
            mt("192.0.2.1", active)
        ]
    );
}
