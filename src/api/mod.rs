//! The gRPC edge: one `<Thing>Service` per addressing.v1 service. Each handler checks the shape
//! of every field (collecting all violations), turns the request into a command or a query,
//! and converts the result; [`status`] is the only place where domain errors become statuses.

pub mod codec;
pub mod convert;
pub mod page_token;
pub mod prefixes;
pub mod routing;
pub mod service_bindings;
pub mod services;
pub mod status;
pub mod watch;
pub mod wire;

use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::watch as signal;
use tonic::metadata::MetadataMap;
use tonic::{Response, Status};
use tracing::{Instrument, error, info, info_span, warn};

use crate::edge::REQUEST_ID;

use crate::domain::{Error, ErrorKind, Outcome, Reason};
use crate::engine::Engine;
use crate::metrics::{CallLabels, MethodLabels, Metrics};

/// What every handler shares: the engine, once the projections are loaded, and the shutdown
/// signal that ends open streams.
#[derive(Clone)]
pub struct AppContext {
    engine: Arc<OnceLock<Arc<Engine>>>,
    shutdown: signal::Receiver<bool>,
    metrics: Arc<Metrics>,
}

impl AppContext {
    pub fn new(shutdown: signal::Receiver<bool>, metrics: Arc<Metrics>) -> AppContext {
        AppContext {
            engine: Arc::new(OnceLock::new()),
            shutdown,
            metrics,
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Makes the service ready: called once the projections are rebuilt.
    pub fn set_engine(&self, engine: Arc<Engine>) {
        let _ = self.engine.set(engine);
    }

    /// The engine, or NOT_READY while the server is still loading.
    pub fn engine(&self) -> Result<&Arc<Engine>, Error> {
        self.engine
            .get()
            .ok_or_else(|| Error::new(Reason::NotReady, "the server is loading its data; retry shortly"))
    }

    pub fn shutdown_signal(&self) -> signal::Receiver<bool> {
        self.shutdown.clone()
    }
}

/// The writer answered a command with an outcome of another kind: a bug, never the caller's.
pub(crate) fn unexpected(outcome: Outcome) -> Error {
    Error::new(Reason::Internal, format!("unexpected outcome {outcome:?}"))
}

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

/// A W3C trace context header: version-traceid-parentid-flags, in lowercase hex.
fn is_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    parts.len() == 4
        && [2, 32, 16, 2].iter().zip(&parts).all(|(len, part)| {
            part.len() == *len && part.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
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
