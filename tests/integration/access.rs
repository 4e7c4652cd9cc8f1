//! Access control through the real server: every RPC of the descriptor set against every kind
//! of caller, no existence oracle, tenancy of lists and watches, reloads that revoke, mTLS and
//! XFCC identities, rate limits, the audit trail on every event, the REST surface, and the
//! start-up refusals.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::time::Duration;

use ipam_bindings::auth::credentials;
use ipam_bindings::pb::api;
use ipam_bindings::pb::api::rollout_client::RolloutClient;
use ipam_bindings::server::ServerOptions;
use prost::Message;
use tonic::{Code, Request, Status};

use crate::common::*;

/// A token for `id`, and its policy hash.
fn token(id: &str) -> (String, String) {
    let token = credentials::new_token(id).unwrap();
    let hash = ipam_bindings::hex::encode(&credentials::sha256(token.as_bytes()));
    (token, hash)
}

/// The kinds of caller the matrix tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    NoCredentials,
    ReadsA,
    EditsA,
    EditsB,
    LookupOnly,
    WatchesAll,
    Provisioner,
    Expired,
    WrongSecret,
}

const KINDS: [Kind; 9] = [
    Kind::NoCredentials,
    Kind::ReadsA,
    Kind::EditsA,
    Kind::EditsB,
    Kind::LookupOnly,
    Kind::WatchesAll,
    Kind::Provisioner,
    Kind::Expired,
    Kind::WrongSecret,
];

struct Fixture {
    server: TestServer,
    dir: tempfile::TempDir,
    tokens: BTreeMap<Kind, Option<String>>,
    admin: String,
    account_a: String,
    account_b: String,
    prefix_a: api::Prefix,
    binding_a: api::ServiceBinding,
    policy_text: String,
}

fn grant(permission: &str, accounts: Option<&str>) -> String {
    match accounts {
        Some(account) => format!("{{ permission = \"{permission}\", accounts = [\"{account}\"] }}"),
        None => format!("{{ permission = \"{permission}\" }}"),
    }
}

fn token_entry(id: &str, hash: &str, principal: &str, grants: &[String], extra: &str) -> String {
    format!(
        "[[token]]\nid = \"{id}\"\nsha256 = \"{hash}\"\nprincipal = \"{principal}\"\ngrants = [{}]\n{extra}\n",
        grants.join(", ")
    )
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let (account_a, account_b) = (account(), account());
    let mut tokens = BTreeMap::new();
    let mut policy = String::new();
    let entries: [(Kind, &str, Vec<String>, &str); 7] = [
        (
            Kind::ReadsA,
            "reader-a",
            vec![grant("ip_prefixes.read", Some(&account_a))],
            "",
        ),
        (
            Kind::EditsA,
            "editor-a",
            vec![grant("ip_prefixes.edit", Some(&account_a))],
            "",
        ),
        (
            Kind::EditsB,
            "editor-b",
            vec![grant("ip_prefixes.edit", Some(&account_b))],
            "",
        ),
        (Kind::LookupOnly, "router", vec![grant("routing.lookup", None)], ""),
        (Kind::WatchesAll, "auditor", vec![grant("bindings.watch_all", None)], ""),
        (
            Kind::Provisioner,
            "provisioner",
            vec![grant("rollout.complete", None)],
            "",
        ),
        (
            Kind::Expired,
            "retired",
            vec![grant("ip_prefixes.edit", Some("*"))],
            "expires_at = 2020-01-01T00:00:00Z",
        ),
    ];
    for (kind, principal, grants, extra) in entries {
        let (token, hash) = token(principal);
        policy.push_str(&token_entry(principal, &hash, principal, &grants, extra));
        tokens.insert(kind, Some(token));
    }
    // The editor's id with another secret.
    let (wrong, _) = token("editor-a");
    tokens.insert(Kind::WrongSecret, Some(wrong));
    tokens.insert(Kind::NoCredentials, None);
    let (admin, hash) = token("admin");
    policy.push_str(&token_entry(
        "admin",
        &hash,
        "admin",
        &[grant("ip_prefixes.edit", Some("*")), grant("routing.lookup", None)],
        "",
    ));
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(&policy_path, &policy).unwrap();
    let mut options = ServerOptions::new(dir.path().join("data"), Duration::from_secs(3600));
    options.auth_policy = Some(policy_path);
    let server = TestServer::start_with_options(options).await;
    let prefix_a = server
        .prefixes()
        .create_prefix(authorized(&admin, prefix_request(&account_a, "198.51.100.0/24")))
        .await
        .unwrap()
        .into_inner();
    let binding_a = create_binding(&server, &admin, &prefix_a, "198.51.100.0/24")
        .await
        .unwrap();
    let prefix_b = server
        .prefixes()
        .create_prefix(authorized(&admin, prefix_request(&account_b, "203.0.113.0/24")))
        .await
        .unwrap()
        .into_inner();
    create_binding(&server, &admin, &prefix_b, "203.0.113.0/24")
        .await
        .unwrap();
    Fixture {
        server,
        dir,
        tokens,
        admin,
        account_a,
        account_b,
        prefix_a,
        binding_a,
        policy_text: policy,
    }
}

