//! What every REST call passes through, as on the gRPC side (`crate::edge`): the
//! `x-request-id` (the caller's when usable, else a fresh one; echoed), authentication (the
//! caller goes to the handlers in the request's extensions; the `authorization` header does
//! not, and permissions are checked by the operations), the server-wide cap on
//! calls in flight (shared with gRPC: past it, 429 `OVERLOADED` at once), the request timeout
//! (`DEADLINE_EXCEEDED`), metrics per route and status, and one log line per call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;
use tracing::{Instrument, debug, info, info_span, warn};

use super::error::RestError;
use crate::auth::{AUTHORIZATION, Access, Presented};
use crate::domain::{Error, Reason};
use crate::edge::{REQUEST_ID, TRACEPARENT, fresh_request_id, is_traceparent, usable_request_id};
use crate::metrics::{HttpLabels, Metrics, RouteLabels};
use crate::telemetry;

#[derive(Clone)]
pub struct RestEdge {
    pub metrics: Arc<Metrics>,
    pub access: Arc<Access>,
    pub calls: Arc<Semaphore>,
    pub request_timeout: Duration,
}

pub async fn edge(State(edge): State<RestEdge>, mut request: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = match request.headers().get(&REQUEST_ID) {
        Some(value) if usable_request_id(value) => value.clone(),
        _ => fresh_request_id(),
    };
    request.headers_mut().insert(&REQUEST_ID, request_id.clone());
    let method = request.method().clone();
    let route = route_template(request.uri().path());
    let traceparent = (request.headers().get(&TRACEPARENT))
        .and_then(|value| value.to_str().ok())
        .filter(|value| is_traceparent(value))
        .unwrap_or_default()
        .to_string();
    let span = info_span!(
        "http",
        method = %method,
        route,
        request_id = request_id.to_str().unwrap_or_default(),
        traceparent,
        "otel.name" = format!("{method} {route}"),
        "otel.kind" = "server",
        "http.response.status_code" = tracing::field::Empty,
        "otel.status_code" = tracing::field::Empty,
        account_id = tracing::field::Empty,
    );
    telemetry::adopt_parent(&span, request.headers());
    let traceparent_back = span.clone();
    async move {
        let admitted = authenticate(&edge.access, &mut request);
        let mut response = match Arc::clone(&edge.calls).try_acquire_owned() {
            _ if let Err(refused) = admitted => RestError::from(refused).into_response(),
            Err(_) => {
                let overloaded = Error::new(
                    Reason::Overloaded,
                    "too many calls in flight on this server; retry with backoff or on another instance",
                );
                RestError::from(overloaded).into_response()
            }
            Ok(permit) => {
                edge.metrics.calls_in_flight.inc();
                let answered = tokio::time::timeout(edge.request_timeout, next.run(request)).await;
                edge.metrics.calls_in_flight.dec();
                drop(permit);
                answered.unwrap_or_else(|_| {
                    let late = Error::new(
                        Reason::DeadlineExceeded,
                        "the call's deadline passed before it finished; a change may still have been applied",
                    );
                    RestError::from(late).into_response()
                })
            }
        };
        response.headers_mut().insert(&REQUEST_ID, request_id);
        let status = response.status();
        let span = tracing::Span::current();
        span.record("http.response.status_code", status.as_u16());
        if status.is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        if let Some(traceparent) = telemetry::traceparent_of(&traceparent_back) {
            response.headers_mut().insert(&TRACEPARENT, traceparent);
        }
        let latency_us = started.elapsed().as_micros() as u64;
        // As on gRPC: changes and failures at info, successful reads at debug (all counted).
        if status.is_server_error() {
            warn!(status = status.as_u16(), latency_us, "call");
        } else if method == http::Method::GET && status.is_success() {
            debug!(status = status.as_u16(), latency_us, "call");
        } else {
            info!(status = status.as_u16(), latency_us, "call");
        }
        (edge.metrics.http_requests)
            .get_or_create(&HttpLabels {
                method: method.to_string(),
                route,
                status: status.as_u16(),
            })
            .inc();
        (edge.metrics.http_request_seconds)
            .get_or_create(&RouteLabels { route })
            .observe(started.elapsed().as_secs_f64());
        response
    }
    .instrument(span)
    .await
}

/// Who is calling: a bearer token (or an identity our proxy vouches for in
/// `x-forwarded-client-cert`); the caller goes into the request's extensions, the token goes
/// nowhere.
fn authenticate(access: &Arc<Access>, request: &mut Request) -> Result<(), Error> {
    let peer = (request.extensions().get::<ConnectInfo<SocketAddr>>()).map(|ConnectInfo(peer)| *peer);
    let presented = Presented::from_headers(request.headers(), None, peer);
    let caller = access.authenticate(&presented)?;
    request.headers_mut().remove(&AUTHORIZATION);
    request.extensions_mut().insert(caller);
    Ok(())
}

/// The route a path matches, with its parameters as placeholders (`{account_id}`, ...): a
/// bounded label for metrics and logs. Unknown paths are `unknown`.
pub fn route_template(path: &str) -> &'static str {
    let Some(rest) = path.strip_prefix(super::BASE_PATH) else {
        return "unknown";
    };
    let segments: Vec<&str> = rest.trim_start_matches('/').split('/').collect();
    match segments.as_slice() {
        ["accounts", _, "addressing", "prefixes"] => "/accounts/{account_id}/addressing/prefixes",
        ["accounts", _, "addressing", "prefixes", _] => "/accounts/{account_id}/addressing/prefixes/{prefix_id}",
        ["accounts", _, "addressing", "prefixes", _, "bindings"] => {
            "/accounts/{account_id}/addressing/prefixes/{prefix_id}/bindings"
        }
        ["accounts", _, "addressing", "prefixes", _, "bindings", _] => {
            "/accounts/{account_id}/addressing/prefixes/{prefix_id}/bindings/{binding_id}"
        }
        ["accounts", _, "addressing", "services"] => "/accounts/{account_id}/addressing/services",
        _ => "unknown",
    }
}
