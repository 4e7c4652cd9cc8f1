//! Serving: takes an already-bound listener and a shutdown future (so tests run the same code
//! on port 0), and runs the whole life of a server:
//! open the log -> serve (health NOT_SERVING) -> rebuild projections -> SERVING -> rollout ->
//! shutdown: NOT_SERVING, end watch streams, finish calls in flight, make the log durable.

mod connection;
mod dispatch;
mod tls;

use std::future::Future;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::server::NamedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;
use tracing::{info, warn};

use crate::api::AppContext;
use crate::api::bindings_endpoint::{ServiceBindingsEndpoint, bindings_endpoint};
use crate::api::prefixes::PrefixesService;
use crate::api::rollout::RolloutService;
use crate::api::routing::RoutingService;
use crate::api::routing_endpoint::routing_endpoint;
use crate::api::service_bindings::ServiceBindingsService;
use crate::api::services::ServicesService;
use crate::auth::layer::AuthLayer;
use crate::auth::{Access, AuthMode};
use crate::config::{LogBackend, RolloutMode};
use crate::engine::{Engine, StartError};
use crate::log::{EventLog, LogError};
use crate::metrics::{self, Metrics};
use crate::operations::Interrupter;
use crate::pb::api::prefixes_server::PrefixesServer;
use crate::pb::api::rollout_server::RolloutServer;
use crate::pb::api::routing_server::RoutingServer;
use crate::pb::api::services_server::ServicesServer;
use crate::{auth, edge, pb, rest, rollout};

pub use crate::config::ServerOptions;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the data directory {dir}: {source}")]
    Open {
        dir: String,
        #[source]
        source: LogError,
    },
    /// Another server has the data directory.
    #[error(transparent)]
    InUse(LogError),
    #[error("cannot load the event log: {0}")]
    Load(#[source] StartError),
    #[error("gRPC transport failed: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("reflection descriptors are invalid: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("access control: {0}")]
    Access(String),
    #[error(
        "access control is off and {0} is not a loopback address: anyone who reaches it could act for any account. \
         Give a policy (--auth-policy FILE), or pass --allow-unauthenticated if something in front of this server authorizes calls"
    )]
    Unauthenticated(std::net::SocketAddr),
    #[error("a start-up task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("replica: {0}")]
    Replica(#[from] crate::replica::ReplicaError),
}

/// The names health reports on: the whole server ("") and each addressing.v1 service.
fn health_names() -> [&'static str; 6] {
    [
        "",
        <PrefixesServer<PrefixesService> as NamedService>::NAME,
        ServiceBindingsEndpoint::NAME,
        <ServicesServer<ServicesService> as NamedService>::NAME,
        <RoutingServer<RoutingService> as NamedService>::NAME,
        <RolloutServer<RolloutService> as NamedService>::NAME,
    ]
}

async fn set_health(reporter: &HealthReporter, status: ServingStatus) {
    for name in health_names() {
        reporter.set_service_status(name, status).await;
    }
}

/// Ends open grpc.health.v1 Watch streams (which would otherwise hold the graceful shutdown
/// open; they have already seen NOT_SERVING): dropping a status's sender ends the streams on it.
async fn end_health_watches(mut reporter: HealthReporter) {
    for name in health_names() {
        reporter.clear_service_status(name).await;
    }
}

/// TLS from `--tls-cert`/`--tls-key`, with client certificates required when
/// `--tls-client-ca` is set; `None` for plaintext h2c (the default, for sidecars).
fn tls_acceptor(options: &ServerOptions) -> Result<Option<tokio_rustls::TlsAcceptor>, ServeError> {
    let (Some(cert), Some(key)) = (&options.tls_cert, &options.tls_key) else {
        return Ok(None);
    };
    tls::acceptor(cert, key, options.tls_client_ca.as_deref()).map(Some)
}

/// Waits until nothing else holds the engine (watch tasks and connection tasks end shortly
/// after the server stops), then drops it: the sled database closes and its lock on the data
/// directory is released before `serve` returns, so a restart or an operator tool can open it.
async fn release(engine: Arc<Engine>, app: AppContext, metrics: &Metrics) {
    drop(app);
    metrics.clear_projections();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    while Arc::strong_count(&engine) > 1 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    if Arc::strong_count(&engine) > 1 {
        warn!("tasks still hold the engine; the data directory stays locked until they end");
    }
}

