//! The HTTP edge in front of every gRPC service (a tower layer):
//! - a global cap on calls in flight: past it a call is refused at once with
//!   RESOURCE_EXHAUSTED instead of queueing (the permit is held until the response head is
//!   sent, so long-lived watch streams do not count once open);
//! - `x-request-id`: taken from the caller when well-formed, generated otherwise, passed to the
//!   handler (for its span and log lines) and echoed on the response;
//! - deadlines: the caller's `grpc-timeout`, capped by `--request-timeout`, bounds the time to
//!   the response head (for unary calls, the whole call); past it the caller gets
//!   DEADLINE_EXCEEDED. (tonic also enforces `grpc-timeout`, but answers CANCELLED; this timer
//!   starts first, so it fires first);
//! - a request over the message size limit is RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE);
//! - read-your-writes across replicas: every reply carries `x-ipam-revision` (the revision
//!   this server had applied when it answered), and a call with `x-ipam-min-revision: N` is
//!   served once the server applied N: it waits up to its deadline (less a small margin), then
//!   gets UNAVAILABLE `NOT_READY`;
//! - `date` on replies, set before hyper would set it; it, the request id, the revision and
//!   an error's message and details go as literals HPACK never indexes ([`date`] says why),
//!   except that the first reply on a connection to carry the request id, and the first to
//!   carry the revision, let HPACK index it, so that later replies name it by its index
//!   ([`indexed_names`] says why).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue, Request, Response};
use std::time::Duration;

use tokio::sync::Semaphore;
use tower::{Layer, Service};

use tokio::sync::watch;

use crate::domain::{Error, Reason};
use crate::engine::Applied;

mod connect_info;
mod date;
mod indexed_names;

pub use connect_info::{CallConnection, ConnectInfo};
pub use indexed_names::{IndexedNames, ReplyName};

// Header names as `HeaderName`s: a `&str` is parsed and validated at every use.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static REVISION: HeaderName = HeaderName::from_static("x-ipam-revision");
pub static MIN_REVISION: HeaderName = HeaderName::from_static("x-ipam-min-revision");
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
static GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
static GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");
static GRPC_STATUS_DETAILS: HeaderName = HeaderName::from_static("grpc-status-details-bin");

/// The revision the server has applied, once its engine is loaded (none before: a call that
/// asks for a revision is NOT_READY then).
#[derive(Clone, Default)]
pub struct Revisions(Arc<std::sync::OnceLock<watch::Receiver<Applied>>>);

impl Revisions {
    pub fn set(&self, applied: watch::Receiver<Applied>) {
        let _ = self.0.set(applied);
    }

    fn current(&self) -> Option<u64> {
        self.0.get().map(|applied| applied.borrow().revision)
    }

