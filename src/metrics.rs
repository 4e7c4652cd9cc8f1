//! Prometheus metrics (the prometheus-client crate does the exposition format), served on
//! their own HTTP listener (`--metrics-listen`) at `/metrics`. Counters and histograms are
//! updated where things happen (calls in [`crate::api`], commits in the engine's writer); gauges
//! that describe state (log revision, projection sizes, rollout backlog) are read from the
//! projections when scraped, so they cannot drift.

use std::sync::{Arc, Mutex, OnceLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::domain::Micros;
use crate::projection::Projections;

/// Static strings: labelling a call allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CallLabels {
    pub method: &'static str,
    /// The gRPC status code name (OK, INVALID_ARGUMENT, ...).
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

/// A v4 JSON API call: its method, route template and HTTP status.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    pub method: String,
    pub route: &'static str,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: &'static str,
}

type HistogramFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;
type RouteHistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 50 µs .. ~1.6 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
}

/// The methods of the addressing.v1 services, from the descriptor set the server is built with.
fn api_methods() -> Vec<String> {
    use prost::Message;
    let set = prost_types::FileDescriptorSet::decode(crate::pb::FILE_DESCRIPTOR_SET).unwrap_or_default();
    (set.file.iter().filter(|file| file.package() == "addressing.v1"))
        .flat_map(|file| &file.service)
        .flat_map(|service| &service.method)
        .map(|method| method.name().to_string())
        .collect()
}

/// A method's series for successful calls: its OK counter and its latency histogram.
struct MethodSeries {
    ok: Counter,
    seconds: Histogram,
}

pub struct Metrics {
    registry: Registry,
    calls: Family<CallLabels, Counter>,
    call_seconds: HistogramFamily,
    /// Each addressing.v1 method (as named in the descriptor set) and its series for
    /// successful calls, found in the families on its first one ([`Metrics::count_call`]).
    method_series: Vec<(String, OnceLock<MethodSeries>)>,
    pub calls_in_flight: Gauge,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_request_seconds: RouteHistogramFamily,
    pub watch_streams: Gauge,
    /// The writer's own, handed to the engine.
    pub writes: Arc<WriteMetrics>,
    /// A replica's (see [`Metrics::replicated`]).
    pub replica: Arc<ReplicaMetrics>,
    log_revision: Gauge,
    prefixes: Gauge,
    bindings: Gauge,
    rollout_backlog: Gauge,
    rollout_oldest_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Read at scrape time for the state gauges; set once the projections are loaded.
    projections: Mutex<Option<Projections>>,
}

/// A replica's view of the replicated log (`--log-backend jetstream`; registered only then).
#[derive(Default)]
pub struct ReplicaMetrics {
    /// The stream's last sequence, as last seen.
    pub stream_sequence: Gauge,
    /// The sequence of the last message this replica applied.
    pub applied_sequence: Gauge,
    /// Events in the stream this replica has not applied yet.
    pub lag_events: Gauge,
    /// How long the oldest message this replica has not applied has been in the stream.
    pub lag_seconds: Gauge<f64, std::sync::atomic::AtomicU64>,
    /// Appends that lost the race to another replica's (each is decided again).
    pub write_conflicts: Counter,
    /// 1 while connected to NATS.
    pub nats_connected: Gauge,
    /// 1 while this replica holds the lease (appends for all, runs the rollout).
    pub lease_held: Gauge,
    /// Commands this replica forwarded to the lease holder and got an answer for.
    pub forwarded_commands: Counter,
    /// Requests (groups of commands) this replica forwarded to the lease holder and got an
    /// answer for.
    pub forwards: Counter,
}

