//! WatchServiceBindings and the rollout: lifecycle, replay, the list-then-watch seam under
//! concurrent writes, slow watchers, filters, restart, shutdown with open streams.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use ipam_bindings::pb::api;
use ipam_bindings::pb::api::ServiceBindingEventKind as Kind;
use tonic::{Code, Status, Streaming};

use crate::common::*;

fn watch_request(account_id: &str, after_revision: Option<u64>) -> api::WatchServiceBindingsRequest {
    api::WatchServiceBindingsRequest {
        account_id: account_id.into(),
        prefix_id: String::new(),
        binding_id: String::new(),
        after_revision,
    }
}

async fn open(server: &TestServer, request: api::WatchServiceBindingsRequest) -> Streaming<api::ServiceBindingEvent> {
    server
        .bindings()
        .watch_service_bindings(request)
        .await
        .expect("watch")
        .into_inner()
}

async fn next(stream: &mut Streaming<api::ServiceBindingEvent>) -> api::ServiceBindingEvent {
    tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("an event in time")
        .expect("no error")
        .expect("stream still open")
}

fn summary(event: &api::ServiceBindingEvent) -> (Kind, i32, String) {
    let binding = event.binding.clone().expect("binding");
    (
        event.kind(),
        binding.provisioning.map(|p| p.state).unwrap_or_default(),
        binding.cidr,
    )
}

#[tokio::test]
async fn a_binding_lives_created_active_deleted() {
    let server = TestServer::start_with_delay(Duration::from_millis(200)).await;
    let prefix = server.create_prefix(&account(), "192.0.2.0/24").await;
    let mut stream = open(&server, watch_request(&prefix.account_id, None)).await;
    let binding = server.bind(&prefix, "192.0.2.0/24", CDN).await;
    let created = next(&mut stream).await;
    assert_eq!(
        summary(&created),
        (
            Kind::Created,
            api::ProvisioningState::Provisioning as i32,
            "192.0.2.0/24".into()
        )
    );
    let activated = next(&mut stream).await;
    assert_eq!(activated.kind(), Kind::ProvisioningStateChanged);
    assert_eq!(
        activated.binding.as_ref().unwrap().provisioning.unwrap().state,
        api::ProvisioningState::Active as i32
    );
    assert!(activated.revision > created.revision);
    server.delete_binding(&binding).await.unwrap();
    let deleted = next(&mut stream).await;
    assert_eq!(deleted.kind(), Kind::Deleted);
    assert_eq!(
        deleted.binding.unwrap().id,
        binding.id,
        "DELETED carries the binding as it was"
    );
    assert!(deleted.time.is_some());
}

#[tokio::test]
async fn every_watcher_and_every_replay_gets_the_same_whole_event() {
    // The server encodes an event once and sends those bytes to every stream: each must still
    // carry the whole event, the binding exactly as the create returned it.
    let server = TestServer::start().await;
    let prefix = server.create_prefix(&account(), "198.51.100.0/24").await;
    let mut watchers = Vec::new();
    for _ in 0..3 {
        watchers.push(open(&server, watch_request(&prefix.account_id, None)).await);
    }
    let binding = server.bind(&prefix, "198.51.100.0/24", CDN).await;
    let mut seen = Vec::new();
    for watcher in &mut watchers {
        seen.push(next(watcher).await);
    }
    let first = seen[0].clone();
    assert_eq!(first.kind(), Kind::Created);
    assert_eq!(first.binding.as_ref(), Some(&binding));
    assert_eq!(first.actor, "anonymous");
    assert!(first.revision > 1 && first.time.is_some());
    let mut replay = open(&server, watch_request(&prefix.account_id, Some(first.revision - 1))).await;
    seen.push(next(&mut replay).await);
    for event in &seen {
        assert_eq!(event, &first);
    }
    // A second binding: the next revision, its own event, to each watcher.
    let second = server.bind(&prefix, "198.51.100.7/32", SPECTRUM).await;
    for watcher in watchers.iter_mut().chain([&mut replay]) {
        let event = next(watcher).await;
        assert_eq!(
            (event.revision, event.binding.as_ref()),
            (first.revision + 1, Some(&second))
        );
    }
}

