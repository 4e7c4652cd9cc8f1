//! The edge in front of every call: x-request-id, traceparent in JSON logs, size and
//! concurrency limits.

use std::sync::Arc;
use std::time::Duration;

use ipam_bindings::pb::api;
use ipam_bindings::server::ServerOptions;
use tonic::Code;
use tonic_types::StatusExt;

use crate::common::*;

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let server = TestServer::start().await;
    let mut request = tonic::Request::new(api::ListServicesRequest { account_id: account() });
    request.metadata_mut().insert("x-request-id", "req-42".parse().unwrap());
    let response = server.services().list_services(request).await.unwrap();
    assert_eq!(response.metadata().get("x-request-id").unwrap(), "req-42");
    let response = server
        .services()
        .list_services(api::ListServicesRequest { account_id: account() })
        .await
        .unwrap();
    assert_eq!(
        response.metadata().get("x-request-id").unwrap().len(),
        32,
        "a generated id"
    );
    // Errors carry it too.
    let mut request = tonic::Request::new(api::ListServicesRequest {
        account_id: "bad".into(),
    });
    request.metadata_mut().insert("x-request-id", "req-43".parse().unwrap());
    let status = server.services().list_services(request).await.unwrap_err();
    assert_eq!(status.metadata().get("x-request-id").unwrap(), "req-43");
}

/// Every reply, an error's too, names its time in one `date` header (the edge sets it so that
/// HPACK never indexes it; hyper would add its own otherwise) and the server's revision, call
/// after call on one connection.
#[tokio::test]
async fn replies_carry_one_date_and_the_revision() {
    let server = TestServer::start().await;
    let mut services = server.services();
    for account_id in [account(), account(), "bad".to_string()] {
        let metadata = match services.list_services(api::ListServicesRequest { account_id }).await {
            Ok(response) => response.metadata().clone(),
            Err(status) => status.metadata().clone(),
        };
        let dates: Vec<_> = metadata.get_all("date").iter().collect();
        assert_eq!(dates.len(), 1, "{metadata:?}");
        let date = httpdate::parse_http_date(dates[0].to_str().unwrap()).expect("an HTTP date");
        let now = std::time::SystemTime::now();
        let skew = now.duration_since(date).unwrap_or_else(|ahead| ahead.duration());
        assert!(skew <= Duration::from_secs(2), "{date:?} is not now ({now:?})");
        let revision = metadata.get("x-ipam-revision").expect("the revision").to_str().unwrap();
        assert!(revision.parse::<u64>().is_ok(), "{revision}");
    }
}

/// `x-request-id` and `x-ipam-revision` are not in HPACK's static table, and their values go
/// as literals never indexed: the first reply on a connection lets HPACK index each, so that
/// later replies name them by their index instead of spelling them out. Read off the wire
/// with a plain HTTP/2 client: each name, Huffman-coded (RFC 7541, Appendix B), appears in
/// the first reply's header block only.
#[tokio::test]
async fn the_reply_headers_names_are_spelled_out_once_per_connection() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const REQUEST_ID: &[u8] = &[0xf2, 0xb5, 0x85, 0xed, 0x69, 0x50, 0x95, 0x8d, 0x27];
    const REVISION: &[u8] = &[0xf2, 0xb1, 0xab, 0x1d, 0x2b, 0x58, 0x5e, 0xe6, 0x41, 0x8f, 0x57];
    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut frame = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        frame.extend([kind, flags]);
        frame.extend(stream.to_be_bytes());
        frame.extend(payload);
        frame
    }
    fn literal(out: &mut Vec<u8>, text: &str) {
        out.push(text.len() as u8);
        out.extend(text.as_bytes());
    }
    let contains = |block: &[u8], name: &[u8]| block.windows(name.len()).any(|window| window == name);

    let server = TestServer::start().await;
    let mut connection = tokio::net::TcpStream::connect(server.address).await.unwrap();
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(4, 0, 0, &[]));
    connection.write_all(&hello).await.unwrap();
    // POST, http, then literals not indexed: :path, :authority, content-type, te.
    let mut request = vec![0x83, 0x86, 0x04];
    literal(&mut request, "/grpc.health.v1.Health/Check");
    request.push(0x01);
    literal(&mut request, "localhost");
    request.extend([0x0f, 0x10]);
    literal(&mut request, "application/grpc");
    request.push(0x00);
    literal(&mut request, "te");
    literal(&mut request, "trailers");

    let mut blocks = Vec::new();
    for call in 0..4u32 {
        let stream = 2 * call + 1;
        let mut call_frames = frame(1, 0x4, stream, &request);
        call_frames.extend(frame(0, 0x1, stream, &[0; 5]));
        connection.write_all(&call_frames).await.unwrap();
        let mut reply_headers = None;
        loop {
            let mut head = [0u8; 9];
            tokio::time::timeout(PATIENCE, connection.read_exact(&mut head))
                .await
                .unwrap()
                .unwrap();
            let mut payload = vec![0u8; u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize];
            connection.read_exact(&mut payload).await.unwrap();
            let (kind, flags, on) = (head[3], head[4], u32::from_be_bytes(head[5..9].try_into().unwrap()));
            match kind {
                4 if flags & 0x1 == 0 => connection.write_all(&frame(4, 0x1, 0, &[])).await.unwrap(),
                6 if flags & 0x1 == 0 => connection.write_all(&frame(6, 0x1, 0, &payload)).await.unwrap(),
                7 => panic!("GOAWAY: {payload:?}"),
                1 if on == stream && reply_headers.is_none() => reply_headers = Some(payload),
                1 if on == stream => break,
                _ => {}
            }
        }
        blocks.push(reply_headers.expect("the reply's headers"));
    }
    for (name, huffman) in [("x-request-id", REQUEST_ID), ("x-ipam-revision", REVISION)] {
        let spelled: Vec<bool> = blocks.iter().map(|block| contains(block, huffman)).collect();
        assert_eq!(
            spelled,
            [true, false, false, false],
            "{name} spelled out, reply by reply"
        );
    }
}

