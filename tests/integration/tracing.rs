//! OpenTelemetry traces, received by an in-process OTLP collector (the collector's gRPC
//! TraceService): a create with a sampled `traceparent` makes a server span under it, with
//! the call's attributes and the write's child spans, and the response names it; an unsampled
//! parent makes none; a collector that is down costs calls nothing but dropped spans.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipam_bindings::pb::api;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{TraceService, TraceServiceServer};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::Span;
use tonic::{Request, Response, Status};

use crate::common::*;

/// What the collector received: spans, and the resource attributes they came with.
#[derive(Clone, Default)]
pub struct Collector {
    spans: Arc<Mutex<Vec<Span>>>,
    resource: Arc<Mutex<HashMap<String, String>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        for resource_spans in request.into_inner().resource_spans {
            for attribute in resource_spans.resource.map(|r| r.attributes).unwrap_or_default() {
                if let Some(Value::StringValue(text)) = attribute.value.and_then(|v| v.value) {
                    self.resource.lock().unwrap().insert(attribute.key, text);
                }
            }
            for scope_spans in resource_spans.scope_spans {
                self.spans.lock().unwrap().extend(scope_spans.spans);
            }
        }
        Ok(Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Collector {
    pub async fn start() -> (Collector, std::net::SocketAddr) {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        (collector, address)
    }

    /// Waits for the writer's spans of `trace_id` and checks they lie under `call`, within it.
    pub async fn write_spans_under(&self, trace_id: &[u8], call: &Span) {
        self.spans_under(
            trace_id,
            call,
            &["write.queue", "write.decide", "write.append", "write.apply"],
        )
        .await;
    }

    /// Waits for the spans `names` of `trace_id` and checks they lie under `call`, within it.
    pub async fn spans_under(&self, trace_id: &[u8], call: &Span, names: &[&str]) {
        for &name in names {
            let child = self.span(trace_id, name).await;
            assert_eq!(child.parent_span_id, call.span_id, "{name} under the call");
            assert!(
                child.start_time_unix_nano >= call.start_time_unix_nano,
                "{name} within the call"
            );
            assert!(
                child.end_time_unix_nano <= call.end_time_unix_nano,
                "{name} within the call"
            );
        }
    }

    /// A span of `trace_id` named `name`, if one arrived.
    pub fn received(&self, trace_id: &[u8], name: &str) -> Option<Span> {
        (self.spans.lock().unwrap().iter())
            .find(|span| span.trace_id == trace_id && span.name == name)
            .cloned()
    }

    /// Waits until a span of `trace_id` named `name` arrived.
    pub async fn span(&self, trace_id: &[u8], name: &str) -> Span {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(span) = self.received(trace_id, name) {
                return span;
            }
            assert!(tokio::time::Instant::now() < deadline, "no span {name} arrived");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    let value = span.attributes.iter().find(|a| a.key == key)?.value.clone()?.value?;
    Some(match value {
        Value::StringValue(text) => text,
        Value::IntValue(number) => number.to_string(),
        other => format!("{other:?}"),
    })
}

pub fn hex(text: &str) -> Vec<u8> {
    ipam_bindings::hex::decode(text).unwrap()
}

/// The server binary with `args`, exporting to `collector` (batches every 100 ms).
pub async fn traced_server(dir: &std::path::Path, collector: std::net::SocketAddr, args: &[&str]) -> ServerProcess {
    let endpoint = format!("http://{collector}");
    let args: Vec<&str> = ["--otlp-endpoint", endpoint.as_str()]
        .into_iter()
        .chain(args.iter().copied())
        .collect();
    ServerProcess::start(dir, &args, &[("OTEL_BSP_SCHEDULE_DELAY", "100")]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_is_a_server_span_under_the_callers_trace_with_the_writes_spans() {
    let (collector, collector_address) = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = traced_server(dir.path(), collector_address, &[]).await;
    let api = server.api();
    let (trace_id, parent_id) = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7");
    let account_id = account();
    let mut request = Request::new(api::CreatePrefixRequest {
        account_id: account_id.clone(),
        cidr: "192.0.2.0/24".into(),
        ..Default::default()
    });
    let traceparent = format!("00-{trace_id}-{parent_id}-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().unwrap());
    request
        .metadata_mut()
        .insert("x-request-id", "trace-me-1".parse().unwrap());
    let response = api.prefixes().create_prefix(request).await.unwrap();
    let answered = response
        .metadata()
        .get("traceparent")
        .expect("the response names the span");
    let answered = answered.to_str().unwrap().to_string();

    let call = collector.span(&hex(trace_id), "CreatePrefix").await;
    assert_eq!(call.parent_span_id, hex(parent_id), "a child of the caller's span");
    assert_eq!(
        answered,
        format!("00-{trace_id}-{}-01", ipam_bindings::hex::encode(&call.span_id))
    );
    assert_eq!(call.kind, 2, "SPAN_KIND_SERVER");
    assert_eq!(attribute(&call, "rpc.grpc.status_code").as_deref(), Some("0"));
    assert_eq!(attribute(&call, "account_id"), Some(account_id.clone()));
    assert_eq!(attribute(&call, "request_id").as_deref(), Some("trace-me-1"));
    collector.write_spans_under(&hex(trace_id), &call).await;
    let resource = collector.resource.lock().unwrap().clone();
    assert_eq!(resource.get("service.name").map(String::as_str), Some("ipam-bindings"));
    assert_eq!(
        resource.get("service.version").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );

    // A failure carries its reason.
    let failing_trace = "5bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = Request::new(api::CreatePrefixRequest {
        account_id,
        cidr: "192.0.2.1/24".into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{failing_trace}-{parent_id}-01").parse().unwrap(),
    );
    api.prefixes().create_prefix(request).await.unwrap_err();
    let failed = collector.span(&hex(failing_trace), "CreatePrefix").await;
    assert_eq!(
        attribute(&failed, "error.reason").as_deref(),
        Some("CIDR_NOT_CANONICAL")
    );
    assert_eq!(failed.status.map(|status| status.code), Some(2), "STATUS_CODE_ERROR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_parent_records_nothing() {
    let (collector, collector_address) = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = traced_server(dir.path(), collector_address, &[]).await;
    let api = server.api();
    let call = |trace_id: &str, flags: &str| {
        let mut request = Request::new(api::ListServicesRequest { account_id: account() });
        let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-{flags}");
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().unwrap());
        let mut services = api.services();
        async move { services.list_services(request).await.unwrap() }
    };
    let unsampled = "6bf92f3577b34da6a3ce929d0e0e4736";
    let response = call(unsampled, "00").await;
    assert!(response.metadata().get("traceparent").is_none());
    // A sampled call afterwards: once its span is in, the unsampled one would be too.
    let sampled = "7bf92f3577b34da6a3ce929d0e0e4736";
    call(sampled, "01").await;
    collector.span(&hex(sampled), "ListServices").await;
    assert!(
        !collector
            .spans
            .lock()
            .unwrap()
            .iter()
            .any(|span| span.trace_id == hex(unsampled))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_only_dropped_spans() {
    // A port nothing listens on.
    let unused = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{unused}");
    let metrics_flag = metrics.to_string();
    let server = ServerProcess::start(
        dir.path(),
        &["--otlp-endpoint", &endpoint, "--metrics-listen", &metrics_flag],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .await;
    let api = server.api();
    let prefix = api.create_prefix(&account(), "192.0.2.0/24").await;
    for host in 0..20 {
        let cidr = format!("192.0.2.{host}/32");
        if host == 0 {
            api.bind(&prefix, "192.0.2.0/24", MAGIC_TRANSIT).await;
        }
        api.bind(&prefix, &cidr, CDN).await;
    }
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let scraped = scrape_metrics(metrics).await;
        if scraped.get("ipam_trace_spans_dropped_total").copied().unwrap_or(0.0) > 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no dropped span counted: {scraped:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rest_call_is_a_server_span_too() {
    let (collector, collector_address) = Collector::start().await;
    let dir = tempfile::tempdir().unwrap();
    let endpoint = format!("http://{collector_address}");
    let server = ServerProcess::start(
        dir.path(),
        &["--otlp-endpoint", &endpoint, "--http-listen", "127.0.0.1:0"],
        &[("OTEL_BSP_SCHEDULE_DELAY", "100")],
    )
    .await;
    let http_address: std::net::SocketAddr = (server.before_listening.iter())
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .find(|line| line["message"].as_str().is_some_and(|m| m.starts_with("v4 JSON API")))
        .and_then(|line| line["address"].as_str().map(|a| a.parse().unwrap()))
        .expect("the v4 API's address in the log");
    let trace_id = "8bf92f3577b34da6a3ce929d0e0e4736";
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let path = format!("/client/v4/accounts/{}/addressing/prefixes", account());
    let reply = http(http_address, "GET", &path, &[("traceparent", &traceparent)], None).await;
    assert_eq!(reply.status, 200);
    assert!(
        reply
            .headers
            .get("traceparent")
            .is_some_and(|value| value.contains(trace_id))
    );
    let span = collector
        .span(&hex(trace_id), "GET /accounts/{account_id}/addressing/prefixes")
        .await;
    assert_eq!(span.parent_span_id, hex("00f067aa0ba902b7"));
    assert_eq!(attribute(&span, "http.response.status_code").as_deref(), Some("200"));
}
