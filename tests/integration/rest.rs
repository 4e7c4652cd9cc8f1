//! The v4 JSON API against the real server: every endpoint and its envelope, errors with their
//! status, code and pointer, idempotency, tenancy, and changes made over one surface read back
//! over the other.

use serde_json::{Value, json};

use crate::common::*;

const JSON: (&str, &str) = ("content-type", "application/json");

fn base(account_id: &str) -> String {
    format!("/client/v4/accounts/{account_id}/addressing")
}

/// A success envelope's result, after checking the envelope is exactly the four fields.
fn result(reply: &HttpReply, status: u16) -> Value {
    assert_eq!(reply.status, status, "{}", reply.body);
    let envelope = reply.json.as_object().expect("a JSON object");
    let mut keys: Vec<&str> = envelope.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["errors", "messages", "result", "success"], "{}", reply.body);
    assert_eq!(
        (&reply.json["success"], &reply.json["errors"], &reply.json["messages"]),
        (&json!(true), &json!([]), &json!([]))
    );
    reply.json["result"].clone()
}

/// Checks a failure: its status, the single error's code and pointer (None: no `source`).
fn failure(reply: &HttpReply, status: u16, code: u64, pointer: Option<&str>) {
    assert_eq!(reply.status, status, "{}", reply.body);
    assert_eq!(
        (&reply.json["success"], &reply.json["result"], &reply.json["messages"]),
        (&json!(false), &Value::Null, &json!([])),
        "{}",
        reply.body
    );
    let error = &reply.json["errors"][0];
    assert_eq!(error["code"], json!(code), "{}", reply.body);
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    assert_eq!(error["source"]["pointer"].as_str(), pointer, "{}", reply.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_in_the_seed_example() {
    let server = TestServer::start().await;
    let address = server.http_address;
    let account_id = account();
    let base = base(&account_id);

    let created = http(
        address,
        "POST",
        &format!("{base}/prefixes"),
        &[("content-type", "application/json; charset=utf-8")],
        Some(r#"{"cidr":"192.0.2.0/24","asn":64496,"description":"docs","unknown":1}"#),
    )
    .await;
    let prefix = result(&created, 201);
    assert_eq!(
        (
            &prefix["cidr"],
            &prefix["asn"],
            &prefix["description"],
            &prefix["account_id"]
        ),
        (
            &json!("192.0.2.0/24"),
            &json!(64496),
            &json!("docs"),
            &json!(account_id)
        )
    );
    let created_at = prefix["created_at"].as_str().unwrap();
    assert!(
        created_at.ends_with('Z') && created_at.len() == "2026-12-02T21:55:52.493171Z".len(),
        "{created_at}"
    );
    let prefix_id = prefix["id"].as_str().unwrap().to_string();
    let prefix_path = format!("{base}/prefixes/{prefix_id}");

    // No asn: null.
    let other = http(
        address,
        "POST",
        &format!("{base}/prefixes"),
        &[JSON],
        Some(r#"{"cidr":"2001:db8::/48"}"#),
    )
    .await;
    assert_eq!(result(&other, 201)["asn"], Value::Null);

    let listed = result(&http(address, "GET", &format!("{base}/prefixes"), &[], None).await, 200);
    let cidrs: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["cidr"].as_str().unwrap())
        .collect();
    assert_eq!(cidrs, ["192.0.2.0/24", "2001:db8::/48"], "IPv4 first");
    assert_eq!(
        result(&http(address, "GET", &prefix_path, &[], None).await, 200),
        prefix
    );
    let edited = http(
        address,
        "PATCH",
        &prefix_path,
        &[JSON],
        Some(r#"{"description":"new"}"#),
    )
    .await;
    assert_eq!(result(&edited, 200)["description"], "new");

    let bindings_path = format!("{prefix_path}/bindings");
    let wide = http(
        address,
        "POST",
        &bindings_path,
        &[JSON],
        Some(&format!(r#"{{"cidr":"192.0.2.0/24","service_id":"{MAGIC_TRANSIT}"}}"#)),
    )
    .await;
    let wide = result(&wide, 201);
    assert_eq!(
        wide,
        json!({"id": wide["id"], "cidr": "192.0.2.0/24", "provisioning": {"state": "provisioning"},
               "service_id": MAGIC_TRANSIT, "service_name": "Magic Transit"})
    );
    let cdn = http(
        address,
        "POST",
        &bindings_path,
        &[JSON],
        Some(&format!(r#"{{"cidr":"192.0.2.8/29","service_id":"{CDN}"}}"#)),
    )
    .await;
    let cdn = result(&cdn, 201);
    let listed = result(&http(address, "GET", &bindings_path, &[], None).await, 200);
    assert_eq!(listed, json!([wide, cdn]));
    let cdn_path = format!("{bindings_path}/{}", cdn["id"].as_str().unwrap());
    assert_eq!(result(&http(address, "GET", &cdn_path, &[], None).await, 200), cdn);
    let services = result(&http(address, "GET", &format!("{base}/services"), &[], None).await, 200);
    assert_eq!(services[0], json!({"id": MAGIC_TRANSIT, "name": "Magic Transit"}));
    assert_eq!(services.as_array().unwrap().len(), 3);

    // Deletes: a JSON content type with an empty body is fine.
    let deleted = http(address, "DELETE", &cdn_path, &[JSON], None).await;
    assert_eq!(result(&deleted, 200), Value::Null);
    let wide_path = format!("{bindings_path}/{}", wide["id"].as_str().unwrap());
    assert_eq!(
        result(&http(address, "DELETE", &wide_path, &[], None).await, 200),
        Value::Null
    );
    assert_eq!(
        result(&http(address, "DELETE", &prefix_path, &[], None).await, 200),
        Value::Null
    );
    failure(&http(address, "GET", &prefix_path, &[], None).await, 404, 1000, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_carry_status_code_and_pointer() {
    let server = TestServer::start().await;
    let address = server.http_address;
    let account_id = account();
    let base = base(&account_id);
    let prefixes = format!("{base}/prefixes");
    let post = |path: String, headers: Vec<(&'static str, &'static str)>, body: &'static str| async move {
        http(address, "POST", &path, &headers, Some(body)).await
    };

    let cases: [(&str, u16, u64, Option<&str>); 10] = [
        (r#"{"cidr":"192.0.2.0/33"}"#, 400, 1001, Some("/cidr")),
        (r#"{"cidr":"192.0.2.1/24"}"#, 400, 1007, Some("/cidr")),
        (r#"{"cidr":"192.0.2.0/25"}"#, 400, 1008, Some("/cidr")),
        (r#"{"asn":1}"#, 400, 1001, Some("/cidr")),
        (r#"{"cidr":5}"#, 400, 1019, Some("/cidr")),
        (r#"{"cidr":"192.0.2.0/24","asn":-1}"#, 400, 1019, Some("/asn")),
        (r#"{"cidr":"192.0.2.0/24","asn":4294967296}"#, 400, 1019, Some("/asn")),
        (r#"{"cidr":"192.0.2.0/24","asn":"1"}"#, 400, 1019, Some("/asn")),
        (r#"{"cidr":"192.0.2.0/24"#, 400, 1500, Some("")),
        (r#"["192.0.2.0/24"]"#, 400, 1500, Some("")),
    ];
    for (body, status, code, pointer) in cases {
        failure(&post(prefixes.clone(), vec![JSON], body).await, status, code, pointer);
    }
    let long = format!(r#"{{"cidr":"192.0.2.0/24","description":"{}"}}"#, "x".repeat(1001));
    let reply = http(address, "POST", &prefixes, &[JSON], Some(&long)).await;
    failure(&reply, 400, 1011, Some("/description"));
    // Content type: wrong or missing on a request with a body.
    failure(
        &post(prefixes.clone(), vec![("content-type", "text/plain")], "{}").await,
        400,
        1501,
        None,
    );
    failure(
        &post(prefixes.clone(), vec![], r#"{"cidr":"192.0.2.0/24"}"#).await,
        400,
        1501,
        None,
    );
    // A bad account id in the path: no pointer (path parameters have none).
    failure(
        &post(format!("{}/prefixes", base_of("not-hex")), vec![JSON], "{}").await,
        400,
        1004,
        None,
    );
    failure(
        &http(address, "GET", &format!("{}/services", base_of("x")), &[], None).await,
        400,
        1004,
        None,
    );
    // Routes and methods.
    failure(
        &http(address, "GET", "/client/v4/zones", &[], None).await,
        404,
        1502,
        None,
    );
    failure(&http(address, "GET", "/nowhere", &[], None).await, 404, 1502, None);
    failure(
        &http(address, "PUT", &prefixes, &[JSON], Some("{}")).await,
        405,
        1503,
        None,
    );

    // Rules.
    let prefix = result(
        &post(prefixes.clone(), vec![JSON], r#"{"cidr":"192.0.2.0/24"}"#).await,
        201,
    );
    let overlap = post(prefixes.clone(), vec![JSON], r#"{"cidr":"192.0.0.0/16"}"#).await;
    failure(&overlap, 409, 1100, Some("/cidr"));
    assert_eq!(overlap.headers.get("x-should-retry").map(String::as_str), Some("false"));
    let bindings = format!("{prefixes}/{}/bindings", prefix["id"].as_str().unwrap());
    let bind = |body: String| {
        let bindings = bindings.clone();
        async move { http(address, "POST", &bindings, &[JSON], Some(&body)).await }
    };
    let first = bind(format!(r#"{{"cidr":"192.0.2.0/25","service_id":"{CDN}"}}"#)).await;
    failure(&first, 400, 1101, Some("/cidr"));
    let unknown = bind(r#"{"cidr":"192.0.2.0/24","service_id":"00000000000000000000000000000000"}"#.into()).await;
    failure(&unknown, 400, 1003, Some("/service_id"));
    failure(
        &bind(r#"{"cidr":"192.0.2.0/24"}"#.into()).await,
        400,
        1003,
        Some("/service_id"),
    );
    result(
        &bind(format!(r#"{{"cidr":"192.0.2.0/24","service_id":"{CDN}"}}"#)).await,
        201,
    );
    let layered = bind(format!(r#"{{"cidr":"192.0.2.0/25","service_id":"{MAGIC_TRANSIT}"}}"#)).await;
    failure(&layered, 400, 1102, Some("/service_id"));
    let delete_prefix = http(
        address,
        "DELETE",
        &format!("{prefixes}/{}", prefix["id"].as_str().unwrap()),
        &[],
        None,
    )
    .await;
    failure(&delete_prefix, 400, 1104, None);
    let missing_binding = format!("{bindings}/{}", account());
    failure(
        &http(address, "GET", &missing_binding, &[], None).await,
        404,
        1002,
        None,
    );
}

fn base_of(account_id: &str) -> String {
    base(account_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotency_keys_and_tenancy() {
    let server = TestServer::start().await;
    let address = server.http_address;
    let (owner, stranger) = (account(), account());
    let prefix = server.create_prefix(&owner, "198.51.100.0/24").await;
    let bindings = format!("{}/prefixes/{}/bindings", base(&owner), prefix.id);
    let body = format!(r#"{{"cidr":"198.51.100.0/24","service_id":"{MAGIC_TRANSIT}"}}"#);
    let create = |key: String, body: String| {
        let bindings = bindings.clone();
        async move {
            http(
                address,
                "POST",
                &bindings,
                &[JSON, ("idempotency-key", &key)],
                Some(&body),
            )
            .await
        }
    };
    let first = result(&create("key-1".into(), body.clone()).await, 201);
    let retry = result(&create("key-1".into(), body.clone()).await, 201);
    assert_eq!(first, retry, "a retry answers with the original binding");
    assert_eq!(
        server.list_all_bindings(&prefix, 0).await.len(),
        1,
        "and appends nothing"
    );
    let other = format!(r#"{{"cidr":"198.51.100.0/25","service_id":"{CDN}"}}"#);
    failure(
        &create("key-1".into(), other).await,
        400,
        1015,
        Some("/headers/idempotency-key"),
    );
    failure(
        &create("k".repeat(256), body.clone()).await,
        400,
        1014,
        Some("/headers/idempotency-key"),
    );
    // The same key over gRPC is the same request id.
    let request = ipam_bindings::pb::api::CreateServiceBindingRequest {
        account_id: owner.clone(),
        prefix_id: prefix.id.clone(),
        cidr: "198.51.100.0/24".into(),
        service_id: MAGIC_TRANSIT.into(),
        request_id: "key-1".into(),
        validate_only: false,
    };
    let over_grpc = server
        .bindings()
        .create_service_binding(request.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(over_grpc.id, first["id"].as_str().unwrap());

    // Another account's prefix answers exactly like one that does not exist.
    let foreign = http(
        address,
        "GET",
        &format!("{}/prefixes/{}", base(&stranger), prefix.id),
        &[],
        None,
    )
    .await;
    let missing_id = account();
    let missing = http(
        address,
        "GET",
        &format!("{}/prefixes/{missing_id}", base(&stranger)),
        &[],
        None,
    )
    .await;
    failure(&foreign, 404, 1000, None);
    assert_eq!(
        foreign.body.replace(&prefix.id, "ID"),
        missing.body.replace(&missing_id, "ID")
    );
    let foreign_list = http(
        address,
        "GET",
        &format!("{}/prefixes/{}/bindings", base(&stranger), prefix.id),
        &[],
        None,
    )
    .await;
    failure(&foreign_list, 404, 1000, None);
    assert_eq!(
        result(
            &http(address, "GET", &format!("{}/prefixes", base(&stranger)), &[], None).await,
            200
        ),
        json!([])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_over_one_surface_is_read_over_the_other() {
    let server = TestServer::start().await;
    let address = server.http_address;
    let account_id = account();

    // gRPC create -> REST list.
    let prefix = server.create_prefix(&account_id, "203.0.113.0/24").await;
    let listed = result(
        &http(address, "GET", &format!("{}/prefixes", base(&account_id)), &[], None).await,
        200,
    );
    assert_eq!(listed[0]["id"], json!(prefix.id));

    // REST create -> gRPC get and watch.
    let mut watch = server
        .bindings()
        .watch_service_bindings(ipam_bindings::pb::api::WatchServiceBindingsRequest {
            account_id: account_id.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let bindings = format!("{}/prefixes/{}/bindings", base(&account_id), prefix.id);
    let body = format!(r#"{{"cidr":"203.0.113.0/24","service_id":"{SPECTRUM}"}}"#);
    let created = result(&http(address, "POST", &bindings, &[JSON], Some(&body)).await, 201);
    let request = ipam_bindings::pb::api::GetServiceBindingRequest {
        account_id: account_id.clone(),
        prefix_id: prefix.id.clone(),
        binding_id: created["id"].as_str().unwrap().into(),
    };
    let over_grpc = server
        .bindings()
        .get_service_binding(request)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (over_grpc.cidr.as_str(), over_grpc.service_name.as_str()),
        ("203.0.113.0/24", "Spectrum")
    );
    let event = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(event.binding.unwrap().id, over_grpc.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_and_metrics_apply_to_rest() {
    let server = TestServer::start().await;
    let address = server.http_address;
    let path = format!("{}/services", base(&account()));
    let reply = http(address, "GET", &path, &[("x-request-id", "rest-1")], None).await;
    assert_eq!(reply.headers.get("x-request-id").map(String::as_str), Some("rest-1"));
    let generated = http(address, "GET", &path, &[], None).await;
    assert_eq!(generated.headers.get("x-request-id").map(String::len), Some(32));
    http(address, "GET", "/client/v4/nowhere", &[], None).await;
    let samples = scrape_metrics(server.metrics_address).await;
    let route = "/accounts/{account_id}/addressing/services";
    let ok = format!(r#"ipam_http_requests_total{{method="GET",route="{route}",status="200"}}"#);
    assert_eq!(samples.get(&ok), Some(&2.0), "{samples:?}");
    let unknown = r#"ipam_http_requests_total{method="GET",route="unknown",status="404"}"#;
    assert_eq!(samples.get(unknown), Some(&1.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_call_cap_refuses_rest_calls_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ipam_bindings::server::ServerOptions::new(dir.path(), std::time::Duration::from_secs(3600));
    options.max_concurrent_calls = 1;
    let server = TestServer::start_with_options(options).await;
    let (address, prefixes) = (server.http_address, format!("{}/prefixes", base(&account())));
    let mut calls = tokio::task::JoinSet::new();
    for index in 0..64 {
        let prefixes = prefixes.clone();
        calls.spawn(async move {
            let body = format!(r#"{{"cidr":"10.{index}.0.0/16"}}"#);
            http(address, "POST", &prefixes, &[JSON], Some(&body)).await
        });
    }
    let (mut ok, mut refused) = (0, 0);
    while let Some(reply) = calls.join_next().await {
        let reply = reply.unwrap();
        if reply.status == 201 {
            ok += 1;
        } else {
            failure(&reply, 429, 1302, None);
            refused += 1;
        }
    }
    assert!(ok >= 1 && refused >= 1, "ok {ok}, refused {refused}");
}