/// What the writer records about each group it commits.
pub struct WriteMetrics {
    pub events_appended: Counter,
    pub fsync_seconds: Histogram,
    pub group_commands: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// The metrics of a replica: [`new`](Self::new)'s and [`ReplicaMetrics`].
    pub fn replicated() -> Metrics {
        let mut metrics = Metrics::new();
        let replica = &metrics.replica;
        let registry = &mut metrics.registry;
        registry.register(
            "replica_stream_sequence",
            "Last sequence of the replicated stream, as last seen",
            replica.stream_sequence.clone(),
        );
        registry.register(
            "replica_applied_sequence",
            "Sequence of the last stream message this replica applied",
            replica.applied_sequence.clone(),
        );
        registry.register(
            "replica_lag_events",
            "Events in the stream this replica has not applied yet",
            replica.lag_events.clone(),
        );
        registry.register(
            "replica_lag_seconds",
            "Age of the oldest stream message this replica has not applied (0: caught up)",
            replica.lag_seconds.clone(),
        );
        registry.register(
            "replica_write_conflicts",
            "Appends that lost the race to another replica's and were decided again",
            replica.write_conflicts.clone(),
        );
        registry.register(
            "replica_nats_connected",
            "1 while connected to NATS",
            replica.nats_connected.clone(),
        );
        registry.register(
            "replica_lease_held",
            "1 while this replica holds the lease: it appends the writes of all replicas and runs the rollout",
            replica.lease_held.clone(),
        );
        registry.register(
            "replica_forwarded_commands",
            "Commands this replica forwarded to the lease holder and got an answer for",
            replica.forwarded_commands.clone(),
        );
        registry.register(
            "replica_forwards",
            "Requests (groups of commands) this replica forwarded to the lease holder and got an answer for",
            replica.forwards.clone(),
        );
        metrics
    }

    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("ipam");
        let calls = Family::<CallLabels, Counter>::default();
        let call_seconds: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let calls_in_flight = Gauge::default();
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_request_seconds: RouteHistogramFamily = Family::new_with_constructor(latency_histogram);
        let watch_streams = Gauge::default();
        let events_appended = Counter::default();
        let fsync_seconds = latency_histogram();
        let group_commands = Histogram::new(exponential_buckets(1.0, 2.0, 12));
        let (log_revision, prefixes, bindings, rollout_backlog) =
            (Gauge::default(), Gauge::default(), Gauge::default(), Gauge::default());
        registry.register("grpc_calls", "gRPC calls by method and status code", calls.clone());
        registry.register("grpc_call_seconds", "gRPC call latency by method", call_seconds.clone());
        registry.register(
            "grpc_calls_in_flight",
            "Calls being handled (gRPC and the v4 JSON API)",
            calls_in_flight.clone(),
        );
        registry.register(
            "http_requests",
            "v4 JSON API calls by method, route and HTTP status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_seconds",
            "v4 JSON API call latency by route",
            http_request_seconds.clone(),
        );
        registry.register(
            "watch_streams_open",
            "Open WatchServiceBindings streams",
            watch_streams.clone(),
        );
        registry.register(
            "log_events_appended",
            "Events appended to the log",
            events_appended.clone(),
        );
        registry.register(
            "log_fsync_seconds",
            "Time to append and fsync one group",
            fsync_seconds.clone(),
        );
        registry.register(
            "log_group_commands",
            "Commands committed per fsync (group size)",
            group_commands.clone(),
        );
        registry.register("log_revision", "Head revision of the log", log_revision.clone());
        registry.register("projection_prefixes", "Prefixes in the projections", prefixes.clone());
        registry.register("projection_bindings", "Bindings in the projections", bindings.clone());
        registry.register(
            "rollout_backlog",
            "Bindings still PROVISIONING",
            rollout_backlog.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans the OTLP collector did not take (down, refusing, too slow): dropped, never retried",
            crate::telemetry::SPANS_DROPPED.clone(),
        );
        registry.register(
            "trace_spans_exported",
            "Spans the OTLP collector took",
            crate::telemetry::SPANS_EXPORTED.clone(),
        );
        let rollout_oldest_seconds = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "rollout_oldest_provisioning_seconds",
            "Age of the oldest binding still PROVISIONING (0: none); a stuck rollout grows it",
            rollout_oldest_seconds.clone(),
        );
        Metrics {
            registry,
            calls,
            call_seconds,
            method_series: api_methods().into_iter().map(|name| (name, OnceLock::new())).collect(),
            calls_in_flight,
            http_requests,
            http_request_seconds,
            watch_streams,
            writes: Arc::new(WriteMetrics {
                events_appended,
                fsync_seconds,
                group_commands,
            }),
            replica: Arc::default(),
            log_revision,
            prefixes,
            bindings,
            rollout_backlog,
            rollout_oldest_seconds,
            projections: Mutex::new(None),
        }
    }

    /// Counts a gRPC call of `method` that ended with `code` (a status code's name) after
    /// `seconds`. A successful call of a known method updates series found once: looking a
    /// series up in a family hashes its labels (SipHash) under the family's lock, on every call.
    pub fn count_call(&self, method: &'static str, code: &'static str, seconds: f64) {
        let known = self.method_series.iter().find(|(name, _)| name == method);
        if let (Some((_, slot)), "OK") = (known, code) {
            let series = slot.get_or_init(|| MethodSeries {
                ok: self.calls.get_or_create(&CallLabels { method, code }).clone(),
                seconds: self.call_seconds.get_or_create(&MethodLabels { method }).clone(),
            });
            series.ok.inc();
            series.seconds.observe(seconds);
            return;
        }
        self.calls.get_or_create(&CallLabels { method, code }).inc();
        self.call_seconds
            .get_or_create(&MethodLabels { method })
            .observe(seconds);
    }

    pub fn set_projections(&self, projections: Projections) {
        if let Ok(mut slot) = self.projections.lock() {
            *slot = Some(projections);
        }
    }

    /// Lets go of the projections at shutdown.
    pub fn clear_projections(&self) {
        if let Ok(mut slot) = self.projections.lock() {
            *slot = None;
        }
    }

    /// The exposition text (OpenMetrics, which Prometheus scrapes).
    pub fn render(&self) -> String {
        let projections = self.projections.lock().ok().and_then(|slot| slot.clone());
        if let Some(projections) = projections {
            let model = projections.read();
            self.log_revision.set(model.head as i64);
            self.prefixes.set(model.state.n_prefixes() as i64);
            self.bindings.set(model.state.n_bindings() as i64);
            self.rollout_backlog.set(model.state.n_provisioning() as i64);
            let oldest = model.state.oldest_provisioning();
            let age_micros = oldest.map_or(0, |created_at| (Micros::now().0 - created_at.0).max(0));
            self.rollout_oldest_seconds.set(age_micros as f64 / 1e6);
        }
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }
}

