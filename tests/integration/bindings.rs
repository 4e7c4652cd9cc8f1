//! Service bindings: every rule of the contract, idempotent retries, the 64-way race on a
//! first binding, concurrent writes decided in groups, and state surviving a restart.

use std::collections::HashSet;
use std::sync::Arc;

use ipam_bindings::pb::api;
use tonic::Code;

use crate::common::*;

#[tokio::test]
async fn binding_rules_and_their_errors() {
    let server = TestServer::start().await;
    let prefix = server.create_prefix(&account(), "192.0.2.0/24").await;

    let status = server.try_bind(&prefix, "192.0.2.0/25", CDN).await.unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "FIRST_BINDING_MUST_COVER_PREFIX",
        1101,
        Some("cidr"),
    );

    let wide = server.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await;
    assert_eq!(
        wide.provisioning.unwrap().state,
        api::ProvisioningState::Provisioning as i32
    );
    assert_eq!(wide.service_name, "Magic Transit");
    assert_eq!(
        (wide.prefix_id.as_str(), wide.account_id.as_str()),
        (prefix.id.as_str(), prefix.account_id.as_str())
    );

    let cases = [
        (
            "192.0.2.0/24",
            CDN,
            Code::AlreadyExists,
            "BINDING_ALREADY_EXISTS",
            1108,
            "cidr",
        ),
        (
            "192.0.3.0/24",
            CDN,
            Code::InvalidArgument,
            "CIDR_OUTSIDE_PREFIX",
            1009,
            "cidr",
        ),
        (
            "192.0.0.0/16",
            CDN,
            Code::InvalidArgument,
            "CIDR_OUTSIDE_PREFIX",
            1009,
            "cidr",
        ),
        (
            "2001:db8::/64",
            CDN,
            Code::InvalidArgument,
            "CIDR_FAMILY_MISMATCH",
            1010,
            "cidr",
        ),
        (
            "192.0.2.1/30",
            CDN,
            Code::InvalidArgument,
            "CIDR_NOT_CANONICAL",
            1007,
            "cidr",
        ),
        ("192.0.2.1", CDN, Code::InvalidArgument, "INVALID_CIDR", 1001, "cidr"),
        (
            "192.0.2.1/32",
            MAGIC_TRANSIT,
            Code::FailedPrecondition,
            "SERVICE_LAYERING_NOT_ALLOWED",
            1102,
            "service_id",
        ),
        (
            "192.0.2.1/32",
            "ffffffffffffffffffffffffffffffff",
            Code::InvalidArgument,
            "INVALID_SERVICE",
            1003,
            "service_id",
        ),
        (
            "192.0.2.1/32",
            "cdn",
            Code::InvalidArgument,
            "INVALID_SERVICE",
            1003,
            "service_id",
        ),
    ];
    for (cidr, service, code, reason, numeric, field) in cases {
        let status = server.try_bind(&prefix, cidr, service).await.unwrap_err();
        assert_error(&status, code, reason, numeric, Some(field));
    }

    let cdn = server.bind(&prefix, "192.0.2.1/32", CDN).await;
    let spectrum = server.bind(&prefix, "192.0.2.128/25", SPECTRUM).await;
    let status = server.try_bind(&prefix, "192.0.2.1/32", SPECTRUM).await.unwrap_err();
    assert_error(
        &status,
        Code::AlreadyExists,
        "BINDING_ALREADY_EXISTS",
        1108,
        Some("cidr"),
    );

    // The prefix-wide binding goes last; the prefix goes after its bindings.
    let status = server.delete_binding(&wide).await.unwrap_err();
    assert_error(
        &status,
        Code::FailedPrecondition,
        "PREFIX_WIDE_BINDING_IN_USE",
        1103,
        None,
    );
    let delete_prefix = api::DeletePrefixRequest {
        account_id: prefix.account_id.clone(),
        prefix_id: prefix.id.clone(),
        validate_only: false,
    };
    let status = server
        .prefixes()
        .delete_prefix(delete_prefix.clone())
        .await
        .unwrap_err();
    assert_error(&status, Code::FailedPrecondition, "PREFIX_HAS_BINDINGS", 1104, None);
    server.delete_binding(&cdn).await.unwrap();
    server.delete_binding(&spectrum).await.unwrap();
    server.delete_binding(&wide).await.unwrap();
    let status = server.delete_binding(&wide).await.unwrap_err();
    assert_error(&status, Code::NotFound, "BINDING_NOT_FOUND", 1002, Some("binding_id"));
    server.prefixes().delete_prefix(delete_prefix).await.unwrap();
}

