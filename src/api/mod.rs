//! The gRPC surface: one `<Thing>Service` per addressing.v1 service. Prefixes and bindings
//! hand the request's fields to [`crate::operations`] (shared with the v4 JSON API) and convert
//! what comes back; lookups and watches, gRPC's alone, check their fields here. [`status`] is
//! the only place where domain errors become statuses.

pub mod bindings_endpoint;
pub mod codec;
pub mod convert;
mod encoded;
pub mod lookup;
pub mod prefixes;
pub mod rollout;
pub mod routes;
pub mod routing;
pub mod routing_endpoint;
pub mod served;
pub mod service_bindings;
pub mod services;
pub mod status;
pub mod watch;
pub mod wire;

use std::future::Future;
use std::time::{Duration, Instant};

use tonic::metadata::MetadataMap;
use tonic::{Response, Status};
use tracing::{Instrument, debug, error, info, info_span, warn};

use http::HeaderName;

pub use encoded::EncodedMessages;

use crate::edge::{REQUEST_ID, TRACEPARENT, is_traceparent};
use crate::telemetry;

use crate::domain::{Error, ErrorKind};
use crate::metrics::Metrics;

pub use crate::operations::AppContext;

/// Runs one call (a unary call, or the opening of a stream) inside a span that carries the
/// method, the `x-request-id` (set by [`crate::edge`]) and the caller's W3C `traceparent`
/// (for a read, only when something uses it: see below); times it, logs method, status and
/// latency, and maps the error.
pub async fn unary<T>(
    metrics: &Metrics,
    method: &'static str,
    metadata: &MetadataMap,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<Response<T>, Status> {
    let header = |name: &HeaderName| {
        (metadata.as_ref().get(name))
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
    };
    // The span's fields are read from the headers only when a span is made.
    let span_of_call = || {
        let traceparent = Some(header(&TRACEPARENT))
            .filter(|value| is_traceparent(value))
            .unwrap_or_default();
        call_span(method, header(&REQUEST_ID), traceparent)
    };
    // A read's span is made only when something will use it: exported traces, or debug logs
    // (where a successful read has its call line). Otherwise a read that succeeds logs
    // nothing, and one that fails makes the same span just for its line below. Making it for
    // every call (the log layer formats its fields when it opens, whether a line follows or
    // not) was half of a unary lookup's handler time (docs/benchmarks.md, unary lookups).
    let eager = telemetry::enabled() || CHANGES.contains(&method) || tracing::enabled!(tracing::Level::DEBUG);
    let span = match eager {
        true => span_of_call(),
        false => tracing::Span::none(),
    };
    telemetry::adopt_parent(&span, metadata.as_ref());
    // The work is awaited here and nowhere else: each async block that awaits a future it
    // holds keeps room for it twice, and a write's work is over a kilobyte.
    let started = Instant::now();
    metrics.calls_in_flight.inc();
    let result = work.instrument(span.clone()).await;
    metrics.calls_in_flight.dec();
    let elapsed = started.elapsed();
    let result = span.in_scope(|| {
        match (eager, result.as_ref().err()) {
            (false, Some(error)) => span_of_call().in_scope(|| log_call(method, elapsed, Some(error))),
            (_, error) => log_call(method, elapsed, error),
        }
        let code = result
            .as_ref()
            .err()
            .map_or(tonic::Code::Ok, |error| status::code_of(error.kind()));
        span.record("rpc.grpc.status_code", code as i32);
        if let Err(error) = &result {
            span.record("otel.status_code", "ERROR");
            span.record("error.reason", error.reason.name());
        }
        metrics.count_call(method, status::code_name(code), elapsed.as_secs_f64());
        result
    });
    // The response names the server's span, so a caller can find it in its tracing UI.
    // Inserted as the header value it is, which keeps it never indexed by HPACK.
    let traceparent = telemetry::traceparent_of(&span);
    match result {
        Ok(value) => {
            let mut response = Response::new(value);
            if let Some(traceparent) = traceparent {
                response.metadata_mut().as_mut().insert(&TRACEPARENT, traceparent);
            }
            Ok(response)
        }
        Err(error) => {
            let mut status = Status::from(error);
            if let Some(traceparent) = traceparent {
                status.metadata_mut().as_mut().insert(&TRACEPARENT, traceparent);
            }
            Err(status)
        }
    }
}

/// The span of one call: method, `x-request-id` and `traceparent`, and with traces exported the
/// OpenTelemetry fields (the log layer formats a span's fields when it opens, so only a server
/// that exports traces declares those).
fn call_span(method: &'static str, request_id: &str, traceparent: &str) -> tracing::Span {
    if telemetry::enabled() {
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

fn log_call(method: &'static str, elapsed: Duration, error: Option<&Error>) {
    let latency_us = elapsed.as_micros() as u64;
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