/// Where to serve: gRPC, and optionally metrics and the v4 JSON API, each already bound (so
/// tests use port 0).
pub struct Listeners {
    pub grpc: TcpListener,
    pub metrics: Option<TcpListener>,
    pub http: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    fn from(grpc: TcpListener) -> Listeners {
        Listeners {
            grpc,
            metrics: None,
            http: None,
        }
    }
}

/// Access control as configured. Off is allowed only where nobody else can reach the server
/// (loopback listeners) unless the operator says otherwise.
fn access_control(options: &ServerOptions, listeners: &[Option<&TcpListener>]) -> Result<Arc<Access>, ServeError> {
    let access = Access::open(options.auth, options.auth_policy.as_deref(), options.trust_xfcc.clone())
        .map_err(ServeError::Access)?;
    if access.mode() == AuthMode::Off && !options.allow_unauthenticated {
        for listener in listeners.iter().flatten() {
            let address = listener
                .local_addr()
                .map_err(|error| ServeError::Access(error.to_string()))?;
            if !address.ip().is_loopback() {
                return Err(ServeError::Unauthenticated(address));
            }
        }
    }
    Ok(access)
}

/// Connects a replica to the replicated stream and checks that its log is a prefix of it.
async fn connect_replica(
    options: &ServerOptions,
    log: &EventLog,
    metrics: &Metrics,
) -> Result<Arc<crate::replica::Replica>, ServeError> {
    let replica = crate::replica::Replica::connect(&options.nats, Arc::clone(&metrics.replica)).await?;
    let reader = log.clone();
    let (position, head) =
        tokio::task::spawn_blocking(move || Ok::<_, LogError>((reader.stream_position()?, reader.head()?)))
            .await?
            .map_err(|source| ServeError::Open {
                dir: options.data_dir.display().to_string(),
                source,
            })?;
    replica.check_log(position, head).await?;
    info!(
        stream = replica.stream_name(),
        applied_sequence = position.map_or(0, |position| position.sequence),
        revision = head,
        "replica: the log is on the replicated stream"
    );
    Ok(Arc::new(replica))
}

