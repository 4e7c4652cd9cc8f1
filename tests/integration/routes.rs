//! Routing insight: validate_only leaves the log alone, PreviewChange matches a brute-force
//! model of the table over random binding sets (IPv4 and IPv6), and an export kept current by
//! WatchRoutes equals a fresh export after every change (both tables, one account or all).

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::Duration;

use ipam_bindings::config::RolloutMode;
use ipam_bindings::pb::api;
use ipam_bindings::pb::api::rollout_client::RolloutClient;
use ipam_bindings::server::ServerOptions;
use ipnet::IpNet;
use tonic::Code;

use crate::common::*;

fn create_request(prefix: &api::Prefix, cidr: &str, service_id: &str) -> api::CreateServiceBindingRequest {
    api::CreateServiceBindingRequest {
        account_id: prefix.account_id.clone(),
        prefix_id: prefix.id.clone(),
        cidr: cidr.into(),
        service_id: service_id.into(),
        ..Default::default()
    }
}

fn delete_request(binding: &api::ServiceBinding) -> api::DeleteServiceBindingRequest {
    api::DeleteServiceBindingRequest {
        account_id: binding.account_id.clone(),
        prefix_id: binding.prefix_id.clone(),
        binding_id: binding.id.clone(),
        validate_only: false,
    }
}