    /// Waits until `revision` is applied; false if it was not within `patience`.
    async fn reach(&self, revision: u64, patience: Duration) -> bool {
        let Some(applied) = self.0.get() else { return false };
        let mut applied = applied.clone();
        let reached = applied.wait_for(|applied| applied.revision >= revision);
        matches!(tokio::time::timeout(patience, reached).await, Ok(Ok(_)))
    }
}
const MAX_REQUEST_ID_LEN: usize = 128;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fresh_request_ids_are_a_process_prefix_and_a_counter_in_hex() {
        let (first, second) = (fresh_request_id(), fresh_request_id());
        let (first, second) = (first.to_str().unwrap(), second.to_str().unwrap());
        assert_eq!((first.len(), second.len()), (32, 32));
        assert_eq!(first[..16], second[..16], "one prefix per process");
        let counter = |id: &str| u64::from_str_radix(&id[16..], 16).unwrap();
        // Other tests in this process may draw ids in between.
        assert!(counter(second) > counter(first), "{first} then {second}");
        assert!(first.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    }

    #[test]
    fn traceparents_are_four_lowercase_hex_fields_of_fixed_lengths() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert!(is_traceparent(valid));
        for invalid in [
            "",
            "-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-00",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "0-04bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902g7-01",
        ] {
            assert!(!is_traceparent(invalid), "{invalid:?}");
        }
    }

    #[test]
    fn parses_grpc_timeouts() {
        let mut headers = http::HeaderMap::new();
        for (text, expected) in [
            ("5S", Some(Duration::from_secs(5))),
            ("250m", Some(Duration::from_millis(250))),
            ("1H", Some(Duration::from_secs(3600))),
            ("100n", Some(Duration::from_nanos(100))),
            ("123456789S", None),
            ("S", None),
            ("5x", None),
        ] {
            headers.insert("grpc-timeout", HeaderValue::from_static(text));
            assert_eq!(grpc_timeout(&headers), expected, "{text}");
        }
    }

    fn status_of(response: &Response<String>) -> (&str, Option<&str>) {
        let header = |name: &HeaderName| response.headers().get(name).and_then(|v| v.to_str().ok());
        (header(&GRPC_STATUS).unwrap_or("0"), header(&REQUEST_ID))
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_is_deadline_exceeded() {
        let never = tower::service_fn(|_: Request<()>| {
            std::future::pending::<Result<Response<String>, std::convert::Infallible>>()
        });
        let mut edge = EdgeLayer::new(8, Duration::from_secs(30)).layer(never);
        let mut request = Request::new(());
        request
            .headers_mut()
            .insert("grpc-timeout", HeaderValue::from_static("20m"));
        request
            .headers_mut()
            .insert(&REQUEST_ID, HeaderValue::from_static("r-1"));
        let response = edge.call(request).await.unwrap();
        assert_eq!(status_of(&response), ("4", Some("r-1")));
        assert!(
            response.headers()[&http::header::DATE].is_sensitive(),
            "refusals' dates too"
        );
        // The server's own --request-timeout applies without a grpc-timeout too.
        let mut edge = EdgeLayer::new(8, Duration::from_millis(20)).layer(tower::service_fn(|_: Request<()>| {
            std::future::pending::<Result<Response<String>, std::convert::Infallible>>()
        }));
        let response = edge.call(Request::new(())).await.unwrap();
        assert_eq!(status_of(&response).0, "4");
        assert_eq!(status_of(&response).1.map(str::len), Some(32), "a generated request id");
    }

    /// A reply's request id, date and revision change from call to call (or second to second,
    /// or write to write): HPACK is told never to index them, so no connection's table fills
    /// with stale values that every later reply would be compared against.
    #[tokio::test]
    async fn values_that_change_per_call_are_never_indexed() {
        let (_applied, receiver) = watch::channel(Applied {
            revision: 7,
            sequence: 7,
        });
        let revisions = Revisions::default();
        revisions.set(receiver);
        let answer = tower::service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::new()))
        });
        let mut edge = EdgeLayer::new(8, Duration::from_secs(30))
            .with_revisions(revisions)
            .layer(answer);
        let response = edge.call(Request::new(())).await.unwrap();
        for name in [&REQUEST_ID, &REVISION, &http::header::DATE] {
            let value = response.headers().get(name).unwrap_or_else(|| panic!("{name} is set"));
            assert!(value.is_sensitive(), "{name} is never indexed");
        }
        assert_eq!(response.headers()[&REVISION], "7");

        // An error's message and details name the call's ids.
        let refusal = tower::service_fn(|_: Request<()>| async {
            let details = bytes::Bytes::from_static(b"the field and the request id");
            let status = tonic::Status::with_details(tonic::Code::NotFound, "prefix 1f not found", details);
            Ok::<_, std::convert::Infallible>(status.into_http::<String>())
        });
        let mut edge = EdgeLayer::new(8, Duration::from_secs(30)).layer(refusal);
        let response = edge.call(Request::new(())).await.unwrap();
        for name in [&GRPC_MESSAGE, &GRPC_STATUS_DETAILS] {
            let value = response.headers().get(name).unwrap_or_else(|| panic!("{name} is set"));
            assert!(value.is_sensitive(), "{name} is never indexed");
        }
    }

    /// The first reply on a connection to carry the request id, and the first to carry the
    /// revision, let HPACK index it (so its name enters the connection's table); every other
    /// reply's values stay never indexed.
    #[tokio::test]
    async fn one_reply_per_connection_lets_each_name_be_indexed() {
        let revisions = Revisions::default();
        let answer = tower::service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::new()))
        });
        let mut edge = EdgeLayer::new(8, Duration::from_secs(30))
            .with_revisions(revisions.clone())
            .layer(answer);
        let connection = |names: &IndexedNames| {
            let mut request = Request::new(());
            request.extensions_mut().insert(ConnectInfo {
                info: tonic::transport::server::TcpConnectInfo {
                    local_addr: None,
                    remote_addr: None,
                },
                names: names.clone(),
            });
            request
        };
        let indexed = |response: &Response<String>, name: &HeaderName| {
            response.headers().get(name).map(|value| !value.is_sensitive())
        };
        let (first, second) = (IndexedNames::default(), IndexedNames::default());

        // Nothing applied yet: no revision to send, so its claim waits for a reply with one.
        let response = edge.call(connection(&first)).await.unwrap();
        assert_eq!(indexed(&response, &REQUEST_ID), Some(true));
        assert_eq!(indexed(&response, &REVISION), None);
        let (_applied, receiver) = watch::channel(Applied {
            revision: 7,
            sequence: 7,
        });
        revisions.set(receiver);
        let response = edge.call(connection(&first)).await.unwrap();
        assert_eq!(indexed(&response, &REQUEST_ID), Some(false));
        assert_eq!(indexed(&response, &REVISION), Some(true));
        for _ in 0..3 {
            let response = edge.call(connection(&first)).await.unwrap();
            assert_eq!(indexed(&response, &REQUEST_ID), Some(false));
            assert_eq!(indexed(&response, &REVISION), Some(false));
            assert_eq!(indexed(&response, &http::header::DATE), Some(false));
        }
        // Another connection has a table of its own.
        let response = edge.call(connection(&second)).await.unwrap();
        assert_eq!(indexed(&response, &REQUEST_ID), Some(true));
        assert_eq!(indexed(&response, &REVISION), Some(true));
        assert_eq!(indexed(&response, &http::header::DATE), Some(false));
    }

    #[tokio::test]
    async fn oversized_requests_become_resource_exhausted() {
        let oversized = tower::service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(
                tonic::Status::out_of_range(
                    "Error, decoded message length too large: found 2000 bytes, the limit is: 1024 bytes",
                )
                .into_http::<String>(),
            )
        });
        let mut edge = EdgeLayer::new(8, Duration::from_secs(30)).layer(oversized);
        let response = edge.call(Request::new(())).await.unwrap();
        assert_eq!(status_of(&response).0, "8");
        assert!(response.headers()[&GRPC_MESSAGE].is_sensitive(), "never indexed");
    }
}

