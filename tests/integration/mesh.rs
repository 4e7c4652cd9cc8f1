//! Mesh and operator readiness: health through a drain, metrics that move, x-request-id and
//! traceparent, deadlines, size and concurrency limits, TLS and mutual TLS.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ipam_bindings::pb::api;
use ipam_bindings::pb::api::services_client::ServicesClient;
use ipam_bindings::server::{ServerOptions, serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::*;

/// Scrapes /metrics and parses the text exposition into sample name{labels} -> value.
async fn scrape(server: &TestServer) -> HashMap<String, f64> {
    let mut stream = tokio::net::TcpStream::connect(server.metrics_address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut samples = HashMap::new();
    for line in body
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
    {
        // Chunked transfer encoding puts chunk sizes on their own lines: skip what is not a sample.
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if let Ok(value) = value.parse::<f64>() {
            samples.insert(name.to_string(), value);
        }
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_as_calls_are_made() {
    let server = TestServer::start().await;
    let key = r#"ipam_grpc_calls_total{method="CreatePrefix",code="OK"}"#;
    let before = scrape(&server).await.get(key).copied().unwrap_or(0.0);
    let prefix = server.create_prefix(&account(), "192.0.2.0/24").await;
    server.bind(&prefix, &prefix.cidr, CDN).await;
    server.try_create_prefix(&account(), "192.0.2.0/24").await.unwrap_err();
    let after = scrape(&server).await;
    assert_eq!(after[key], before + 1.0);
    assert_eq!(
        after[r#"ipam_grpc_calls_total{method="CreatePrefix",code="ALREADY_EXISTS"}"#],
        1.0
    );
    assert!(after[r#"ipam_grpc_call_seconds_count{method="CreateServiceBinding"}"#] >= 1.0);
    assert_eq!(after["ipam_log_revision"], 2.0);
    assert_eq!(after["ipam_log_events_appended_total"], 2.0);
    assert_eq!(after["ipam_projection_prefixes"], 1.0);
    assert_eq!(after["ipam_projection_bindings"], 1.0);
    assert_eq!(after["ipam_rollout_backlog"], 1.0);
    assert!(after["ipam_log_fsync_seconds_count"] >= 2.0);
    let _stream = server
        .bindings()
        .watch_service_bindings(api::WatchServiceBindingsRequest::default())
        .await
        .unwrap();
    assert_eq!(scrape(&server).await["ipam_watch_streams_open"], 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_reports_not_serving_while_still_serving_then_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ServerOptions::new(dir.path(), Duration::from_secs(3600));
    options.drain_delay = Duration::from_millis(800);
    let mut server = TestServer::start_with_options(options).await;
    let mut health = server.health();
    let mut watch = health
        .watch(HealthCheckRequest {
            service: "addressing.v1.Routing".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        watch.message().await.unwrap().unwrap().status,
        ServingStatus::Serving as i32
    );
    let channel = server.channel.clone();
    let stopping = tokio::spawn(async move { server.stop().await });
    let next = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::NotServing as i32);
    // Still serving during the drain delay, so calls routed here before the mesh noticed succeed.
    let request = api::ListServicesRequest { account_id: account() };
    ServicesClient::new(channel)
        .list_services(request)
        .await
        .expect("served during the drain delay");
    // The open Watch stream does not hold the shutdown open: the stop completes and ends it.
    stopping.await.unwrap().unwrap();
    let end = tokio::time::timeout(PATIENCE, watch.message()).await.unwrap();
    assert!(!matches!(end, Ok(Some(_))), "the Watch stream ended: {end:?}");
}

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

/// Requests over --max-message-bytes are RESOURCE_EXHAUSTED. (Deadlines: tonic's client
/// enforces grpc-timeout itself and reports the expiry locally, so the server's
/// DEADLINE_EXCEEDED answer is unit-tested in `edge.rs` with a call that never finishes.)
#[tokio::test]
async fn requests_over_the_size_limit_are_resource_exhausted() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = ServerOptions::new(dir.path(), Duration::from_secs(3600));
    options.max_message_bytes = 1024;
    let server = TestServer::start_with_options(options).await;
    let big = api::LookupAddressesRequest {
        addresses: vec!["192.0.2.1".into(); 200],
        active_only: false,
    };
    let status = server.routing().lookup_addresses(big).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let small = api::LookupAddressesRequest {
        addresses: vec!["192.0.2.1".into(); 10],
        active_only: false,
    };
    server.routing().lookup_addresses(small).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_request_id_and_traceparent() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ipam-bindings"))
        .args(["--listen", "127.0.0.1:0", "--log-format", "json"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_sender, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_sender.send(line);
        }
    });
    let next_json =
        |line: String| serde_json::from_str::<serde_json::Value>(&line).unwrap_or_else(|e| panic!("{line}: {e}"));
    let address = loop {
        let line = tokio::time::timeout(PATIENCE, lines.recv()).await.unwrap().unwrap();
        let value = next_json(line);
        if value["message"] == "listening" {
            break value["address"].as_str().unwrap().to_string();
        }
    };
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy();
    wait_until_serving(&channel).await;
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let mut request = tonic::Request::new(api::ListServicesRequest { account_id: account() });
    request
        .metadata_mut()
        .insert("x-request-id", "req-json-1".parse().unwrap());
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    ServicesClient::new(channel).list_services(request).await.unwrap();
    let call = loop {
        let value = next_json(tokio::time::timeout(PATIENCE, lines.recv()).await.unwrap().unwrap());
        if value["message"] == "call" && value["method"] == "ListServices" {
            break value;
        }
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(call["span"]["request_id"], "req-json-1", "{call}");
    assert_eq!(call["span"]["traceparent"], traceparent, "{call}");
    assert_eq!(call["code"], "OK");
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
            let request = api::LookupAddressesRequest {
                addresses: vec!["10.1.2.3".into(); 10_000],
                active_only: false,
            };
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

struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server_cert = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client_cert = CertificateParams::new(vec!["client".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca)
        .unwrap();
    Pki {
        ca: ca.pem(),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client_cert.pem(),
        client_key: client_key.serialize_pem(),
    }
}

/// Starts a TLS server (mutual when `require_client_cert`); returns its address and a stopper.
async fn tls_server(
    pki: &Pki,
    dir: &std::path::Path,
    require_client_cert: bool,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
    std::fs::create_dir_all(dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let mut options = ServerOptions::new(dir.join("data"), Duration::from_secs(3600));
    options.tls_cert = Some(write("server.pem", &pki.server_cert));
    options.tls_key = Some(write("server.key", &pki.server_key));
    if require_client_cert {
        options.tls_client_ca = Some(write("ca.pem", &pki.ca));
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(options, listener, async move {
        let _ = stopped.await;
    }));
    (address, stop)
}

async fn tls_check(address: std::net::SocketAddr, tls: Option<ClientTlsConfig>) -> Result<i32, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Channel::from_shared(format!("{scheme}://localhost:{}", address.port())).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match health.check(HealthCheckRequest { service: String::new() }).await {
            Ok(response) if response.get_ref().status == ServingStatus::Serving as i32 => {
                return Ok(response.get_ref().status);
            }
            Ok(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Ok(response) => return Ok(response.get_ref().status),
            Err(status) => return Err(format!("{status:?}")),
        }
    }
}

#[tokio::test]
async fn tls_and_mutual_tls() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let client_tls = || {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&pki.ca))
            .domain_name("localhost")
    };

    let (address, _stop) = tls_server(&pki, &dir.path().join("tls"), false).await;
    assert_eq!(
        tls_check(address, Some(client_tls())).await,
        Ok(ServingStatus::Serving as i32)
    );
    assert!(
        tls_check(address, None).await.is_err(),
        "plaintext is refused on a TLS port"
    );

    let (address, _stop) = tls_server(&pki, &dir.path().join("mtls"), true).await;
    let with_cert = client_tls().identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    assert_eq!(
        tls_check(address, Some(with_cert)).await,
        Ok(ServingStatus::Serving as i32)
    );
    assert!(
        tls_check(address, Some(client_tls())).await.is_err(),
        "no client certificate, no service"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_not_serving_while_the_projections_load() {
    use ipam_bindings::domain::{AccountId, Change, Event, Micros, Prefix, PrefixId};
    let dir = tempfile::tempdir().unwrap();
    {
        // A log long enough that loading it takes a while (in a debug build, about a second).
        let log = ipam_bindings::log::EventLog::open(dir.path()).unwrap();
        let account_id = AccountId::generate();
        let events: Vec<Event> = (0..80_000u32)
            .map(|i| {
                let prefix = Prefix {
                    id: PrefixId::generate(),
                    account_id,
                    cidr: format!("{}.{}.{}.0/24", 1 + i / 65_536, (i / 256) % 256, i % 256)
                        .parse()
                        .unwrap(),
                    asn: None,
                    description: String::new(),
                    created_at: Micros(1),
                    modified_at: Micros(1),
                };
                Event {
                    revision: u64::from(i) + 1,
                    time: Micros(1),
                    change: Change::PrefixCreated(prefix),
                }
            })
            .collect();
        for chunk in events.chunks(10_000) {
            log.append(chunk).unwrap();
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let options = ServerOptions::new(dir.path(), Duration::from_secs(3600));
    let server = tokio::spawn(serve(options, listener, async move {
        let _ = stopped.await;
    }));
    let channel = Channel::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_lazy();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let mut watch = loop {
        match health
            .watch(HealthCheckRequest {
                service: "addressing.v1.Prefixes".into(),
            })
            .await
        {
            Ok(response) => break response.into_inner(),
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    };
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::NotServing as i32, "loading");
    let next = tokio::time::timeout(PATIENCE, watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(next.status, ServingStatus::Serving as i32, "loaded");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
