//! The gRPC surface: one `<Thing>Service` per addressing.v1 service. Prefixes and bindings
//! hand the request's fields to [`crate::operations`] (shared with the v4 JSON API) and convert
//! what comes back; lookups and watches, gRPC's alone, check their fields here. [`status`] is
//! the only place where domain errors become statuses.

pub mod codec;
pub mod convert;
pub mod lookup;
pub mod prefixes;
pub mod rollout;
pub mod routes;
pub mod routing;
pub mod service_bindings;
pub mod services;
pub mod status;
pub mod watch;
pub mod wire;

use std::future::Future;
use std::time::Instant;

use tonic::metadata::MetadataMap;
use tonic::{Response, Status};
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::edge::{REQUEST_ID, is_traceparent};
use crate::telemetry;

use crate::domain::{Error, ErrorKind};
use crate::metrics::{CallLabels, MethodLabels, Metrics};

pub use crate::operations::AppContext;

/// Runs one call (a unary call, or the opening of a stream) inside a span that carries the
/// method, the `x-request-id` (set by [`crate::edge`]) and the caller's W3C `traceparent`;
/// times it, logs method, status and latency, and maps the error.
pub async fn unary<T>(
    metrics: &Metrics,
    method: &'static str,
    metadata: &MetadataMap,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<Response<T>, Status> {
    let header = |name: &str| {
        metadata
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    };
    let traceparent = Some(header("traceparent"))
        .filter(|value| is_traceparent(value))
        .unwrap_or_default();
    // The OTLP fields cost every call a little (the log layer formats a span's fields when it
    // opens): only a server that exports traces declares them.
    let request_id = header(REQUEST_ID);
    let span = if telemetry::enabled() {
        info_span!(
            "call",
            method,
            request_id,
            traceparent,
            "otel.name" = method,
            "otel.kind" = "server",
            "rpc.system" = "grpc",
            "rpc.grpc.status_code" = tracing::field::Empty,
            "otel.status_code" = tracing::field::Empty,
            "error.reason" = tracing::field::Empty,
            account_id = tracing::field::Empty,
        )
    } else {
        info_span!("call", method, request_id, traceparent)
    };
    telemetry::adopt_parent(&span, metadata.as_ref());
    let traceparent_back = span.clone();
    let result = async move {
        let started = Instant::now();
        metrics.calls_in_flight.inc();
        let result = work.await;
        metrics.calls_in_flight.dec();
        log_call(method, started, result.as_ref().err());
        let code = result
            .as_ref()
            .err()
            .map_or(tonic::Code::Ok, |error| status::code_of(error.kind()));
        let span = tracing::Span::current();
        span.record("rpc.grpc.status_code", code as i32);
        if let Err(error) = &result {
            span.record("otel.status_code", "ERROR");
            span.record("error.reason", error.reason.name());
        }
        metrics
            .calls
            .get_or_create(&CallLabels {
                method,
                code: status::code_name(code),
            })
            .inc();
        metrics
            .call_seconds
            .get_or_create(&MethodLabels { method })
            .observe(started.elapsed().as_secs_f64());
        result
    }
    .instrument(span)
    .await;
    // The response names the server's span, so a caller can find it in its tracing UI.
    let traceparent = telemetry::traceparent_of(&traceparent_back)
        .and_then(|value| tonic::metadata::MetadataValue::try_from(value.as_bytes()).ok());
    match result {
        Ok(value) => {
            let mut response = Response::new(value);
            if let Some(traceparent) = traceparent {
                response.metadata_mut().insert("traceparent", traceparent);
            }
            Ok(response)
        }
        Err(error) => {
            let mut status = Status::from(error);
            if let Some(traceparent) = traceparent {
                status.metadata_mut().insert("traceparent", traceparent);
            }
            Err(status)
        }
    }
}

/// The calls that change something: their access lines are logged at info. A read that
/// succeeds is logged at debug (it is counted in `ipam_grpc_calls_total` either way): at
/// lookup rates the line cost a quarter of the throughput (docs/benchmarks.md).
const CHANGES: [&str; 6] = [
    "CreatePrefix",
    "UpdatePrefix",
    "DeletePrefix",
    "CreateServiceBinding",
    "DeleteServiceBinding",
    "CompleteProvisioning",
];

fn log_call(method: &'static str, started: Instant, error: Option<&Error>) {
    let latency_us = started.elapsed().as_micros() as u64;
    match error {
        None if CHANGES.contains(&method) => info!(method, code = "OK", latency_us, "call"),
        None => debug!(method, code = "OK", latency_us, "call"),
        Some(error) => {
            let code = status::code_of(error.kind());
            let reason = error.reason.name();
            match error.kind() {
                ErrorKind::Internal => error!(method, ?code, reason, latency_us, message = %error.message, "call"),
                ErrorKind::Unavailable | ErrorKind::ResourceExhausted | ErrorKind::DeadlineExceeded => {
                    warn!(method, ?code, reason, latency_us, message = %error.message, "call")
                }
                _ => info!(method, ?code, reason, latency_us, "call"),
            }
        }
    }
}
