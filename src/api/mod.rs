//! The gRPC surface: one `<Thing>Service` per addressing.v1 service. Prefixes and bindings
//! hand the request's fields to [`crate::operations`] (shared with the v4 JSON API) and convert
//! what comes back; lookups and watches, gRPC's alone, check their fields here. [`status`] is
//! the only place where domain errors become statuses.

pub mod codec;
pub mod convert;
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
use tracing::{Instrument, error, info, info_span, warn};

use crate::edge::{REQUEST_ID, is_traceparent};

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
    let span = info_span!("call", method, request_id = header(REQUEST_ID), traceparent);
    async move {
        let started = Instant::now();
        metrics.calls_in_flight.inc();
        let result = work.await;
        metrics.calls_in_flight.dec();
        log_call(method, started, result.as_ref().err());
        let code = result
            .as_ref()
            .err()
            .map_or(tonic::Code::Ok, |error| status::code_of(error.kind()));
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
        result.map(Response::new).map_err(Status::from)
    }
    .instrument(span)
    .await
}

fn log_call(method: &'static str, started: Instant, error: Option<&Error>) {
    let latency_us = started.elapsed().as_micros() as u64;
    match error {
        None => info!(method, code = "OK", latency_us, "call"),
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