#[tokio::test]
async fn each_service_may_be_prefix_wide_and_layering_follows_the_matrix() {
    let server = TestServer::start().await;
    let account_id = account();
    let allowed = [
        (MAGIC_TRANSIT, CDN),
        (MAGIC_TRANSIT, SPECTRUM),
        (CDN, SPECTRUM),
        (SPECTRUM, CDN),
    ];
    for (index, wide_service) in [MAGIC_TRANSIT, CDN, SPECTRUM].into_iter().enumerate() {
        let prefix = server.create_prefix(&account_id, &format!("198.18.{index}.0/24")).await;
        server.bind(&prefix, &prefix.cidr, wide_service).await;
        for (offset, child) in [MAGIC_TRANSIT, CDN, SPECTRUM].into_iter().enumerate() {
            let result = server
                .try_bind(&prefix, &format!("198.18.{index}.{offset}/32"), child)
                .await;
            assert_eq!(
                result.is_ok(),
                allowed.contains(&(wide_service, child)),
                "{child} over {wide_service}: {result:?}"
            );
        }
    }
}

#[tokio::test]
async fn get_and_list_bindings_with_tenancy() {
    let server = TestServer::start().await;
    let prefix = server.create_prefix(&account(), "2001:db8:100::/48").await;
    let wide = server.bind(&prefix, "2001:db8:100::/48", CDN).await;
    let mut expected = vec![wide.clone()];
    for i in (0..12).rev() {
        expected.push(
            server
                .bind(&prefix, &format!("2001:db8:100:{i:x}::/64"), SPECTRUM)
                .await,
        );
    }
    expected[1..].sort_by_key(|b| b.cidr.parse::<ipnet::IpNet>().unwrap().network());
    let listed = server.list_all_bindings(&prefix, 5).await;
    let cidrs = |bindings: &[api::ServiceBinding]| bindings.iter().map(|b| b.cidr.clone()).collect::<Vec<_>>();
    assert_eq!(cidrs(&listed), cidrs(&expected));
    assert_eq!(listed, expected);

    let get = |account_id: &str, prefix_id: &str| api::GetServiceBindingRequest {
        account_id: account_id.into(),
        prefix_id: prefix_id.into(),
        binding_id: wide.id.clone(),
    };
    assert_eq!(
        server
            .bindings()
            .get_service_binding(get(&prefix.account_id, &prefix.id))
            .await
            .unwrap()
            .into_inner(),
        wide
    );
    let status = server
        .bindings()
        .get_service_binding(get(&account(), &prefix.id))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "PREFIX_NOT_FOUND", 1000, Some("prefix_id"));
    let other = server.create_prefix(&prefix.account_id, "2001:db8:200::/48").await;
    let status = server
        .bindings()
        .get_service_binding(get(&prefix.account_id, &other.id))
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "BINDING_NOT_FOUND", 1002, Some("binding_id"));
    let status = server
        .bindings()
        .get_service_binding(get(&prefix.account_id, "nope"))
        .await
        .unwrap_err();
    assert_error(
        &status,
        Code::InvalidArgument,
        "INVALID_PREFIX_ID",
        1005,
        Some("prefix_id"),
    );
    let mut bad_binding = get(&prefix.account_id, &prefix.id);
    bad_binding.binding_id = String::new();
    let status = server.bindings().get_service_binding(bad_binding).await.unwrap_err();
    assert_error(
        &status,
        Code::InvalidArgument,
        "INVALID_BINDING_ID",
        1006,
        Some("binding_id"),
    );
    let stranger_list = api::ListServiceBindingsRequest {
        account_id: account(),
        prefix_id: prefix.id.clone(),
        page_size: 0,
        page_token: String::new(),
    };
    let status = server
        .bindings()
        .list_service_bindings(stranger_list)
        .await
        .unwrap_err();
    assert_error(&status, Code::NotFound, "PREFIX_NOT_FOUND", 1000, Some("prefix_id"));
}