fn prefix_request(account_id: &str, cidr: &str) -> api::CreatePrefixRequest {
    api::CreatePrefixRequest {
        account_id: account_id.into(),
        cidr: cidr.into(),
        asn: None,
        description: String::new(),
        validate_only: false,
    }
}

async fn create_binding(
    api: &Api,
    token: &str,
    prefix: &api::Prefix,
    cidr: &str,
) -> Result<api::ServiceBinding, Status> {
    // The prefix-wide binding goes to Magic Transit, nested ones to the CDN.
    let prefix_wide = prefix.cidr == cidr;
    let request = api::CreateServiceBindingRequest {
        account_id: prefix.account_id.clone(),
        prefix_id: prefix.id.clone(),
        cidr: cidr.into(),
        service_id: if prefix_wide { MAGIC_TRANSIT } else { CDN }.into(),
        request_id: String::new(),
        validate_only: false,
    };
    Ok(api
        .bindings()
        .create_service_binding(authorized(token, request))
        .await?
        .into_inner())
}

/// The one prefix `account_id` holds, listed as `token`.
async fn only_prefix(f: &Fixture, token: &str, account_id: &str) -> api::Prefix {
    let request = api::ListPrefixesRequest {
        account_id: account_id.into(),
        ..Default::default()
    };
    let mut listed = (f.server.prefixes().list_prefixes(authorized(token, request)).await)
        .unwrap()
        .into_inner()
        .prefixes;
    assert_eq!(listed.len(), 1, "{account_id}'s prefixes as listed by {token}");
    listed.remove(0)
}

/// A request carrying `authorization: Bearer <token>`.
fn authorized<T>(token: &str, message: T) -> Request<T> {
    with_token(Some(token), message)
}