#[derive(Clone)]
pub struct EdgeLayer {
    calls: Arc<Semaphore>,
    request_timeout: Duration,
    revisions: Revisions,
}

impl EdgeLayer {
    pub fn new(max_concurrent_calls: usize, request_timeout: Duration) -> EdgeLayer {
        EdgeLayer::with_calls(Arc::new(Semaphore::new(max_concurrent_calls.max(1))), request_timeout)
    }

    /// The layer over a cap on calls in flight shared with another surface.
    pub fn with_calls(calls: Arc<Semaphore>, request_timeout: Duration) -> EdgeLayer {
        EdgeLayer {
            calls,
            request_timeout,
            revisions: Revisions::default(),
        }
    }

    /// Reports and waits on the revisions `revisions` will hold.
    pub fn with_revisions(mut self, revisions: Revisions) -> EdgeLayer {
        self.revisions = revisions;
        self
    }
}

impl<S> Layer<S> for EdgeLayer {
    type Service = EdgeService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EdgeService {
            inner,
            calls: Arc::clone(&self.calls),
            request_timeout: self.request_timeout,
            revisions: self.revisions.clone(),
        }
    }
}

#[derive(Clone)]
pub struct EdgeService<S> {
    inner: S,
    calls: Arc<Semaphore>,
    request_timeout: Duration,
    revisions: Revisions,
}