/// Serves `GET /metrics` on `listener` until `stop` turns true.
pub async fn serve(
    metrics: Arc<Metrics>,
    listener: tokio::net::TcpListener,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> std::io::Result<()> {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = Arc::clone(&metrics);
            async move {
                (
                    [(
                        http::header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.render(),
                )
            }
        }),
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            let _ = stop.wait_for(|stopping| *stopping).await;
        })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_counts_in_the_same_series_whichever_way_it_is_found() {
        let metrics = Metrics::new();
        metrics.count_call("LookupAddress", "OK", 0.001);
        metrics.count_call("LookupAddress", "OK", 0.001);
        metrics.count_call("LookupAddress", "NOT_FOUND", 0.001);
        metrics.count_call("SomeFutureMethod", "OK", 0.001);
        let text = metrics.render();
        for line in [
            r#"ipam_grpc_calls_total{method="LookupAddress",code="OK"} 2"#,
            r#"ipam_grpc_calls_total{method="LookupAddress",code="NOT_FOUND"} 1"#,
            r#"ipam_grpc_calls_total{method="SomeFutureMethod",code="OK"} 1"#,
            r#"ipam_grpc_call_seconds_count{method="LookupAddress"} 3"#,
            r#"ipam_grpc_call_seconds_count{method="SomeFutureMethod"} 1"#,
        ] {
            assert!(text.lines().any(|got| got == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn every_method_of_the_api_has_its_series_found_once() {
        let metrics = Metrics::new();
        assert!(
            metrics.method_series.len() >= 17,
            "{} methods",
            metrics.method_series.len()
        );
        for name in [
            "LookupAddress",
            "LookupAddresses",
            "CreateServiceBinding",
            "WatchRoutes",
        ] {
            metrics.count_call(name, "OK", 0.001);
            let slot = metrics.method_series.iter().find(|(known, _)| known == name);
            assert!(
                slot.is_some_and(|(_, series)| series.get().is_some()),
                "{name} has no series slot"
            );
        }
    }
}