/// Serves until `shutdown` completes, then drains and returns.
pub async fn serve(
    options: ServerOptions,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let Listeners {
        grpc: listener,
        metrics: metrics_listener,
        http: http_listener,
    } = listeners.into();
    let access = access_control(&options, &[Some(&listener), http_listener.as_ref()])?;
    let (dir, faults) = (options.data_dir.clone(), options.storage_faults.clone());
    let log = tokio::task::spawn_blocking(move || EventLog::open_with_faults(&dir, faults))
        .await?
        .map_err(|source| match source {
            LogError::InUse(_) => ServeError::InUse(source),
            source => ServeError::Open {
                dir: options.data_dir.display().to_string(),
                source,
            },
        })?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    set_health(&health_reporter, ServingStatus::NotServing).await;

    // Two phases of shutdown: `draining` (health NOT_SERVING, still serving) and, after the
    // drain delay, `stopping` (listener closed, watch streams ended, calls in flight finish).
    let (drain_sender, mut draining) = watch::channel(false);
    let (stop_sender, stop_receiver) = watch::channel(false);
    let replicated = options.log_backend == LogBackend::Jetstream;
    let metrics = Arc::new(if replicated {
        Metrics::replicated()
    } else {
        Metrics::new()
    });
    let interrupter = Interrupter::follow(stop_receiver.clone(), access.policy_changes());
    let app = AppContext::new(interrupter, Arc::clone(&metrics), options.rollout);
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()?;

    let max_bytes = options.max_message_bytes;
    // One cap on calls in flight for both surfaces.
    let calls = Arc::new(tokio::sync::Semaphore::new(options.max_concurrent_calls.max(1)));
    let revisions = edge::Revisions::default();
    let tls = tls_acceptor(&options)?;
    let services = dispatch::Dispatch::new(
        dispatch::OwnServices {
            bindings: bindings_endpoint(ServiceBindingsService::new(app.clone()), max_bytes),
            routing: routing_endpoint(RoutingService::new(app.clone()), max_bytes),
            prefixes: PrefixesServer::new(PrefixesService::new(app.clone())).max_decoding_message_size(max_bytes),
            services: ServicesServer::new(ServicesService::new(app.clone())).max_decoding_message_size(max_bytes),
            rollout: RolloutServer::new(RolloutService::new(app.clone())).max_decoding_message_size(max_bytes),
        },
        health_service,
        reflection_v1,
        reflection_v1alpha,
    );
    let server = Server::builder()
        .concurrency_limit_per_connection(options.max_calls_per_connection)
        .load_shed(true)
        .http2_keepalive_interval(Some(options.http2_keepalive_interval))
        .http2_keepalive_timeout(Some(options.http2_keepalive_timeout))
        .layer(
            tower::ServiceBuilder::new()
                .layer(
                    edge::EdgeLayer::with_calls(Arc::clone(&calls), options.request_timeout)
                        .with_revisions(revisions.clone()),
                )
                .layer(AuthLayer::new(Arc::clone(&access))),
        );

    let mut stop_signal = stop_receiver.clone();
    // Without TCP_NODELAY, a response's HTTP/2 frames can wait on the peer's delayed ACK (~40 ms).
    let accepted = TcpIncoming::from(listener).with_nodelay(Some(true));
    let stopped = async move {
        let _ = stop_signal.wait_for(|stopping| *stopping).await;
    };
    let mut serving = match tls {
        Some(acceptor) => {
            tokio::spawn(server.serve_with_incoming_shutdown(services, tls::incoming(accepted, acceptor), stopped))
        }
        None => tokio::spawn(server.serve_with_incoming_shutdown(
            services,
            accepted.map(|accepted| accepted.map(connection::Unvectored::new)),
            stopped,
        )),
    };
    let rest_server = http_listener.map(|listener| {
        let limits = rest::RestLimits {
            calls: Arc::clone(&calls),
            request_timeout: options.request_timeout,
            max_body_bytes: max_bytes,
            access: Arc::clone(&access),
        };
        let router = rest::router(app.clone(), limits);
        tokio::spawn(rest::serve(router, listener, stop_receiver.clone()))
    });
    let policy_reloads = tokio::spawn(auth::watch_policy_file(Arc::clone(&access), stop_receiver.clone()));
    let metrics_server = metrics_listener
        .map(|listener| tokio::spawn(metrics::serve(Arc::clone(&metrics), listener, stop_receiver.clone())));
    // Shutdown may be asked for while the projections still load.
    let shutdown_requested = tokio::spawn(async move {
        shutdown.await;
        info!("shutdown requested: draining");
        let _ = drain_sender.send(true);
    });

    let replica = match replicated {
        true => match connect_replica(&options, &log, &metrics).await {
            Ok(replica) => Some(replica),
            Err(error) => {
                let _ = stop_sender.send(true);
                let _ = serving.await;
                shutdown_requested.abort();
                return Err(error);
            }
        },
        false => None,
    };
    let engine_metrics = Arc::clone(&metrics.writes);
    let snapshot_every = options.snapshot_every;
    let engine_replica = replica.clone();
    let loaded =
        tokio::task::spawn_blocking(move || Engine::start(log, engine_metrics, snapshot_every, engine_replica)).await?;
    let engine = match loaded {
        Ok(engine) => Arc::new(engine),
        Err(error) => {
            let _ = stop_sender.send(true);
            let _ = serving.await;
            shutdown_requested.abort();
            return Err(ServeError::Load(error));
        }
    };
    app.set_engine(Arc::clone(&engine));
    revisions.set(engine.applied());
    metrics.set_projections(engine.projections().clone());
    let mut lease = None;
    if let Some(replica) = &replica {
        tokio::spawn(crate::replica::status::measure(
            Arc::clone(replica),
            engine.applied(),
            stop_receiver.clone(),
        ));
        // The lease holder appends for every replica (the others forward their writes to
        // it) and, with the built-in rollout, runs it.
        let held = crate::replica::lease::hold(Arc::clone(replica), stop_receiver.clone()).await;
        if options.rollout == RolloutMode::Timer {
            lease = Some(held);
        }
        let writer = Arc::downgrade(&engine);
        let applied = engine.applied();
        tokio::spawn(crate::replica::forward::serve(
            Arc::clone(replica),
            move |command, actor, trace| {
                let writer = writer.clone();
                async move {
                    match writer.upgrade() {
                        Some(engine) => engine.execute_forwarded(command, actor, trace).await,
                        None => Err(crate::engine::shutting_down()),
                    }
                }
            },
            {
                let applied = applied.clone();
                move || applied.borrow().revision
            },
            move |sequence| {
                let mut applied = applied.clone();
                async move {
                    // Stopping (the sender gone) ends the wait too: the commands then meet
                    // a stopped writer.
                    let _ = applied.wait_for(|applied| applied.sequence >= sequence).await;
                }
            },
            stop_receiver.clone(),
        ));
        // SERVING only once this replica applied what the stream held at its start.
        let started = std::time::Instant::now();
        tokio::select! {
            caught_up = engine.caught_up() => match caught_up {
                Ok(()) => info!(
                    revision = engine.applied().borrow().revision,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "caught up with the replicated log"
                ),
                Err(error) => warn!(%error, "cannot tell whether this replica caught up; serving what it has"),
            },
            _ = draining.wait_for(|draining| *draining) => {}
        }
    }
    // With an external provisioner nothing activates by itself.
    let rollout = (options.rollout == RolloutMode::Timer).then(|| {
        tokio::spawn(rollout::run(
            Arc::clone(&engine),
            options.provisioning_delay,
            stop_receiver.clone(),
            lease,
        ))
    });
    if !*draining.borrow() {
        set_health(&health_reporter, ServingStatus::Serving).await;
        info!("ready: health SERVING");
    }
    if let Some(replica) = replica.clone() {
        // A replica whose log disagrees with the stream stops serving (health NOT_SERVING).
        let (reporter, mut stopping) = (health_reporter.clone(), stop_receiver.clone());
        tokio::spawn(async move {
            loop {
                if replica.diverged.get().is_some() {
                    set_health(&reporter, ServingStatus::NotServing).await;
                    return;
                }
                tokio::select! {
                    _ = stopping.wait_for(|stopping| *stopping) => return,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                }
            }
        });
    }

    let _ = draining.wait_for(|draining| *draining).await;
    set_health(&health_reporter, ServingStatus::NotServing).await;
    if !options.drain_delay.is_zero() {
        info!(
            drain_delay_ms = options.drain_delay.as_millis() as u64,
            "health NOT_SERVING; still serving until the drain delay ends"
        );
        tokio::time::sleep(options.drain_delay).await;
    }
    info!("closing the listener; ending watch streams; letting calls in flight finish");
    let _ = stop_sender.send(true);
    end_health_watches(health_reporter).await;
    let result = match tokio::time::timeout(options.shutdown_grace, &mut serving).await {
        Ok(joined) => joined?.map_err(ServeError::from),
        Err(_) => {
            serving.abort();
            warn!(
                grace_ms = options.shutdown_grace.as_millis() as u64,
                "calls still open after the shutdown grace; closing them"
            );
            Ok(())
        }
    };
    if let Some(rollout) = rollout {
        let _ = rollout.await;
    }
    let _ = policy_reloads.await;
    if let Some(metrics_server) = metrics_server {
        let _ = metrics_server.await;
    }
    if let Some(rest_server) = rest_server {
        match tokio::time::timeout(options.shutdown_grace, rest_server).await {
            Ok(Ok(Err(error))) => warn!(%error, "the v4 JSON API listener failed"),
            Ok(_) => {}
            Err(_) => warn!("v4 JSON API calls still open after the shutdown grace"),
        }
    }
    shutdown_requested.abort();
    engine.stop().await;
    release(engine, app, &metrics).await;
    if result.is_ok() {
        info!("stopped; the log is durable");
    }
    // An error is reported once, by the caller.
    result
}