#[tokio::test]
async fn request_ids_make_retries_safe() {
    let server = TestServer::start().await;
    let prefix = server.create_prefix(&account(), "203.0.113.0/24").await;
    let request = api::CreateServiceBindingRequest {
        account_id: prefix.account_id.clone(),
        prefix_id: prefix.id.clone(),
        cidr: prefix.cidr.clone(),
        service_id: MAGIC_TRANSIT.into(),
        request_id: "onboard-203".into(),
        validate_only: false,
    };
    let first = server
        .bindings()
        .create_service_binding(request.clone())
        .await
        .unwrap()
        .into_inner();
    let revision_after_first = list_revision(&server.channel, &prefix).await;
    let retry = server
        .bindings()
        .create_service_binding(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(retry, first);
    assert_eq!(
        list_revision(&server.channel, &prefix).await,
        revision_after_first,
        "a retry appends nothing"
    );

    let mut changed = request.clone();
    changed.service_id = CDN.into();
    let status = server.bindings().create_service_binding(changed).await.unwrap_err();
    assert_error(
        &status,
        Code::InvalidArgument,
        "REQUEST_ID_REUSED",
        1015,
        Some("request_id"),
    );

    // Even after the binding is deleted, the retry returns it as it was created.
    server.delete_binding(&first).await.unwrap();
    let after_delete = server
        .bindings()
        .create_service_binding(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after_delete, first);

    // And it survives a restart: the log is the memory.
    let server = server.restart().await;
    let after_restart = server
        .bindings()
        .create_service_binding(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(after_restart, first);

    let mut too_long = request;
    too_long.request_id = "r".repeat(256);
    let status = server.bindings().create_service_binding(too_long).await.unwrap_err();
    assert_error(
        &status,
        Code::InvalidArgument,
        "INVALID_REQUEST_ID",
        1014,
        Some("request_id"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_racers_for_one_first_binding_one_wins() {
    let server = Arc::new(TestServer::start().await);
    let prefix = server.create_prefix(&account(), "100.64.0.0/24").await;
    let mut racers = tokio::task::JoinSet::new();
    for index in 0..64 {
        let server = Arc::clone(&server);
        let prefix = prefix.clone();
        racers.spawn(async move {
            let service = [MAGIC_TRANSIT, CDN, SPECTRUM][index % 3];
            server.try_bind(&prefix, "100.64.0.0/24", service).await
        });
    }
    let mut winners = 0;
    while let Some(result) = racers.join_next().await {
        match result.unwrap() {
            Ok(_) => winners += 1,
            Err(status) => assert_error(
                &status,
                Code::AlreadyExists,
                "BINDING_ALREADY_EXISTS",
                1108,
                Some("cidr"),
            ),
        }
    }
    assert_eq!(winners, 1);
    assert_eq!(server.list_all_bindings(&prefix, 0).await.len(), 1);
}

/// Creates racing in one group: those with one request id see each other (one binding, the
/// rest replayed or refused), while distinct /32s in the same prefix are all accepted. The
/// racers start together and each sends a /32 of its own beside the shared one, so that the
/// writer is busy when the shared ones arrive and decides them together; four rounds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racers_sharing_a_request_id_make_one_binding_and_distinct_ones_all_land() {
    const RACERS: usize = 32;
    const ROUNDS: usize = 4;
    let server = Arc::new(TestServer::start().await);
    let prefix = server.create_prefix(&account(), "100.66.0.0/16").await;
    server.bind(&prefix, &prefix.cidr, MAGIC_TRANSIT).await;
    let start = Arc::new(tokio::sync::Barrier::new(RACERS));
    let mut racers = tokio::task::JoinSet::new();
    for index in 0..RACERS {
        let (server, prefix, start) = (Arc::clone(&server), prefix.clone(), Arc::clone(&start));
        racers.spawn(async move {
            let create = |cidr: String, request_id: String| api::CreateServiceBindingRequest {
                account_id: prefix.account_id.clone(),
                prefix_id: prefix.id.clone(),
                cidr,
                service_id: CDN.into(),
                request_id,
                validate_only: false,
            };
            let mut answers = Vec::new();
            for round in 0..ROUNDS {
                start.wait().await;
                let own = create(
                    format!("100.66.{round}.{}/32", 100 + index),
                    format!("own-{round}-{index}"),
                );
                // A CIDR of its own, one request id for all of a round.
                let shared = create(format!("100.66.{round}.{}/32", 1 + index), format!("shared-{round}"));
                let mut bindings = server.bindings();
                let mut same_bindings = server.bindings();
                let (own, shared) = tokio::join!(bindings.create_service_binding(own), async {
                    // The racers' own creates go first: the writer is deciding them.
                    tokio::task::yield_now().await;
                    same_bindings.create_service_binding(shared).await
                });
                own.expect("a /32 with its own request id is accepted");
                answers.push(shared.map(|binding| binding.into_inner()));
            }
            answers
        });
    }
    let mut shared_ids = vec![std::collections::BTreeSet::new(); ROUNDS];
    while let Some(result) = racers.join_next().await {
        for (round, shared) in result.unwrap().into_iter().enumerate() {
            match shared {
                Ok(binding) => {
                    shared_ids[round].insert(binding.id);
                }
                Err(status) => assert_error(
                    &status,
                    Code::InvalidArgument,
                    "REQUEST_ID_REUSED",
                    1015,
                    Some("request_id"),
                ),
            }
        }
    }
    for (round, ids) in shared_ids.iter().enumerate() {
        assert_eq!(
            ids.len(),
            1,
            "round {round}: one binding for the shared request id: {ids:?}"
        );
    }
    let listed = server.list_all_bindings(&prefix, 0).await;
    assert_eq!(
        listed.len(),
        1 + ROUNDS * RACERS + ROUNDS,
        "the prefix-wide binding, the own ones, the shared ones"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_overlapping_prefixes_only_one_is_accepted() {
    let server = Arc::new(TestServer::start().await);
    let mut racers = tokio::task::JoinSet::new();
    for index in 0..32 {
        let server = Arc::clone(&server);
        // /16, /20 and /24 variants that all overlap each other.
        let cidr = ["100.80.0.0/16", "100.80.0.0/20", "100.80.1.0/24", "100.80.255.0/24"][index % 4];
        racers.spawn(async move { server.try_create_prefix(&account(), cidr).await });
    }
    let mut accepted = Vec::new();
    while let Some(result) = racers.join_next().await {
        if let Ok(prefix) = result.unwrap() {
            accepted.push(prefix.cidr);
        }
    }
    // Either the /16 alone, or some of the non-overlapping smaller ones.
    let nets: Vec<ipnet::IpNet> = accepted.iter().map(|c| c.parse().unwrap()).collect();
    for (i, a) in nets.iter().enumerate() {
        for b in &nets[i + 1..] {
            assert!(!a.contains(b) && !b.contains(a), "{a} and {b} overlap: {accepted:?}");
        }
    }
    assert!(!accepted.is_empty());
}

/// The writer decides a group of concurrent commands against the one state the reads use,
/// applying each decision for the next one to see and taking them all back before the append.
/// Whatever the groups were, the state served afterwards must be the state the log replays
/// to: every binding, its state, and what each request id remembers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_leave_the_state_the_log_replays_to() {
    let server = Arc::new(TestServer::start_with_delay(std::time::Duration::from_millis(200)).await);
    let owner = account();
    let mut prefixes = Vec::new();
    for octet in 0..4 {
        let prefix = server.create_prefix(&owner, &format!("10.{octet}.0.0/24")).await;
        server.bind(&prefix, &prefix.cidr, MAGIC_TRANSIT).await;
        prefixes.push(prefix);
    }
    let mut writers = tokio::task::JoinSet::new();
    for worker in 0..48 {
        let server = Arc::clone(&server);
        let prefix = prefixes[worker % prefixes.len()].clone();
        writers.spawn(async move {
            let mut request_ids = Vec::new();
            for step in 0..12 {
                // Workers of one prefix race for the same /28s, some nested in a /26 that
                // another worker may be creating or deleting in the same group.
                let slot = (worker / 4 + step) % 16;
                let base = prefix.cidr.trim_end_matches(".0/24");
                let cidr = match step % 3 {
                    0 => format!("{base}.{}/26", (slot % 4) * 64),
                    _ => format!("{base}.{}/28", slot * 16),
                };
                let request_id = format!("worker-{}-{step}", worker % 8);
                let request = api::CreateServiceBindingRequest {
                    account_id: prefix.account_id.clone(),
                    prefix_id: prefix.id.clone(),
                    cidr,
                    service_id: [CDN, SPECTRUM][step % 2].into(),
                    request_id: request_id.clone(),
                    validate_only: false,
                };
                let created = server.bindings().create_service_binding(request).await;
                if let Ok(binding) = created {
                    let binding = binding.into_inner();
                    request_ids.push((request_id, binding.id.clone()));
                    if step % 4 == 3 {
                        // Another worker may delete it first.
                        let _ = server.delete_binding(&binding).await;
                    }
                }
            }
            request_ids
        });
    }
    let mut remembered = Vec::new();
    while let Some(result) = writers.join_next().await {
        remembered.extend(result.unwrap());
    }
    assert!(
        remembered.len() > 48,
        "most workers created something: {}",
        remembered.len()
    );
    // The rollout activates everything first, so that nothing changes across the restart.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let before = loop {
        let mut lists = Vec::new();
        for prefix in &prefixes {
            lists.push(server.list_all_bindings(prefix, 0).await);
        }
        let active = Some(api::ProvisioningState::Active as i32);
        if (lists.iter().flatten()).all(|binding| binding.provisioning.as_ref().map(|p| p.state) == active) {
            break lists;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the rollout activates every binding"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };

    let server = Arc::into_inner(server)
        .expect("the workers are done")
        .restart_from_the_log()
        .await;
    for (prefix, before) in prefixes.iter().zip(&before) {
        assert_eq!(&server.list_all_bindings(prefix, 0).await, before, "{}", prefix.cidr);
    }
    // A request id retried after the restart answers with the binding it first created
    // (when it still exists) or is refused as a reused id, exactly as before the restart.
    for (request_id, binding_id) in remembered.iter().take(24) {
        let Some(binding) = before.iter().flatten().find(|binding| &binding.id == binding_id) else {
            continue;
        };
        let retried = server
            .bindings()
            .create_service_binding(api::CreateServiceBindingRequest {
                account_id: binding.account_id.clone(),
                prefix_id: binding.prefix_id.clone(),
                cidr: binding.cidr.clone(),
                service_id: binding.service_id.clone(),
                request_id: request_id.clone(),
                validate_only: false,
            })
            .await
            .expect("a retry of a remembered request")
            .into_inner();
        assert_eq!(&retried.id, binding_id, "{request_id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_and_revisions_survive_a_restart() {
    let server = TestServer::start().await;
    let prefix = server.create_prefix(&account(), "192.0.2.0/24").await;
    server.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await;
    let mut created = HashSet::new();
    for i in 0..20 {
        created.insert(server.bind(&prefix, &format!("192.0.2.{i}/32"), CDN).await.id);
    }
    let before = server.list_all_bindings(&prefix, 0).await;
    let revision_before = list_revision(&server.channel, &prefix).await;
    assert_eq!(revision_before, 22);

    let server = server.restart().await;
    assert_eq!(server.list_all_bindings(&prefix, 0).await, before);
    assert_eq!(list_revision(&server.channel, &prefix).await, revision_before);
    server.bind(&prefix, "192.0.2.200/32", SPECTRUM).await;
    assert_eq!(
        list_revision(&server.channel, &prefix).await,
        revision_before + 1,
        "revisions continue without reuse"
    );
}

/// A create's answer is written outside tonic's encoder (src/api/wire/binding.rs): its bytes
/// are the ones the generated server writes for the same binding (GetServiceBinding's), and a
/// compressed or malformed create is refused as tonic refuses it.
#[tokio::test]
async fn a_creates_answer_is_the_contracts_message_byte_for_byte() {
    let server = TestServer::start().await;
    let prefix = server.create_prefix(&account(), "192.0.2.0/24").await;
    const CREATE: &str = "/addressing.v1.ServiceBindings/CreateServiceBinding";
    for (cidr, service) in [("192.0.2.0/24", MAGIC_TRANSIT), ("192.0.2.1/32", CDN)] {
        let create = api::CreateServiceBindingRequest {
            account_id: prefix.account_id.clone(),
            prefix_id: prefix.id.clone(),
            cidr: cidr.into(),
            service_id: service.into(),
            request_id: String::new(),
            validate_only: false,
        };
        let created = raw_call(
            &server,
            CREATE,
            tonic::Request::new(prost::Message::encode_to_vec(&create)),
        )
        .await
        .unwrap()
        .into_inner();
        let binding: api::ServiceBinding = prost::Message::decode(created.as_slice()).unwrap();
        assert_eq!((binding.cidr.as_str(), binding.service_id.as_str()), (cidr, service));
        let get = api::GetServiceBindingRequest {
            account_id: prefix.account_id.clone(),
            prefix_id: prefix.id.clone(),
            binding_id: binding.id.clone(),
        };
        let got = raw_call(
            &server,
            "/addressing.v1.ServiceBindings/GetServiceBinding",
            tonic::Request::new(prost::Message::encode_to_vec(&get)),
        )
        .await
        .unwrap()
        .into_inner();
        assert_eq!(created, got, "{cidr}");
    }
    let mut compressed = tonic::Request::new(Vec::new());
    compressed
        .metadata_mut()
        .insert("grpc-encoding", "gzip".parse().unwrap());
    let status = raw_call(&server, CREATE, compressed).await.unwrap_err();
    assert_eq!(status.code(), Code::Unimplemented, "{status:?}");
    assert_eq!(status.metadata().get("grpc-accept-encoding").unwrap(), "identity");
    let not_utf8 = tonic::Request::new(vec![0x0a, 0x02, 0xff, 0xfe]);
    let status = raw_call(&server, CREATE, not_utf8).await.unwrap_err();
    assert_error(
        &status,
        Code::InvalidArgument,
        "MALFORMED_REQUEST",
        1019,
        Some("account_id"),
    );
}