/// `x-ipam-min-revision`: absent, a revision, or unusable.
fn min_revision(headers: &http::HeaderMap) -> Result<Option<u64>, ()> {
    match headers.get(&MIN_REVISION) {
        None => Ok(None),
        Some(value) => value
            .to_str()
            .ok()
            .and_then(|text| text.parse().ok())
            .map(Some)
            .ok_or(()),
    }
}

/// How much of a call's deadline a wait for `x-ipam-min-revision` leaves to the call itself.
fn wait_patience(deadline: Duration) -> Duration {
    deadline.saturating_sub((deadline / 10).min(Duration::from_millis(100)))
}

/// The `grpc-timeout` header: up to 8 digits and a unit (H, M, S, m, u, n).
fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let text = headers.get(&GRPC_TIMEOUT)?.to_str().ok()?;
    let (digits, unit) = text.split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value * 3600),
        "M" => Duration::from_secs(value * 60),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

fn error_response<B: Default>(reason: Reason, message: &str, request_id: HeaderValue) -> Response<B> {
    let mut response = tonic::Status::from(Error::new(reason, message)).into_http::<B>();
    response.headers_mut().insert(&REQUEST_ID, request_id);
    // Here too: one date hyper added would put the name in the table, and h2 walks a name's
    // entries before it looks at a value's flag.
    response.headers_mut().insert(http::header::DATE, date::now());
    response
}

pub(crate) fn usable_request_id(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty() && bytes.len() <= MAX_REQUEST_ID_LEN && bytes.iter().all(|b| b.is_ascii_graphic())
}

/// 32 hex characters: a random per-process prefix and a counter. Unique with one atomic
/// increment per call and no random draw; encoded by uuid's hex encoder into a buffer on the
/// stack (`format!` with `{:016x}` was ~3% of a health check's server CPU).
pub(crate) fn fresh_request_id() -> HeaderValue {
    static PROCESS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let process = *PROCESS.get_or_init(|| uuid::Uuid::new_v4().as_u64_pair().0);
    let sequence = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let id = uuid::Uuid::from_u64_pair(process, sequence);
    // Hex digits are always a valid header value.
    HeaderValue::from_str(id.simple().encode_lower(&mut uuid::Uuid::encode_buffer()))
        .unwrap_or(HeaderValue::from_static("unknown"))
}