async fn preview(
    api: &Api,
    change: api::preview_change_request::Change,
) -> Result<api::PreviewChangeResponse, tonic::Status> {
    let request = api::PreviewChangeRequest { change: Some(change) };
    Ok(api.routing().preview_change(request).await?.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_only_checks_everything_and_changes_nothing() {
    let server = TestServer::start().await;
    let account_id = account();
    let prefix = server.create_prefix(&account_id, "192.0.2.0/24").await;
    let wide = server.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await;
    let head = list_revision(&server.channel, &prefix).await;

    // A create that would succeed: the answer, without an id or timestamps.
    let mut request = create_request(&prefix, "192.0.2.0/25", CDN);
    request.validate_only = true;
    request.request_id = "retry-1".into();
    let would = server
        .bindings()
        .create_service_binding(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!((would.id.as_str(), would.cidr.as_str()), ("", "192.0.2.0/25"));
    assert!(would.created_at.is_none() && would.modified_at.is_none());
    let prefix_request = api::CreatePrefixRequest {
        account_id: account_id.clone(),
        cidr: "198.51.100.0/24".into(),
        validate_only: true,
        ..Default::default()
    };
    let would_prefix = server
        .prefixes()
        .create_prefix(prefix_request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!((would_prefix.id.as_str(), would_prefix.created_at), ("", None));
    let update = api::UpdatePrefixRequest {
        account_id: account_id.clone(),
        prefix_id: prefix.id.clone(),
        description: "would".into(),
        validate_only: true,
    };
    assert_eq!(
        server
            .prefixes()
            .update_prefix(update)
            .await
            .unwrap()
            .into_inner()
            .description,
        "would"
    );
    let delete = api::DeleteServiceBindingRequest {
        validate_only: true,
        ..delete_request(&wide)
    };
    assert_eq!(
        server
            .bindings()
            .delete_service_binding(delete)
            .await
            .unwrap()
            .into_inner()
            .id,
        wide.id
    );

    // The same errors as the real calls.
    let mut layered = create_request(&prefix, "192.0.2.0/25", MAGIC_TRANSIT);
    layered.validate_only = true;
    let refused = server.bindings().create_service_binding(layered).await.unwrap_err();
    assert_error(
        &refused,
        Code::FailedPrecondition,
        "SERVICE_LAYERING_NOT_ALLOWED",
        1102,
        Some("service_id"),
    );
    let mut malformed = create_request(&prefix, "192.0.2.1/24", "nope");
    malformed.validate_only = true;
    let refused = server.bindings().create_service_binding(malformed).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let delete_prefix = api::DeletePrefixRequest {
        account_id: account_id.clone(),
        prefix_id: prefix.id.clone(),
        validate_only: true,
    };
    let refused = server.prefixes().delete_prefix(delete_prefix).await.unwrap_err();
    assert_error(&refused, Code::FailedPrecondition, "PREFIX_HAS_BINDINGS", 1104, None);

    // Nothing was appended, nothing changed, the request id was not remembered.
    assert_eq!(list_revision(&server.channel, &prefix).await, head);
    assert_eq!(server.list_all_bindings(&prefix, 0).await.len(), 1);
    let mut real = create_request(&prefix, "192.0.2.128/25", CDN);
    real.request_id = "retry-1".into();
    let created = server
        .bindings()
        .create_service_binding(real)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(created.cidr, "192.0.2.128/25", "the request id was free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documented_preview() {
    use api::preview_change_request::Change;
    let server = TestServer::start().await;
    let prefix = server.create_prefix(&account(), "192.0.2.0/24").await;
    let wide = server.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await;
    let head = list_revision(&server.channel, &prefix).await;
    let answer = preview(
        &server,
        Change::CreateServiceBinding(create_request(&prefix, "192.0.2.0/25", CDN)),
    )
    .await
    .unwrap();
    assert_eq!(answer.revision as u64, head);
    assert_eq!(answer.addresses_affected, "128");
    assert_eq!(answer.changes.len(), 1);
    let change = &answer.changes[0];
    assert_eq!(
        (change.first_address.as_str(), change.last_address.as_str()),
        ("192.0.2.0", "192.0.2.127")
    );
    assert_eq!(change.cidrs, ["192.0.2.0/25"]);
    assert_eq!(change.before.as_ref().unwrap().id, wide.id);
    let after = change.after.as_ref().unwrap();
    assert_eq!(
        (after.id.as_str(), after.service_id.as_str(), after.cidr.as_str()),
        ("", CDN, "192.0.2.0/25")
    );
    // A change the call would refuse gets the call's error; nothing was changed by previews.
    let refused = preview(
        &server,
        Change::CreateServiceBinding(create_request(&prefix, "192.0.2.0/25", MAGIC_TRANSIT)),
    )
    .await
    .unwrap_err();
    assert_error(
        &refused,
        Code::FailedPrecondition,
        "SERVICE_LAYERING_NOT_ALLOWED",
        1102,
        Some("service_id"),
    );
    let refused = preview(
        &server,
        Change::DeleteServiceBinding(delete_request(&api::ServiceBinding {
            id: uuid::Uuid::new_v4().simple().to_string(),
            ..wide.clone()
        })),
    )
    .await
    .unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    assert_eq!(list_revision(&server.channel, &prefix).await, head);
}

/// A binding in the model: its network and id ("" for one a create would make).
#[derive(Clone, Debug)]
struct Modelled {
    cidr: IpNet,
    id: String,
}

fn most_specific(bindings: &[Modelled], address: IpAddr) -> Option<&Modelled> {
    bindings
        .iter()
        .filter(|binding| binding.cidr.contains(&address))
        .max_by_key(|binding| binding.cidr.prefix_len())
}

/// The changes a brute-force walk over `window` finds: (first, last, before id, after id).
fn model_changes(window: &IpNet, before: &[Modelled], after: &[Modelled]) -> Vec<(IpAddr, IpAddr, String, String)> {
    let id = |binding: Option<&Modelled>| binding.map_or("-".to_string(), |binding| binding.id.clone());
    let mut changes: Vec<(IpAddr, IpAddr, String, String)> = Vec::new();
    let mut previous: Option<IpAddr> = None;
    for address in window.hosts_all() {
        let (was, will) = (id(most_specific(before, address)), id(most_specific(after, address)));
        if was != will {
            match changes.last_mut() {
                Some(last) if previous == Some(last.1) && last.2 == was && last.3 == will => last.1 = address,
                _ => changes.push((address, address, was, will)),
            }
        }
        previous = Some(address);
    }
    changes
}

trait AllHosts {
    fn hosts_all(&self) -> Vec<IpAddr>;
}

impl AllHosts for IpNet {
    fn hosts_all(&self) -> Vec<IpAddr> {
        match self {
            IpNet::V4(net) => (u32::from(net.network())..=u32::from(net.broadcast()))
                .map(|n| IpAddr::V4(n.into()))
                .collect(),
            IpNet::V6(net) => (u128::from(net.network())..=u128::from(net.broadcast()))
                .map(|n| IpAddr::V6(n.into()))
                .collect(),
        }
    }
}

fn random_inside(rng: &mut fastrand::Rng, window: &IpNet) -> IpNet {
    let len = rng.u8(window.prefix_len() + 1..=window.max_prefix_len());
    let hosts = window.hosts_all();
    let address = hosts[rng.usize(..hosts.len())];
    IpNet::new(address, len).unwrap().trunc()
}

/// Random nested creates and deletes under a prefix-wide Magic Transit binding; before each,
/// the preview must equal the model's walk over `window`.
async fn previews_match_the_model(prefix_cidr: &str, window: &str, seed: u64) {
    use api::preview_change_request::Change;
    let server = TestServer::start().await;
    let prefix = server.create_prefix(&account(), prefix_cidr).await;
    let window: IpNet = window.parse().unwrap();
    let wide = server.bind(&prefix, prefix_cidr, MAGIC_TRANSIT).await;
    let mut bindings = vec![Modelled {
        cidr: prefix_cidr.parse().unwrap(),
        id: wide.id.clone(),
    }];
    let mut live: Vec<api::ServiceBinding> = Vec::new();
    let mut rng = fastrand::Rng::with_seed(seed);
    for _ in 0..40 {
        if live.is_empty() || rng.u8(..3) > 0 {
            let cidr = random_inside(&mut rng, &window);
            let service = if rng.bool() { CDN } else { SPECTRUM };
            let request = create_request(&prefix, &cidr.to_string(), service);
            let answer = preview(&server, Change::CreateServiceBinding(request.clone())).await;
            if bindings.iter().any(|binding| binding.cidr == cidr) {
                assert_eq!(answer.unwrap_err().code(), Code::AlreadyExists);
                continue;
            }
            let mut after = bindings.clone();
            after.push(Modelled {
                cidr,
                id: String::new(),
            });
            check(
                &answer.unwrap(),
                &model_changes(&window, &bindings, &after),
                &window,
                &cidr,
            );
            let created = server
                .bindings()
                .create_service_binding(request)
                .await
                .unwrap()
                .into_inner();
            bindings.push(Modelled {
                cidr,
                id: created.id.clone(),
            });
            live.push(created);
        } else {
            let binding = live.swap_remove(rng.usize(..live.len()));
            let answer = preview(&server, Change::DeleteServiceBinding(delete_request(&binding)))
                .await
                .unwrap();
            let after: Vec<Modelled> = bindings.iter().filter(|b| b.id != binding.id).cloned().collect();
            check(
                &answer,
                &model_changes(&window, &bindings, &after),
                &window,
                &binding.cidr.parse().unwrap(),
            );
            server.delete_binding(&binding).await.unwrap();
            bindings = after;
        }
    }
}

fn check(
    answer: &api::PreviewChangeResponse,
    expected: &[(IpAddr, IpAddr, String, String)],
    window: &IpNet,
    cidr: &IpNet,
) {
    let id = |binding: &Option<api::ServiceBinding>| binding.as_ref().map_or("-".to_string(), |b| b.id.clone());
    let got: Vec<(IpAddr, IpAddr, String, String)> = (answer.changes.iter())
        .map(|change| {
            (
                change.first_address.parse().unwrap(),
                change.last_address.parse().unwrap(),
                id(&change.before),
                id(&change.after),
            )
        })
        .collect();
    assert_eq!(got, expected, "preview of {cidr} in {window}");
    let mut total = 0u128;
    for change in &answer.changes {
        // The CIDRs cover exactly the range.
        let covered: Vec<IpAddr> = change
            .cidrs
            .iter()
            .flat_map(|c| c.parse::<IpNet>().unwrap().hosts_all())
            .collect();
        assert_eq!(covered.first().unwrap().to_string(), change.first_address);
        assert_eq!(covered.last().unwrap().to_string(), change.last_address);
        total += covered.len() as u128;
    }
    assert_eq!(answer.addresses_affected, total.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_previews_match_a_brute_force_model() {
    previews_match_the_model("192.0.2.0/24", "192.0.2.0/24", 7).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv6_previews_match_a_brute_force_model() {
    previews_match_the_model("2001:db8::/48", "2001:db8::/120", 11).await;
}

type Replica = HashSet<api::Route>;

async fn export(api: &Api, account_id: &str, active_only: bool) -> (i64, Vec<api::Route>) {
    let request = api::ExportRoutesRequest {
        account_id: account_id.into(),
        active_only,
    };
    let mut stream = api.routing().export_routes(request).await.unwrap().into_inner();
    let (mut revision, mut routes) = (None, Vec::new());
    while let Some(message) = stream.message().await.unwrap() {
        assert!(message.routes.len() <= 1000);
        assert!(
            revision.is_none_or(|r| r == message.revision),
            "one revision per export"
        );
        revision = Some(message.revision);
        routes.extend(message.routes);
    }
    (revision.unwrap(), routes)
}

fn address_order(route: &api::Route) -> (u8, u128) {
    match route.first_address.parse::<IpAddr>().unwrap() {
        IpAddr::V4(v4) => (4, u32::from(v4) as u128),
        IpAddr::V6(v6) => (6, u128::from(v6)),
    }
}

/// An exported table kept current by its WatchRoutes stream.
struct Follower {
    account_id: String,
    active_only: bool,
    replica: Replica,
    stream: tonic::Streaming<api::RouteDelta>,
    revision: i64,
}

impl Follower {
    async fn start(api: &Api, account_id: &str, active_only: bool) -> Follower {
        let (revision, routes) = export(api, account_id, active_only).await;
        let request = api::WatchRoutesRequest {
            after_revision: revision,
            account_id: account_id.into(),
            active_only,
        };
        let stream = api.routing().watch_routes(request).await.unwrap().into_inner();
        Follower {
            account_id: account_id.into(),
            active_only,
            replica: routes.into_iter().collect(),
            stream,
            revision,
        }
    }

    /// Applies deltas until the replica equals a fresh export.
    async fn catch_up(&mut self, api: &Api) {
        let (revision, routes) = export(api, &self.account_id, self.active_only).await;
        let mut sorted = routes.clone();
        sorted.sort_by_key(address_order);
        assert_eq!(routes, sorted, "an export is in address order");
        let fresh: Replica = routes.into_iter().collect();
        while self.replica != fresh {
            let delta = tokio::time::timeout(PATIENCE, self.stream.message())
                .await
                .expect("a delta")
                .unwrap()
                .unwrap();
            assert!(
                delta.revision > self.revision && delta.revision <= revision,
                "{} after {}",
                delta.revision,
                self.revision
            );
            self.revision = delta.revision;
            for route in delta.removed {
                assert!(
                    self.replica.remove(&route),
                    "removed a route the table did not have: {route:?}"
                );
            }
            for route in delta.added {
                assert!(self.replica.insert(route), "added a route the table had");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_kept_by_its_watch_equals_a_fresh_export() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ServerOptions::new(dir.path().join("data"), Duration::ZERO);
    options.rollout = RolloutMode::External;
    let server = TestServer::start_with_options(options).await;
    let (a, b) = (account(), account());
    let mut prefixes = Vec::new();
    for (account_id, cidr) in [(&a, "192.0.2.0/24"), (&a, "2001:db8::/48"), (&b, "198.51.100.0/24")] {
        let prefix = server.create_prefix(account_id, cidr).await;
        let wide = server.bind(&prefix, cidr, MAGIC_TRANSIT).await;
        prefixes.push((prefix, cidr.parse::<IpNet>().unwrap(), wide));
    }
    let mut followers = vec![
        Follower::start(&server, "", false).await,
        Follower::start(&server, "", true).await,
        Follower::start(&server, &a, false).await,
        Follower::start(&server, &a, true).await,
    ];
    let mut live: Vec<api::ServiceBinding> = prefixes.iter().map(|(_, _, wide)| wide.clone()).collect();
    let mut rng = fastrand::Rng::with_seed(3);
    for step in 0..60 {
        match rng.u8(..4) {
            0 | 1 => {
                let (prefix, cidr, _) = &prefixes[rng.usize(..prefixes.len())];
                let window: IpNet = if cidr.addr().is_ipv4() {
                    *cidr
                } else {
                    "2001:db8::/120".parse().unwrap()
                };
                let nested = random_inside(&mut rng, &window);
                let service = if rng.bool() { CDN } else { SPECTRUM };
                let request = create_request(prefix, &nested.to_string(), service);
                if let Ok(created) = server.bindings().create_service_binding(request).await {
                    live.push(created.into_inner());
                }
            }
            2 => {
                // Activate one (the prefix-wide ones too).
                let binding = &live[rng.usize(..live.len())];
                let request = api::CompleteProvisioningRequest {
                    account_id: binding.account_id.clone(),
                    prefix_id: binding.prefix_id.clone(),
                    binding_id: binding.id.clone(),
                };
                RolloutClient::new(server.channel.clone())
                    .complete_provisioning(request)
                    .await
                    .unwrap();
            }
            _ => {
                let nested: Vec<usize> = (0..live.len())
                    .filter(|i| !prefixes.iter().any(|(_, _, wide)| wide.id == live[*i].id))
                    .collect();
                if let Some(&index) = nested.get(rng.usize(..nested.len().max(1))) {
                    let binding = live.swap_remove(index);
                    server.delete_binding(&binding).await.unwrap();
                }
            }
        }
        if step % 3 == 0 {
            for follower in &mut followers {
                follower.catch_up(&server).await;
            }
        }
    }
    for follower in &mut followers {
        follower.catch_up(&server).await;
        assert!(follower.account_id.is_empty() || follower.replica.iter().all(|route| route.account_id == a));
    }
    assert!(!followers[1].replica.is_empty(), "something was activated");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_history_is_served_after_a_restart() {
    let server = TestServer::start().await;
    let prefix = server.create_prefix(&account(), "192.0.2.0/24").await;
    server.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await;
    server.bind(&prefix, "192.0.2.64/26", CDN).await;
    let server = server.restart().await;
    // From the very beginning: the history is rebuilt from the log, and its deltas applied
    // to an empty table give the table of now.
    let mut follower = Follower {
        account_id: String::new(),
        active_only: false,
        replica: Replica::new(),
        stream: server
            .routing()
            .watch_routes(api::WatchRoutesRequest {
                after_revision: 0,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner(),
        revision: 0,
    };
    follower.catch_up(&server).await;
    assert_eq!(follower.replica.len(), 3);
    let beyond = api::WatchRoutesRequest {
        after_revision: 1_000,
        ..Default::default()
    };
    let refused = server.routing().watch_routes(beyond).await.unwrap_err();
    assert_error(
        &refused,
        Code::OutOfRange,
        "REVISION_OUT_OF_RANGE",
        1200,
        Some("after_revision"),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipamctl_previews_exports_and_validates() {
    let server = TestServer::start().await;
    let account_id = account();
    let prefix = server.create_prefix(&account_id, "192.0.2.0/24").await;
    server.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await;
    let run = |args: &[&str]| {
        let output = ipamctl_json(server.address, &account_id).args(args).output().unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
            .collect::<Vec<_>>()
    };
    let previewed = run(&[
        "preview",
        "create",
        "--prefix",
        &prefix.id,
        "192.0.2.0/25",
        "--service",
        "cdn",
    ]);
    assert_eq!(previewed[0]["cidrs"][0], "192.0.2.0/25");
    assert_eq!(previewed[1]["addresses_affected"], "128");
    let validated = run(&[
        "bindings",
        "create",
        "--prefix",
        &prefix.id,
        "192.0.2.0/25",
        "--service",
        "cdn",
        "--validate-only",
    ]);
    assert_eq!(validated[0]["id"], "");
    let exported = run(&["routes", "export"]);
    assert_eq!(exported.len(), 2, "one route and the revision: {exported:?}");
    assert_eq!(exported[0]["cidrs"][0], "192.0.2.0/24");
}