fn with_token<T>(token: Option<&str>, message: T) -> Request<T> {
    let mut request = Request::new(message);
    if let Some(token) = token {
        let value = format!("Bearer {token}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// Calls `method` of the fixture's account A (or, for a watch without an account, of every
/// account) as `token`. A method this test does not know fails the test: a new RPC needs a
/// row here, with the permission it needs.
async fn call(f: &Fixture, service: &str, method: &str, token: Option<&str>, n: usize) -> Result<(), Status> {
    let api: &Api = &f.server;
    let (a, prefix, binding) = (&f.account_a, &f.prefix_a, &f.binding_a);
    match (service, method) {
        ("Prefixes", "CreatePrefix") => {
            let cidr = format!("10.{}.{}.0/24", n / 256, n % 256);
            api.prefixes()
                .create_prefix(with_token(token, prefix_request(a, &cidr)))
                .await
                .map(drop)
        }
        ("Prefixes", "GetPrefix") => {
            let request = api::GetPrefixRequest {
                account_id: a.clone(),
                prefix_id: prefix.id.clone(),
            };
            api.prefixes().get_prefix(with_token(token, request)).await.map(drop)
        }
        ("Prefixes", "ListPrefixes") => {
            let request = api::ListPrefixesRequest {
                account_id: a.clone(),
                ..Default::default()
            };
            api.prefixes().list_prefixes(with_token(token, request)).await.map(drop)
        }
        ("Prefixes", "UpdatePrefix") => {
            let request = api::UpdatePrefixRequest {
                account_id: a.clone(),
                prefix_id: prefix.id.clone(),
                description: format!("edit {n}"),
                validate_only: false,
            };
            api.prefixes().update_prefix(with_token(token, request)).await.map(drop)
        }
        ("Prefixes", "DeletePrefix") => {
            // The prefix has bindings: a caller with the permission gets FAILED_PRECONDITION.
            let request = api::DeletePrefixRequest {
                account_id: a.clone(),
                prefix_id: prefix.id.clone(),
                validate_only: false,
            };
            api.prefixes().delete_prefix(with_token(token, request)).await.map(drop)
        }
        ("ServiceBindings", "CreateServiceBinding") => {
            let request = api::CreateServiceBindingRequest {
                account_id: a.clone(),
                prefix_id: prefix.id.clone(),
                cidr: format!("198.51.100.{}/32", n % 256),
                service_id: CDN.into(),
                request_id: String::new(),
                validate_only: false,
            };
            api.bindings()
                .create_service_binding(with_token(token, request))
                .await
                .map(drop)
        }
        ("ServiceBindings", "GetServiceBinding") => {
            let request = api::GetServiceBindingRequest {
                account_id: a.clone(),
                prefix_id: prefix.id.clone(),
                binding_id: binding.id.clone(),
            };
            api.bindings()
                .get_service_binding(with_token(token, request))
                .await
                .map(drop)
        }
        ("ServiceBindings", "ListServiceBindings") => {
            let request = api::ListServiceBindingsRequest {
                account_id: a.clone(),
                prefix_id: prefix.id.clone(),
                ..Default::default()
            };
            api.bindings()
                .list_service_bindings(with_token(token, request))
                .await
                .map(drop)
        }
        ("ServiceBindings", "DeleteServiceBinding") => {
            // The prefix-wide binding is in use: a caller with the permission gets
            // FAILED_PRECONDITION, nothing is deleted.
            let request = api::DeleteServiceBindingRequest {
                account_id: a.clone(),
                prefix_id: prefix.id.clone(),
                binding_id: binding.id.clone(),
                validate_only: false,
            };
            api.bindings()
                .delete_service_binding(with_token(token, request))
                .await
                .map(drop)
        }
        ("ServiceBindings", "WatchServiceBindings") => {
            let request = api::WatchServiceBindingsRequest {
                account_id: a.clone(),
                after_revision: Some(0),
                ..Default::default()
            };
            api.bindings()
                .watch_service_bindings(with_token(token, request))
                .await
                .map(drop)
        }
        ("Services", "ListServices") => {
            let request = api::ListServicesRequest { account_id: a.clone() };
            api.services().list_services(with_token(token, request)).await.map(drop)
        }
        ("Routing", "LookupAddress") => {
            let request = api::LookupAddressRequest {
                address: "198.51.100.7".into(),
                active_only: false,
            };
            api.routing().lookup_address(with_token(token, request)).await.map(drop)
        }
        ("Routing", "LookupAddresses") => {
            let request = api::LookupAddressesRequest::new(["198.51.100.7"], false, api::LookupView::Unspecified);
            api.routing()
                .lookup_addresses(with_token(token, request))
                .await
                .map(drop)
        }
        ("Routing", "PreviewChange") => {
            let create = api::CreateServiceBindingRequest {
                account_id: a.clone(),
                prefix_id: prefix.id.clone(),
                cidr: "198.51.100.128/25".into(),
                service_id: CDN.into(),
                ..Default::default()
            };
            let request = api::PreviewChangeRequest {
                change: Some(api::preview_change_request::Change::CreateServiceBinding(create)),
            };
            api.routing().preview_change(with_token(token, request)).await.map(drop)
        }
        ("Routing", "ExportRoutes") => {
            let request = api::ExportRoutesRequest {
                account_id: a.clone(),
                active_only: false,
            };
            api.routing().export_routes(with_token(token, request)).await.map(drop)
        }
        ("Routing", "WatchRoutes") => {
            // From the revision an export (by the administrator) read.
            let export = api::ExportRoutesRequest {
                account_id: a.clone(),
                active_only: false,
            };
            let mut exported = api
                .routing()
                .export_routes(authorized(&f.admin, export))
                .await?
                .into_inner();
            let revision = exported.message().await?.map_or(0, |message| message.revision);
            let request = api::WatchRoutesRequest {
                account_id: a.clone(),
                after_revision: revision,
                active_only: false,
            };
            api.routing().watch_routes(with_token(token, request)).await.map(drop)
        }
        ("Rollout", "CompleteProvisioning") => {
            // This server runs the timer rollout: a caller with the permission gets
            // FAILED_PRECONDITION (ROLLOUT_NOT_EXTERNAL).
            let request = api::CompleteProvisioningRequest {
                account_id: a.clone(),
                prefix_id: prefix.id.clone(),
                binding_id: binding.id.clone(),
            };
            RolloutClient::new(api.channel.clone())
                .complete_provisioning(with_token(token, request))
                .await
                .map(drop)
        }
        _ => panic!("{service}/{method} is not in the access matrix: map its permission, then add it here"),
    }
}

/// Which kinds of caller may call `method` (on account A).
fn allowed(method: &str) -> &'static [Kind] {
    match method {
        "CreatePrefix" | "UpdatePrefix" | "DeletePrefix" | "CreateServiceBinding" | "DeleteServiceBinding" => {
            &[Kind::EditsA]
        }
        "GetPrefix"
        | "ListPrefixes"
        | "GetServiceBinding"
        | "ListServiceBindings"
        | "ListServices"
        | "WatchServiceBindings"
        | "PreviewChange"
        | "ExportRoutes"
        | "WatchRoutes" => &[Kind::ReadsA, Kind::EditsA],
        "LookupAddress" | "LookupAddresses" => &[Kind::LookupOnly],
        "CompleteProvisioning" => &[Kind::Provisioner],
        other => panic!("{other} is not in the access matrix"),
    }
}

/// The reason a refused call must carry.
fn refusal(kind: Kind) -> (Code, &'static str) {
    match kind {
        Kind::NoCredentials => (Code::Unauthenticated, "CREDENTIALS_MISSING"),
        Kind::Expired | Kind::WrongSecret => (Code::Unauthenticated, "CREDENTIALS_INVALID"),
        _ => (Code::PermissionDenied, "PERMISSION_DENIED"),
    }
}

fn reason(status: &Status) -> String {
    use tonic_types::StatusExt;
    status
        .get_details_error_info()
        .map(|info| info.reason)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rpc_against_every_kind_of_caller() {
    let f = fixture().await;
    let set = prost_types::FileDescriptorSet::decode(ipam_bindings::pb::FILE_DESCRIPTOR_SET).unwrap();
    let mut n = 0;
    let mut methods = HashSet::new();
    for file in set.file.iter().filter(|file| file.package() == "addressing.v1") {
        for service in &file.service {
            for method in &service.method {
                methods.insert(method.name().to_string());
                for kind in KINDS {
                    n += 1;
                    let token = f.tokens[&kind].as_deref();
                    let result = call(&f, service.name(), method.name(), token, n).await;
                    let context = format!("{}/{} as {kind:?}: {result:?}", service.name(), method.name());
                    if allowed(method.name()).contains(&kind) {
                        // Allowed: anything but an access refusal (a delete of what is in use is
                        // FAILED_PRECONDITION, which the permission let it reach).
                        if let Err(status) = &result {
                            assert_eq!(status.code(), Code::FailedPrecondition, "{context}");
                        }
                    } else {
                        let status = result.expect_err(&context);
                        let (code, expected) = refusal(kind);
                        assert_eq!((status.code(), reason(&status).as_str()), (code, expected), "{context}");
                    }
                }
            }
        }
    }
    assert!(methods.len() >= 16, "{methods:?}");
    // A watch of every account needs bindings.watch_all, and nothing else gives it.
    for kind in KINDS {
        let request = api::WatchServiceBindingsRequest {
            after_revision: Some(0),
            ..Default::default()
        };
        let result = f
            .server
            .bindings()
            .watch_service_bindings(with_token(f.tokens[&kind].as_deref(), request))
            .await;
        if kind == Kind::WatchesAll {
            assert!(result.is_ok(), "{result:?}");
        } else {
            let (code, expected) = refusal(kind);
            let status = result.unwrap_err();
            assert_eq!((status.code(), reason(&status).as_str()), (code, expected), "{kind:?}");
        }
    }
    // The whole routing table needs routing.lookup, and nothing else gives it.
    for kind in KINDS {
        let request = api::ExportRoutesRequest::default();
        let result = f
            .server
            .routing()
            .export_routes(with_token(f.tokens[&kind].as_deref(), request))
            .await;
        if kind == Kind::LookupOnly {
            assert!(result.is_ok(), "{result:?}");
        } else {
            let (code, expected) = refusal(kind);
            let status = result.unwrap_err();
            assert_eq!((status.code(), reason(&status).as_str()), (code, expected), "{kind:?}");
        }
    }
    // Health and reflection need nothing.
    let health = f
        .server
        .health()
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await;
    assert!(health.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_says_nothing_about_what_exists() {
    let f = fixture().await;
    let editor_b = f.tokens[&Kind::EditsB].clone().unwrap();
    let get = |account_id: &str, prefix_id: &str| {
        let request = api::GetPrefixRequest {
            account_id: account_id.into(),
            prefix_id: prefix_id.into(),
        };
        let mut prefixes = f.server.prefixes();
        let request = authorized(&editor_b, request);
        async move { prefixes.get_prefix(request).await.unwrap_err() }
    };
    let real = get(&f.account_a, &f.prefix_a.id).await;
    let made_up = get(&f.account_a, &uuid::Uuid::new_v4().simple().to_string()).await;
    let nobody = account();
    let no_account = get(&nobody, &f.prefix_a.id).await;
    assert_eq!(real.code(), Code::PermissionDenied);
    assert_eq!(
        real.message(),
        format!(
            "Permission `ip_prefixes.read` denied on account `{}` (or it might not exist)",
            f.account_a
        )
    );
    assert_eq!((real.message(), real.details()), (made_up.message(), made_up.details()));
    let without = |status: &Status, account: &str| {
        let details = String::from_utf8_lossy(status.details()).replace(account, "X");
        (status.message().replace(account, "X"), details)
    };
    assert_eq!(without(&real, &f.account_a), without(&no_account, &nobody));
    assert_error(&real, Code::PermissionDenied, "PERMISSION_DENIED", 1402, None);
    // A malformed account id is named before the permission is checked.
    let malformed = get("acme", &f.prefix_a.id).await;
    assert_error(
        &malformed,
        Code::InvalidArgument,
        "INVALID_ACCOUNT_ID",
        1004,
        Some("account_id"),
    );
    // Another tenant's prefix id under an account one may read is NOT_FOUND.
    let reader = f.tokens[&Kind::ReadsA].clone().unwrap();
    let prefix_b = only_prefix(&f, &f.admin, &f.account_b).await;
    let foreign = f
        .server
        .prefixes()
        .get_prefix(authorized(
            &reader,
            api::GetPrefixRequest {
                account_id: f.account_a.clone(),
                prefix_id: prefix_b.id,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(foreign.code(), Code::NotFound);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_and_watches_show_only_the_account_granted() {
    let f = fixture().await;
    let reader = f.tokens[&Kind::ReadsA].clone().unwrap();
    assert_eq!(only_prefix(&f, &reader, &f.account_a).await.account_id, f.account_a);
    // A replay of account A shows A's binding, named by its actor, and nothing of B's.
    let request = api::WatchServiceBindingsRequest {
        account_id: f.account_a.clone(),
        after_revision: Some(0),
        ..Default::default()
    };
    let mut stream = f
        .server
        .bindings()
        .watch_service_bindings(authorized(&reader, request))
        .await
        .unwrap()
        .into_inner();
    let first = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.binding.as_ref().unwrap().account_id, f.account_a);
    assert_eq!(first.actor, "admin");
    // Live: B's next binding never shows; A's does.
    let editor_b = f.tokens[&Kind::EditsB].clone().unwrap();
    let prefix_b = only_prefix(&f, &editor_b, &f.account_b).await;
    create_binding(&f.server, &editor_b, &prefix_b, "203.0.113.0/25")
        .await
        .unwrap();
    let editor_a = f.tokens[&Kind::EditsA].clone().unwrap();
    let nested = create_binding(&f.server, &editor_a, &f.prefix_a, "198.51.100.0/25")
        .await
        .unwrap();
    let next = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.binding.unwrap().id, nested.id);
    assert_eq!(next.actor, "editor-a");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_revokes_calls_and_open_watches() {
    let f = fixture().await;
    let reader = f.tokens[&Kind::ReadsA].clone().unwrap();
    let request = api::WatchServiceBindingsRequest {
        account_id: f.account_a.clone(),
        ..Default::default()
    };
    let mut stream = f
        .server
        .bindings()
        .watch_service_bindings(authorized(&reader, request))
        .await
        .unwrap()
        .into_inner();
    let routes = api::WatchRoutesRequest {
        account_id: f.account_a.clone(),
        after_revision: 0,
        active_only: false,
    };
    let mut route_stream = f
        .server
        .routing()
        .watch_routes(authorized(&reader, routes))
        .await
        .unwrap()
        .into_inner();
    // The reader loses its grant; a broken file in between changes nothing.
    let policy_path = f.dir.path().join("policy.toml");
    std::fs::write(&policy_path, "[[token]]\nthis is not toml").unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let get = api::GetPrefixRequest {
        account_id: f.account_a.clone(),
        prefix_id: f.prefix_a.id.clone(),
    };
    f.server
        .prefixes()
        .get_prefix(authorized(&reader, get.clone()))
        .await
        .expect("the old policy stays");
    let revoked = f.policy_text.replace(
        &format!("grants = [{}]", grant("ip_prefixes.read", Some(&f.account_a))),
        "grants = []",
    );
    assert_ne!(revoked, f.policy_text);
    std::fs::write(&policy_path, revoked).unwrap();
    let ended = tokio::time::timeout(PATIENCE, stream.message())
        .await
        .expect("the watch ends")
        .unwrap_err();
    assert_error(&ended, Code::PermissionDenied, "PERMISSION_DENIED", 1402, None);
    // After the deltas it had to send (from revision 0), the route watch ends too.
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match route_stream.message().await {
                Ok(Some(_delta)) => continue,
                Ok(None) => panic!("the route watch ended without a status"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the route watch ends");
    assert_error(&ended, Code::PermissionDenied, "PERMISSION_DENIED", 1402, None);
    let refused = f
        .server
        .prefixes()
        .get_prefix(authorized(&reader, get))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_rate_limit_is_resource_exhausted_with_retry_info() {
    use tonic_types::StatusExt;
    let dir = tempfile::tempdir().unwrap();
    let (limited, hash) = token("limited");
    let policy = token_entry(
        "limited",
        &hash,
        "limited",
        &[grant("routing.lookup", None)],
        "rate_limit = { per_second = 1, burst = 2 }",
    );
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let mut options = ServerOptions::new(dir.path().join("data"), Duration::from_secs(3600));
    options.auth_policy = Some(dir.path().join("policy.toml"));
    let server = TestServer::start_with_options(options).await;
    let lookup = || api::LookupAddressRequest {
        address: "192.0.2.1".into(),
        active_only: false,
    };
    let mut outcomes = Vec::new();
    for _ in 0..4 {
        outcomes.push(server.routing().lookup_address(authorized(&limited, lookup())).await);
    }
    // The burst: answered (the address is in no prefix); then refused.
    assert_eq!(outcomes[0].as_ref().unwrap_err().code(), Code::NotFound);
    let refused = outcomes[3].as_ref().unwrap_err();
    assert_error(refused, Code::ResourceExhausted, "RATE_LIMITED", 1403, None);
    let retry = refused.get_details_retry_info().expect("RetryInfo");
    assert!(
        retry.retry_delay.is_some_and(|delay| delay <= Duration::from_secs(1)),
        "{retry:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_names_its_actor() {
    let dir = tempfile::tempdir().unwrap();
    let (editor, hash) = token("ci1");
    let account_id = account();
    let policy = token_entry("ci1", &hash, "ci-bot", &[grant("ip_prefixes.edit", Some("*"))], "");
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let data = dir.path().join("data");
    let mut options = ServerOptions::new(data.clone(), Duration::from_millis(50));
    options.auth_policy = Some(dir.path().join("policy.toml"));
    let mut server = TestServer::start_with_options(options).await;
    let mut request = authorized(&editor, prefix_request(&account_id, "192.0.2.0/24"));
    request.metadata_mut().insert("x-request-id", "call-7".parse().unwrap());
    let prefix = server.prefixes().create_prefix(request).await.unwrap().into_inner();
    let request = api::CreateServiceBindingRequest {
        account_id: account_id.clone(),
        prefix_id: prefix.id.clone(),
        cidr: "192.0.2.0/24".into(),
        service_id: MAGIC_TRANSIT.into(),
        request_id: "idem-1".into(),
        validate_only: false,
    };
    let binding = server
        .bindings()
        .create_service_binding(authorized(&editor, request))
        .await
        .unwrap()
        .into_inner();
    // The rollout activates it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let get = api::GetServiceBindingRequest {
            account_id: account_id.clone(),
            prefix_id: prefix.id.clone(),
            binding_id: binding.id.clone(),
        };
        let got = server
            .bindings()
            .get_service_binding(authorized(&editor, get))
            .await
            .unwrap()
            .into_inner();
        if got
            .provisioning
            .is_some_and(|p| p.state == api::ProvisioningState::Active as i32)
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never activated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop().await.unwrap();
    wait_until_unlocked(&data).await;
    let events = export(&data);
    assert_eq!(events.len(), 3, "{events:?}");
    for event in &events {
        assert!(
            event["actor"]["principal"].as_str().is_some_and(|p| !p.is_empty()),
            "{event}"
        );
        assert!(!event.to_string().contains(&editor), "a secret in the log: {event}");
    }
    assert_eq!(events[0]["actor"]["principal"], "ci-bot");
    assert_eq!(events[0]["actor"]["credential"], "token:ci1");
    assert_eq!(events[0]["actor"]["call_id"], "call-7");
    assert!(events[0]["actor"]["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert_eq!(events[1]["actor"]["request_id"], "idem-1");
    assert_eq!(events[2]["actor"]["principal"], "system:rollout");
}

/// The log of `dir` as `export` writes it.
fn export(dir: &Path) -> Vec<serde_json::Value> {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ipam-bindings"))
        .arg("--data-dir")
        .arg(dir)
        .arg("export")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_last_xfcc_element_written_by_our_sidecar_counts() {
    let dir = tempfile::tempdir().unwrap();
    let sidecar = "spiffe://test/ns/ipam/sa/sidecar";
    let router = "spiffe://test/ns/edge/sa/router";
    let policy = format!(
        "[[principal]]\nid = \"{router}\"\ngrants = [{}]\n",
        grant("routing.lookup", None)
    );
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let mut options = ServerOptions::new(dir.path().join("data"), Duration::from_secs(3600));
    options.auth_policy = Some(dir.path().join("policy.toml"));
    options.trust_xfcc = Some(sidecar.into());
    let server = TestServer::start_with_options(options).await;
    let lookup = |xfcc: &str| {
        let mut request = Request::new(api::LookupAddressRequest {
            address: "192.0.2.1".into(),
            active_only: false,
        });
        request
            .metadata_mut()
            .insert("x-forwarded-client-cert", xfcc.parse().unwrap());
        let mut routing = server.routing();
        async move { routing.lookup_address(request).await.unwrap_err() }
    };
    // Ours, last: the router is known (the address is simply not covered).
    let ours = format!("By={sidecar};Hash=ab;URI={router}");
    assert_eq!(lookup(&ours).await.code(), Code::NotFound);
    // An element the client wrote, followed by ours for an unknown identity: ours counts.
    let forged = format!("By={sidecar};URI={router},By={sidecar};URI=spiffe://test/ns/x/sa/nobody");
    assert_eq!(lookup(&forged).await.code(), Code::PermissionDenied);
    // A last element not written by our sidecar: no identity at all.
    let appended = format!("{ours},By=spiffe://elsewhere;URI={router}");
    assert_eq!(reason(&lookup(&appended).await), "CREDENTIALS_MISSING");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_control_off_is_refused_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    let options = ServerOptions::new(dir.path().join("data"), Duration::from_secs(3600));
    let refused = ipam_bindings::server::serve(options.clone(), listener, async {})
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("is not a loopback address"), "{refused}");
    // Enforcing without a policy is refused too; a broken policy is refused at start.
    let mut enforce = options.clone();
    enforce.auth = Some(ipam_bindings::config::AuthMode::Enforce);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = ipam_bindings::server::serve(enforce, listener, async {})
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("needs a policy"), "{refused}");
    let mut broken = options.clone();
    std::fs::write(dir.path().join("broken.toml"), "[[token]]\nid = 1").unwrap();
    broken.auth_policy = Some(dir.path().join("broken.toml"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let refused = ipam_bindings::server::serve(broken, listener, async {})
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("broken.toml"), "{refused}");
    // Said explicitly, it starts.
    let mut allowed = options;
    allowed.allow_unauthenticated = true;
    let listener = tokio::net::TcpListener::bind("0.0.0.0:0").await.unwrap();
    ipam_bindings::server::serve(allowed, listener, async {}).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_answers_401_and_403_and_serves_the_granted() {
    let f = fixture().await;
    let path = |account: &str| format!("/client/v4/accounts/{account}/addressing/prefixes");
    let bearer = |kind: Kind| format!("Bearer {}", f.tokens[&kind].clone().unwrap());
    let missing = http(f.server.http_address, "GET", &path(&f.account_a), &[], None).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.json["errors"][0]["code"], 1400);
    let invalid = http(
        f.server.http_address,
        "GET",
        &path(&f.account_a),
        &[("authorization", &bearer(Kind::WrongSecret))],
        None,
    )
    .await;
    assert_eq!(
        (invalid.status, invalid.json["errors"][0]["code"].clone()),
        (401, 1401.into())
    );
    let other = http(
        f.server.http_address,
        "GET",
        &path(&f.account_a),
        &[("authorization", &bearer(Kind::EditsB))],
        None,
    )
    .await;
    assert_eq!(
        (other.status, other.json["errors"][0]["code"].clone()),
        (403, 1402.into())
    );
    // Refused before the body is read: a malformed body from a caller without the grant is 403.
    let headers = [
        ("authorization", bearer(Kind::ReadsA)),
        ("content-type", "application/json".into()),
    ];
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let write = http(
        f.server.http_address,
        "POST",
        &path(&f.account_a),
        &headers,
        Some("{not json"),
    )
    .await;
    assert_eq!(write.status, 403);
    let read = http(
        f.server.http_address,
        "GET",
        &path(&f.account_a),
        &[("authorization", &bearer(Kind::ReadsA))],
        None,
    )
    .await;
    assert_eq!(read.status, 200);
    assert_eq!(read.json["result"][0]["id"], f.prefix_a.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_reaches_a_log_line() {
    let dir = tempfile::tempdir().unwrap();
    let (token, hash) = token("ci1");
    let (wrong, _) = self::token("ci1");
    let policy = token_entry("ci1", &hash, "ci-bot", &[grant("ip_prefixes.edit", Some("*"))], "");
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    let policy = dir.path().join("policy.toml");
    let mut server = ServerProcess::start(
        &dir.path().join("data"),
        &["--auth-policy", policy.to_str().unwrap()],
        &[("RUST_LOG", "debug")],
    )
    .await;
    let mut seen = std::mem::take(&mut server.before_listening);
    let api = server.api();
    let account_id = account();
    api.prefixes()
        .create_prefix(authorized(&token, prefix_request(&account_id, "192.0.2.0/24")))
        .await
        .unwrap();
    let refused = api
        .prefixes()
        .create_prefix(authorized(&wrong, prefix_request(&account_id, "192.0.3.0/24")))
        .await;
    assert_eq!(refused.unwrap_err().code(), Code::Unauthenticated);
    server.child.kill().unwrap();
    let _ = server.child.wait();
    while let Ok(Some(line)) = tokio::time::timeout(Duration::from_secs(2), server.lines.recv()).await {
        seen.push(line);
    }
    assert!(
        seen.iter()
            .any(|line| line.contains("\"audit\"") && line.contains("CREDENTIALS_INVALID")),
        "the refusal is audited"
    );
    for secret in [&token, &wrong] {
        let secret_part = secret.rsplit('_').next().unwrap();
        assert!(
            !seen.iter().any(|line| line.contains(secret_part)),
            "a secret in the logs"
        );
    }
}