/// A W3C trace context header: version-traceid-parentid-flags, in lowercase hex.
/// Read on every call (most have none), so it allocates nothing.
pub(crate) fn is_traceparent(value: &str) -> bool {
    let mut fields = value.split('-');
    [2, 32, 16, 2].into_iter().all(|len| {
        fields.next().is_some_and(|field| {
            field.len() == len && field.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
    }) && fields.next().is_none()
}

/// An error answered in the reply's headers (a success has no `grpc-status` there: one lookup):
/// - tonic reports a request over `max_decoding_message_size` as OUT_OF_RANGE; gRPC's
///   convention (and our callers') is RESOURCE_EXHAUSTED;
/// - its message and details name the call's ids, so they differ call by call: like the
///   values [`date`] describes, sent as literals HPACK never indexes (a stream's trailers are
///   tonic's). Not measured on their own.
fn settle_error_headers<B>(response: &mut Response<B>) {
    let headers = response.headers_mut();
    let Some(status) = headers.get(&GRPC_STATUS) else {
        return;
    };
    let oversized = status == "11"
        && headers
            .get(&GRPC_MESSAGE)
            .and_then(|m| m.to_str().ok())
            .is_some_and(|message| {
                message.contains("message length too large") || message.contains("message%20length%20too%20large")
            });
    if oversized {
        headers.insert(&GRPC_STATUS, HeaderValue::from_static("8"));
    }
    for name in [&GRPC_MESSAGE, &GRPC_STATUS_DETAILS] {
        if let Some(value) = headers.get_mut(name) {
            value.set_sensitive(true);
        }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for EdgeService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Send,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let mut request_id = match request.headers().get(&REQUEST_ID) {
            Some(value) if usable_request_id(value) => value.clone(),
            _ => fresh_request_id(),
        };
        // One per call: HPACK sends it as a literal never indexed, instead of adding each one
        // to the connection's table (evicting another entry), which the encoder first searches
        // for it; but once per connection indexed, so that its name is in the table.
        let names = CallConnection::of(request.extensions()).map(|connection| connection.names);
        request_id.set_sensitive(!names.is_some_and(|names| names.claim(ReplyName::RequestId)));
        let revision_names = names.filter(|names| !names.claimed(ReplyName::Revision)).cloned();
        request.headers_mut().insert(&REQUEST_ID, request_id.clone());
        let Ok(permit) = Arc::clone(&self.calls).try_acquire_owned() else {
            let response = error_response(
                Reason::Overloaded,
                "too many calls in flight on this server; retry with backoff or on another instance",
                request_id,
            );
            return Box::pin(async move { Ok(response) });
        };
        let deadline = grpc_timeout(request.headers()).map_or(self.request_timeout, |t| t.min(self.request_timeout));
        // Only the service's own calls wait for a revision (not health checks or reflection).
        let ours = request.uri().path().starts_with("/addressing.");
        let Ok(wanted_revision) = min_revision(request.headers()).map(|wanted| wanted.filter(|_| ours)) else {
            let response = error_response(
                Reason::MalformedRequest,
                "x-ipam-min-revision must be a revision number (an unsigned integer)",
                request_id,
            );
            return Box::pin(async move { Ok(response) });
        };
        let future = self.inner.call(request);
        let revisions = self.revisions.clone();
        Box::pin(async move {
            let started = tokio::time::Instant::now();
            if let Some(wanted) = wanted_revision
                && !revisions.reach(wanted, wait_patience(deadline)).await
            {
                let applied = revisions
                    .current()
                    .map_or("nothing yet".to_string(), |r| format!("revision {r}"));
                return Ok(error_response(
                    Reason::NotReady,
                    &format!(
                        "this server has applied {applied}, not yet revision {wanted} (x-ipam-min-revision), within the call's deadline; retry, or call another replica"
                    ),
                    request_id,
                ));
            }
            let left = deadline.saturating_sub(started.elapsed());
            let Ok(response) = tokio::time::timeout(left, future).await else {
                return Ok(error_response(
                    Reason::DeadlineExceeded,
                    "the call's deadline passed before it finished; a change may still have been applied",
                    request_id,
                ));
            };
            let mut response = response?;
            drop(permit);
            settle_error_headers(&mut response);
            response.headers_mut().insert(&REQUEST_ID, request_id);
            response.headers_mut().insert(http::header::DATE, date::now());
            if let Some(revision) = revisions.current() {
                // It changes with every write: indexed, each new value joined a chain of
                // stale ones that h2's encoder walks, oldest first, for every reply (its
                // literal costs a quiet server's reads ~1%: docs/benchmarks.md).
                let mut revision = HeaderValue::from(revision);
                revision.set_sensitive(!revision_names.is_some_and(|names| names.claim(ReplyName::Revision)));
                response.headers_mut().insert(&REVISION, revision);
            }
            Ok(response)
        })
    }
}
