//! OpenTelemetry traces (`--otlp-endpoint`): the service's own spans in the mesh's traces.
//!
//! - [`init`] builds the OTLP/gRPC exporter (batched on a background thread: a call never
//!   waits on the collector), parent-based ratio sampling, and the service's name and version;
//!   the `tracing` layer it returns turns each call's span into an OTLP server span.
//! - Each call's span (`api::unary`, `rest::edge`) records its name, kind, status, reason,
//!   account and request id; [`adopt_parent`] makes it a child of the caller's `traceparent`;
//!   [`traceparent_of`] is what the response carries back.
//! - The writer's spans (waiting for the group, deciding, the append with its fsync, applying
//!   to the projections) are recorded after the fact with their measured times
//!   ([`write_spans`]), as children of the call that asked.
//! - Spans a collector did not take are counted ([`SPANS_DROPPED`]).
//!
//! Off by default: no exporter, no layer, and these functions return at once.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{Span as _, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider, SpanData, SpanExporter};
use prometheus_client::metrics::counter::Counter;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The instrumentation scope and `service.name`.
pub const SERVICE_NAME: &str = "ipam-bindings";

/// Spans in batches the collector did not take (down, refusing, too slow).
pub static SPANS_DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);
/// Spans the collector took.
pub static SPANS_EXPORTED: LazyLock<Counter> = LazyLock::new(Counter::default);

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported at all.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Counts what each export did.
#[derive(Debug)]
struct Counting<E> {
    inner: E,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n_spans = batch.len() as u64;
        let exported = self.inner.export(batch).await;
        match &exported {
            Ok(()) => SPANS_EXPORTED.inc_by(n_spans),
            Err(_) => SPANS_DROPPED.inc_by(n_spans),
        };
        exported
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The exporter and its provider (call from within the tokio runtime: the gRPC client lives
/// on it). Keep the provider until shutdown and shut it down to flush.
pub fn init(endpoint: &str, sample_ratio: f64) -> Result<SdkTracerProvider, String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .with_timeout(Duration::from_secs(5))
        .build()
        .map_err(|error| format!("the OTLP exporter for {endpoint}: {error}"))?;
    let resource = opentelemetry_sdk::Resource::builder()
        .with_service_name(SERVICE_NAME)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(Counting { inner: exporter })
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(sample_ratio))))
        .with_resource(resource)
        .build();
    global::set_tracer_provider(provider.clone());
    global::set_text_map_propagator(TraceContextPropagator::new());
    ENABLED.store(true, Ordering::Relaxed);
    Ok(provider)
}

/// The `tracing` layer that turns spans into OTLP spans.
pub fn layer<S>(provider: &SdkTracerProvider) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> tracing_subscriber::registry::LookupSpan<'span>,
{
    tracing_opentelemetry::layer().with_tracer(provider.tracer(SERVICE_NAME))
}

/// Makes `span` a child of the caller's `traceparent` (from `headers`), when tracing is on.
pub fn adopt_parent(span: &tracing::Span, headers: &http::HeaderMap) {
    if !enabled() {
        return;
    }
    struct Headers<'a>(&'a http::HeaderMap);
    impl opentelemetry::propagation::Extractor for Headers<'_> {
        fn get(&self, key: &str) -> Option<&str> {
            self.0.get(key).and_then(|value| value.to_str().ok())
        }
        fn keys(&self) -> Vec<&str> {
            self.0.keys().map(|name| name.as_str()).collect()
        }
    }
    let parent = TraceContextPropagator::new().extract(&Headers(headers));
    let _ = span.set_parent(parent);
}

/// The W3C `traceparent` (version 00) of `context`, to carry a trace to another replica or
/// back to the caller; "" when its span is not valid or not sampled.
pub fn traceparent_of_context(context: &Context) -> String {
    let span = context.span();
    let span_context = span.span_context();
    if !span_context.is_valid() || !span_context.is_sampled() {
        return String::new();
    }
    format!("00-{}-{}-01", span_context.trace_id(), span_context.span_id())
}

/// The trace a `traceparent` from another replica names, when tracing is on and it is
/// sampled: the writer's spans go under it.
pub fn context_of_traceparent(traceparent: &str) -> Option<Context> {
    if !enabled() || traceparent.is_empty() {
        return None;
    }
    let carrier = std::collections::HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    context.span().span_context().is_sampled().then_some(context)
}

/// The `traceparent` of `span` (version 00), for the response; `None` when it is not sampled
/// or tracing is off. One per call, so marked for HPACK never to index (as `edge` marks the
/// request id).
pub fn traceparent_of(span: &tracing::Span) -> Option<http::HeaderValue> {
    if !enabled() {
        return None;
    }
    let value = traceparent_of_context(&span.context());
    let mut value = (!value.is_empty()).then(|| http::HeaderValue::from_str(&value).ok())??;
    value.set_sensitive(true);
    Some(value)
}

/// The context a write records its spans under: the current call's, when it is sampled.
pub fn current_call() -> Option<Context> {
    if !enabled() {
        return None;
    }
    let context = tracing::Span::current().context();
    context.span().span_context().is_sampled().then_some(context)
}

/// When the writer did what for one command (the group's append and apply are shared).
#[derive(Clone, Copy, Debug)]
pub struct WriteTimes {
    pub queued: Instant,
    pub group_started: Instant,
    pub decided: (Instant, Instant),
    pub appended: (Instant, Instant),
    pub applied: (Instant, Instant),
}

/// The writer's spans of one command, children of the call that asked.
pub fn write_spans(parent: &Context, times: &WriteTimes, n_commands: usize) {
    phase_spans(
        parent,
        &[
            ("write.queue", times.queued, times.group_started),
            ("write.decide", times.decided.0, times.decided.1),
            ("write.append", times.appended.0, times.appended.1),
            ("write.apply", times.applied.0, times.applied.1),
        ],
        n_commands,
    );
}

/// When a replica that does not hold the lease did what for one command it forwarded.
#[derive(Clone, Copy, Debug)]
pub struct ForwardTimes {
    pub queued: Instant,
    /// The group went to the lease holder.
    pub sent: Instant,
    /// The holder answered (the group is in the stream).
    pub answered: Instant,
    /// This replica applied the holder's revision, from its tail.
    pub applied: Instant,
}

/// The forwarding replica's spans of one command: waiting in its queue, the holder's round
/// trip (`write.forward`: its decide, append and apply), and waiting for its own tail to bring
/// the change (`write.apply`).
pub fn forward_spans(parent: &Context, times: &ForwardTimes, n_commands: usize) {
    phase_spans(
        parent,
        &[
            ("write.queue", times.queued, times.sent),
            ("write.forward", times.sent, times.answered),
            ("write.apply", times.answered, times.applied),
        ],
        n_commands,
    );
}

/// One span per phase (name, start, end), children of `parent`.
fn phase_spans(parent: &Context, phases: &[(&'static str, Instant, Instant)], n_commands: usize) {
    let tracer = global::tracer(SERVICE_NAME);
    let now = (Instant::now(), SystemTime::now());
    let at = |instant: Instant| now.1 - now.0.saturating_duration_since(instant);
    for &(name, start, end) in phases {
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(at(start))
            .with_attributes([KeyValue::new("ipam.group_commands", n_commands as i64)])
            .start_with_context(&tracer, parent);
        span.end_with_timestamp(at(end));
    }
}

/// Flushes and stops the exporter (at shutdown; blocking, bounded by the exporter's timeout).
pub fn shutdown(provider: SdkTracerProvider) {
    let _ = provider.shutdown();
}