/// Requests over --max-message-bytes are RESOURCE_EXHAUSTED. (Deadlines: tonic's client
/// enforces grpc-timeout itself and reports the expiry locally, so the server's
/// DEADLINE_EXCEEDED answer is unit-tested in `edge.rs` with a call that never finishes.)
#[tokio::test]
async fn requests_over_the_size_limit_are_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ServerOptions::new(dir.path(), Duration::from_secs(3600));
    options.max_message_bytes = 1024;
    let server = TestServer::start_with_options(options).await;
    let big = api::LookupAddressesRequest::new(["192.0.2.1"; 200], false, api::LookupView::Unspecified);
    let status = server.routing().lookup_addresses(big).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let small = api::LookupAddressesRequest::new(["192.0.2.1"; 10], false, api::LookupView::Unspecified);
    server.routing().lookup_addresses(small).await.unwrap();
}

/// The next JSON log line of a call (`"message": "call"`), skipping the others.
async fn next_call_line(server: &mut ServerProcess) -> serde_json::Value {
    loop {
        let line = tokio::time::timeout(PATIENCE, server.lines.recv())
            .await
            .unwrap()
            .unwrap();
        let value: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
        if value["message"] == "call" {
            return value;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_request_id_and_traceparent() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path(), &[], &[("RUST_LOG", "info")]).await;
    let api = server.api();
    // A successful read is not an info line (it is counted in metrics); a change is.
    api.services()
        .list_services(api::ListServicesRequest { account_id: account() })
        .await
        .unwrap();
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut request = tonic::Request::new(api::CreatePrefixRequest {
        account_id: account(),
        cidr: "192.0.2.0/24".into(),
        ..Default::default()
    });
    request
        .metadata_mut()
        .insert("x-request-id", "req-json-1".parse().unwrap());
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    api.prefixes().create_prefix(request).await.unwrap();
    let call = next_call_line(&mut server).await;
    assert_eq!(
        call["method"], "CreatePrefix",
        "the read before it logged no info line: {call}"
    );
    assert_eq!(call["span"]["request_id"], "req-json-1", "{call}");
    assert_eq!(call["span"]["traceparent"], traceparent, "{call}");
    assert_eq!(call["code"], "OK");

    // A read that fails is an info line in the same kind of span (made only for it).
    let mut lookup = tonic::Request::new(api::LookupAddressRequest {
        address: "203.0.113.9".into(),
        ..Default::default()
    });
    lookup
        .metadata_mut()
        .insert("x-request-id", "req-json-2".parse().unwrap());
    lookup
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    api.routing().lookup_address(lookup).await.unwrap_err();
    let call = next_call_line(&mut server).await;
    assert_eq!(call["method"], "LookupAddress", "{call}");
    assert_eq!(call["reason"], "ADDRESS_NOT_COVERED", "{call}");
    assert_eq!(call["span"]["request_id"], "req-json-2", "{call}");
    assert_eq!(call["span"]["traceparent"], traceparent, "{call}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_over_the_concurrency_cap_are_refused_not_queued() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ServerOptions::new(dir.path(), Duration::from_secs(3600));
    options.max_concurrent_calls = 1;
    let server = Arc::new(TestServer::start_with_options(options).await);
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..64 {
        let server = Arc::clone(&server);
        calls.spawn(async move {
            let request =
                api::LookupAddressesRequest::new(vec!["10.1.2.3"; 10_000], false, api::LookupView::Unspecified);
            server.routing().lookup_addresses(request).await.map(|_| ())
        });
    }
    let (mut ok, mut refused) = (0, 0);
    while let Some(result) = calls.join_next().await {
        match result.unwrap() {
            Ok(()) => ok += 1,
            Err(status) => {
                assert_error(&status, Code::ResourceExhausted, "OVERLOADED", 1302, None);
                refused += 1;
            }
        }
    }
    assert!(ok >= 1 && refused >= 1, "ok {ok}, refused {refused}");
}

/// Hostile bodies on both surfaces: bytes that are not protobuf, a truncated field, and groups
/// nested 100,000 deep are INVALID_ARGUMENT `MALFORMED_REQUEST` on every service (unary and
/// streaming), never INTERNAL; on the JSON API, JSON nested 100,000 deep is 400
/// `MALFORMED_JSON` and a body over the limit 429 `REQUEST_TOO_LARGE` (read no further than
/// the limit). The server goes on serving.
#[tokio::test]
async fn hostile_bodies_are_refused_clearly_on_both_surfaces() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ServerOptions::new(dir.path(), Duration::from_secs(3600));
    options.max_message_bytes = 256 * 1024;
    let server = TestServer::start_with_options(options).await;
    let nested_groups = [vec![0x7b; 100_000], vec![0x7c; 100_000]].concat();
    let bodies: [(&str, Vec<u8>); 3] = [
        ("not protobuf", vec![0xff, 0xff, 0xff]),
        ("truncated", vec![0x0a, 0x40, b'a']),
        ("nested groups", nested_groups),
    ];
    let unary = [
        "/addressing.v1.Prefixes/CreatePrefix",
        "/addressing.v1.ServiceBindings/CreateServiceBinding",
        "/addressing.v1.Services/ListServices",
        "/addressing.v1.Routing/LookupAddress",
        "/addressing.v1.Routing/LookupAddresses",
        "/addressing.v1.Routing/PreviewChange",
        "/addressing.v1.Rollout/CompleteProvisioning",
    ];
    let mut grpc = tonic::client::Grpc::new(server.channel.clone());
    for (what, body) in &bodies {
        for method in unary {
            grpc.ready().await.unwrap();
            let path = http::uri::PathAndQuery::from_static(method);
            let request = tonic::Request::new(body.clone());
            let status = grpc.unary(request, path, RawCodec).await.unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{what} on {method}: {status:?}");
            let reason = status.get_details_error_info().map(|info| info.reason);
            assert_eq!(reason.as_deref(), Some("MALFORMED_REQUEST"), "{what} on {method}");
        }
        grpc.ready().await.unwrap();
        let path = http::uri::PathAndQuery::from_static("/addressing.v1.ServiceBindings/WatchServiceBindings");
        let request = tonic::Request::new(body.clone());
        let status = match grpc.server_streaming(request, path, RawCodec).await {
            Err(status) => status,
            Ok(response) => {
                let mut stream = response.into_inner();
                stream.message().await.expect_err("a refusal")
            }
        };
        assert_eq!(status.code(), Code::InvalidArgument, "{what} on a watch: {status:?}");
    }
    // A batch whose address is not UTF-8 names the field (the batch's request is decoded by
    // hand, src/api/wire/request.rs).
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/addressing.v1.Routing/LookupAddresses");
    let not_utf8 = tonic::Request::new(vec![0x0a, 0x01, b'1', 0x0a, 0x02, 0xc3, 0x28]);
    let status = grpc.unary(not_utf8, path, RawCodec).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let named = status
        .get_details_bad_request()
        .map(|bad| bad.field_violations[0].field.clone());
    assert_eq!(named.as_deref(), Some("addresses"), "{status:?}");

    let prefixes = format!("/client/v4/accounts/{}/addressing/prefixes", account());
    let json = [("content-type", "application/json")];
    let deep = format!(
        r#"{{"cidr":"192.0.2.0/24","x":{}1{}}}"#,
        "[".repeat(100_000),
        "]".repeat(100_000)
    );
    let refused = |reply: HttpReply, status: u16, code: u64| {
        assert_eq!(
            (reply.status, &reply.json["errors"][0]["code"]),
            (status, &serde_json::json!(code)),
            "{}",
            reply.body
        );
    };
    refused(
        http(server.http_address, "POST", &prefixes, &json, Some(&deep)).await,
        400,
        1500,
    );
    let oversized = format!(
        r#"{{"cidr":"192.0.2.0/24","description":"{}"}}"#,
        "x".repeat(300 * 1024)
    );
    refused(
        http(server.http_address, "POST", &prefixes, &json, Some(&oversized)).await,
        429,
        1504,
    );

    // Still serving, on both surfaces.
    let prefix = server.create_prefix(&account(), "192.0.2.0/24").await;
    let listed = http(
        server.http_address,
        "GET",
        &format!("/client/v4/accounts/{}/addressing/prefixes", prefix.account_id),
        &[],
        None,
    )
    .await;
    assert_eq!(
        listed.json["result"][0]["id"],
        serde_json::json!(prefix.id),
        "{}",
        listed.body
    );
}