#[tokio::test]
async fn replay_from_any_revision_then_live() {
    let server = TestServer::start().await;
    let prefix = server.create_prefix(&account(), "10.9.0.0/16").await;
    server.bind(&prefix, "10.9.0.0/16", MAGIC_TRANSIT).await;
    for i in 0..10 {
        server.bind(&prefix, &format!("10.9.{i}.0/24"), CDN).await;
    }
    // Revision 1 is the prefix; 2..=12 the bindings.
    let mut full = open(&server, watch_request("", Some(0))).await;
    let mut revisions = Vec::new();
    for _ in 0..11 {
        revisions.push(next(&mut full).await.revision);
    }
    assert_eq!(revisions, (2..=12).collect::<Vec<u64>>());
    let mut tail = open(&server, watch_request("", Some(7))).await;
    assert_eq!(next(&mut tail).await.revision, 8);
    // Then live, with no gap at the seam.
    for _ in 8..12 {
        next(&mut tail).await;
    }
    server.bind(&prefix, "10.9.200.0/24", SPECTRUM).await;
    assert_eq!(next(&mut tail).await.revision, 13);
    assert_eq!(next(&mut full).await.revision, 13);

    let status = server
        .bindings()
        .watch_service_bindings(watch_request("", Some(14)))
        .await
        .unwrap_err();
    assert_error(
        &status,
        Code::OutOfRange,
        "REVISION_OUT_OF_RANGE",
        1200,
        Some("after_revision"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_then_watch_misses_nothing_under_concurrent_writes() {
    let server = Arc::new(TestServer::start().await);
    let prefix = server.create_prefix(&account(), "10.10.0.0/16").await;
    server.bind(&prefix, "10.10.0.0/16", MAGIC_TRANSIT).await;
    let writer = {
        let (server, prefix) = (Arc::clone(&server), prefix.clone());
        tokio::spawn(async move {
            for i in 0..200 {
                server
                    .bind(&prefix, &format!("10.10.{}.{}/32", i / 256, i % 256), CDN)
                    .await;
            }
        })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    let listed = api::ListServiceBindingsRequest {
        account_id: prefix.account_id.clone(),
        prefix_id: prefix.id.clone(),
        page_size: 0,
        page_token: String::new(),
    };
    let page = server
        .bindings()
        .list_service_bindings(listed)
        .await
        .unwrap()
        .into_inner();
    let listed_ids: HashSet<String> = page.bindings.iter().map(|b| b.id.clone()).collect();
    let mut request = watch_request(&prefix.account_id, Some(page.revision));
    request.prefix_id = prefix.id.clone();
    let mut stream = open(&server, request).await;
    writer.await.unwrap();

    let mut watched = Vec::new();
    while listed_ids.len() + watched.len() < 201 {
        watched.push(next(&mut stream).await);
    }
    let watched_ids: HashSet<String> = watched.iter().map(|e| e.binding.as_ref().unwrap().id.clone()).collect();
    assert_eq!(watched_ids.len(), watched.len(), "no duplicates");
    assert!(listed_ids.is_disjoint(&watched_ids), "nothing listed is watched again");
    assert!(
        watched.windows(2).all(|w| w[0].revision < w[1].revision),
        "revision order"
    );
    assert!(watched.iter().all(|e| e.revision > page.revision));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_fast_watchers_each_get_every_event() {
    let server = Arc::new(TestServer::start().await);
    let prefix = server.create_prefix(&account(), "10.11.0.0/16").await;
    let n_events = 300;
    let mut watchers = tokio::task::JoinSet::new();
    for index in 0..12 {
        let stream = open(&server, watch_request("", None)).await;
        watchers.spawn(async move {
            let mut stream = stream;
            let mut revisions = Vec::new();
            while revisions.len() < n_events {
                revisions.push(next(&mut stream).await.revision);
                // A third of the watchers read slowly, so they fall behind the live feed.
                if index % 3 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
            revisions
        });
    }
    server.bind(&prefix, "10.11.0.0/16", MAGIC_TRANSIT).await;
    for i in 1..n_events {
        server
            .bind(&prefix, &format!("10.11.{}.{}/32", i / 256, i % 256), SPECTRUM)
            .await;
    }
    let expected: Vec<u64> = (2..2 + n_events as u64).collect();
    while let Some(revisions) = watchers.join_next().await {
        assert_eq!(revisions.unwrap(), expected);
    }
}

#[tokio::test]
async fn filters_by_account_prefix_and_binding() {
    let server = TestServer::start().await;
    let (first, second) = (account(), account());
    let a = server.create_prefix(&first, "192.0.2.0/24").await;
    let b = server.create_prefix(&first, "198.51.100.0/24").await;
    let c = server.create_prefix(&second, "203.0.113.0/24").await;
    let a_wide = server.bind(&a, &a.cidr, MAGIC_TRANSIT).await;

    let mut by_account = open(&server, watch_request(&first, None)).await;
    let mut by_prefix = open(
        &server,
        api::WatchServiceBindingsRequest {
            prefix_id: b.id.clone(),
            ..watch_request(&first, None)
        },
    )
    .await;
    let mut by_binding = open(
        &server,
        api::WatchServiceBindingsRequest {
            binding_id: a_wide.id.clone(),
            ..watch_request(&first, None)
        },
    )
    .await;
    server.bind(&c, &c.cidr, CDN).await;
    server.bind(&b, &b.cidr, CDN).await;
    server.bind(&a, "192.0.2.9/32", CDN).await;
    server.delete_binding(&a_wide).await.unwrap_err(); // refused: nothing happens
    assert_eq!(next(&mut by_account).await.binding.unwrap().cidr, "198.51.100.0/24");
    assert_eq!(next(&mut by_account).await.binding.unwrap().cidr, "192.0.2.9/32");
    assert_eq!(next(&mut by_prefix).await.binding.unwrap().cidr, "198.51.100.0/24");
    let a_narrow = server
        .list_all_bindings(&a, 0)
        .await
        .into_iter()
        .find(|x| x.cidr == "192.0.2.9/32")
        .unwrap();
    server.delete_binding(&a_narrow).await.unwrap();
    server.delete_binding(&a_wide).await.unwrap();
    let only = next(&mut by_binding).await;
    assert_eq!(
        (only.kind(), only.binding.unwrap().id),
        (Kind::Deleted, a_wide.id.clone())
    );

    let cases = [
        (
            api::WatchServiceBindingsRequest {
                prefix_id: a.id.clone(),
                ..watch_request("", None)
            },
            Code::InvalidArgument,
            "FILTER_NEEDS_ACCOUNT",
            1018,
            "prefix_id",
        ),
        (
            api::WatchServiceBindingsRequest {
                binding_id: a_wide.id.clone(),
                ..watch_request("", None)
            },
            Code::InvalidArgument,
            "FILTER_NEEDS_ACCOUNT",
            1018,
            "binding_id",
        ),
        (
            api::WatchServiceBindingsRequest {
                prefix_id: c.id.clone(),
                ..watch_request(&first, None)
            },
            Code::NotFound,
            "PREFIX_NOT_FOUND",
            1000,
            "prefix_id",
        ),
        (
            api::WatchServiceBindingsRequest {
                binding_id: a_wide.id.clone(),
                ..watch_request(&first, None)
            },
            Code::NotFound,
            "BINDING_NOT_FOUND",
            1002,
            "binding_id",
        ),
        (
            watch_request("nope", None),
            Code::InvalidArgument,
            "INVALID_ACCOUNT_ID",
            1004,
            "account_id",
        ),
    ];
    for (request, code, reason, numeric, field) in cases {
        let status = server.bindings().watch_service_bindings(request).await.unwrap_err();
        assert_error(&status, code, reason, numeric, Some(field));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_bindings_turn_active_after_a_restart() {
    let server = TestServer::start_with_delay(Duration::from_millis(300)).await;
    let prefix = server.create_prefix(&account(), "192.0.2.0/24").await;
    let binding = server.bind(&prefix, "192.0.2.0/24", CDN).await;
    // Stop before the rollout's time has come; it comes while the server is down.
    let server = server.restart().await;
    let mut stream = open(&server, watch_request(&prefix.account_id, Some(0))).await;
    assert_eq!(next(&mut stream).await.kind(), Kind::Created);
    let activated = next(&mut stream).await;
    assert_eq!(
        (activated.kind(), activated.binding.unwrap().id),
        (Kind::ProvisioningStateChanged, binding.id)
    );
    // Exactly one activation, even across another restart.
    let server = server.restart().await;
    server.bind(&prefix, "192.0.2.1/32", SPECTRUM).await;
    let mut stream = open(&server, watch_request(&prefix.account_id, Some(0))).await;
    let kinds: Vec<Kind> = [
        next(&mut stream).await,
        next(&mut stream).await,
        next(&mut stream).await,
    ]
    .iter()
    .map(|e| e.kind())
    .collect();
    assert_eq!(kinds, [Kind::Created, Kind::ProvisioningStateChanged, Kind::Created]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_ends_open_streams_with_unavailable() {
    let mut server = TestServer::start().await;
    let mut streams = Vec::new();
    for _ in 0..5 {
        streams.push(open(&server, watch_request("", None)).await);
    }
    let routes = api::WatchRoutesRequest::default();
    let mut route_stream = server.routing().watch_routes(routes).await.unwrap().into_inner();
    let started = tokio::time::Instant::now();
    server.stop().await.unwrap();
    assert!(started.elapsed() < PATIENCE);
    let ended = |status: Status| {
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("shutting down"));
    };
    for mut stream in streams {
        ended(
            tokio::time::timeout(PATIENCE, stream.message())
                .await
                .unwrap()
                .unwrap_err(),
        );
    }
    ended(
        tokio::time::timeout(PATIENCE, route_stream.message())
            .await
            .unwrap()
            .unwrap_err(),
    );
}
