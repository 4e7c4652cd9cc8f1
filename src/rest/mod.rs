//! The v4 JSON API (Cloudflare's IP Address Management routes for prefixes, service bindings
//! and services), served beside gRPC from the same process and engine: one log, one set of
//! rules ([`crate::operations`]), the same ids and error codes. Rooms: [`routes`] (the
//! endpoints), [`body`] (JSON bodies and their fields), [`objects`] (the JSON objects and the
//! envelope), [`error`] (the one domain error -> HTTP mapping), [`edge`] (request ids,
//! authentication, the server-wide call cap, deadlines, metrics and call logs).

mod body;
mod edge;
mod error;
mod objects;
mod routes;

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{Semaphore, watch};

use crate::auth::Access;
use crate::operations::AppContext;

pub use edge::route_template;

/// The base path of every route.
pub const BASE_PATH: &str = "/client/v4";

/// The limits the gRPC surface applies too.
#[derive(Clone)]
pub struct RestLimits {
    /// The server-wide cap on calls in flight, shared with gRPC.
    pub calls: Arc<Semaphore>,
    pub request_timeout: Duration,
    pub max_body_bytes: usize,
    /// Access control, as on the gRPC side.
    pub access: Arc<Access>,
}

/// The v4 JSON API as an axum router.
pub fn router(app: AppContext, limits: RestLimits) -> axum::Router {
    let state = routes::RestState {
        app,
        max_body_bytes: limits.max_body_bytes,
    };
    let edge = edge::RestEdge {
        metrics: Arc::clone(state.app.metrics_handle()),
        calls: limits.calls,
        request_timeout: limits.request_timeout,
        access: limits.access,
    };
    routes::router(state).layer(axum::middleware::from_fn_with_state(edge, edge::edge))
}

/// Serves `router` on `listener` until `stop` turns true, then lets requests in flight finish.
pub async fn serve(
    router: axum::Router,
    listener: TcpListener,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop.wait_for(|stopping| *stopping).await;
    })
    .await
}
