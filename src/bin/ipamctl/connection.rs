//! Reaching the server: the endpoint (a scheme is optional), TLS, and connection failures
//! explained in words (refused, unknown host, TLS against a plaintext server and back), and
//! failed calls printed with everything their status carries.

use std::time::Duration;

pub use crate::cli::TlsArgs;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_types::StatusExt;

/// The largest HTTP/2 frame this client accepts (the protocol's default is 16 KiB). A batch
/// lookup's answer runs to megabytes, and each frame costs both ends a frame's handling and a
/// flow-control update: with 1 MiB frames `ipamctl bench lookup-batch-compact` ran 5-20%
/// faster against the same server (docs/benchmarks.md).
const MAX_FRAME_BYTES: u32 = 1 << 20;

impl TlsArgs {
    fn client_config(&self, url: &str) -> Result<Option<ClientTlsConfig>, String> {
        if self.tls_ca.is_none() && !url.starts_with("https://") {
            return Ok(None);
        }
        let read = |path: &std::path::Path| std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()));
        let mut config = ClientTlsConfig::new();
        if let Some(ca) = &self.tls_ca {
            config = config.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        if let (Some(cert), Some(key)) = (&self.tls_client_cert, &self.tls_client_key) {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        if let Some(domain) = &self.tls_domain {
            config = config.domain_name(domain.clone());
        }
        Ok(Some(config))
    }
}

/// A connection to the server whose calls carry the caller's token and trace.
pub type Transport = InterceptedService<Channel, CallHeaders>;

/// Adds `authorization: Bearer <token>`, a W3C `traceparent` and `x-ipam-min-revision` to
/// every call, when given.
#[derive(Clone)]
pub struct CallHeaders {
    bearer: Option<MetadataValue<Ascii>>,
    traceparent: Option<MetadataValue<Ascii>>,
    min_revision: Option<MetadataValue<Ascii>>,
}

impl Interceptor for CallHeaders {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.bearer {
            request.metadata_mut().insert("authorization", value.clone());
        }
        if let Some(value) = &self.traceparent {
            request.metadata_mut().insert("traceparent", value.clone());
        }
        if let Some(value) = &self.min_revision {
            request.metadata_mut().insert("x-ipam-min-revision", value.clone());
        }
        Ok(request)
    }
}

/// A sampled `traceparent` for a new trace (random ids), and the trace id to print.
pub fn new_traceparent() -> (String, String) {
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    let span_id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
    (format!("00-{trace_id}-{span_id}-01"), trace_id)
}

/// How to reach the server.
#[derive(Clone, Debug)]
pub struct Connection {
    pub server: String,
    pub tls: TlsArgs,
    /// The access token (`ipam-bindings token new`), if the server enforces access control.
    pub token: Option<String>,
    /// The `traceparent` every call carries (`--trace`).
    pub traceparent: Option<String>,
    /// The `x-ipam-min-revision` every call carries (`--min-revision`).
    pub min_revision: Option<u64>,
}

impl Connection {
    /// The URL to dial: `HOST:PORT` as grpcurl users type it means `http://HOST:PORT`, and
    /// `https://` when a CA is given (an `http://` URL with a CA too).
    fn url(&self) -> String {
        crate::cli::server_url(&self.server, self.tls.tls_ca.is_some())
    }

    pub async fn connect(&self) -> Result<Transport, String> {
        let bearer = match &self.token {
            Some(token) => Some(
                format!("Bearer {}", token.trim())
                    .parse()
                    .map_err(|_| "--token holds characters a header cannot carry".to_string())?,
            ),
            None => None,
        };
        let url = self.url();
        let tls = self.tls.client_config(&url)?;
        let mut endpoint =
            Channel::from_shared(url.clone()).map_err(|e| format!("bad --server {:?}: {e}", self.server))?;
        if let Some(tls) = &tls {
            endpoint = endpoint.tls_config(tls.clone()).map_err(|e| format!("TLS: {e}"))?;
        }
        let channel = endpoint
            .connect_timeout(Duration::from_secs(5))
            .max_frame_size(MAX_FRAME_BYTES)
            .connect()
            .await
            .map_err(|error| explain_connect_error(&url, tls.is_some(), &error))?;
        let traceparent = self.traceparent.as_deref().and_then(|value| value.parse().ok());
        let min_revision = self.min_revision.map(MetadataValue::from);
        Ok(InterceptedService::new(
            channel,
            CallHeaders {
                bearer,
                traceparent,
                min_revision,
            },
        ))
    }
}

/// A connection failure in words, with the chain of causes after it.
fn explain_connect_error(url: &str, tls: bool, error: &(dyn std::error::Error + 'static)) -> String {
    let causes = causes(error);
    let lower = causes.to_ascii_lowercase();
    let io_kind = std::iter::successors(Some(error), |error| error.source())
        .find_map(|error| error.downcast_ref::<std::io::Error>())
        .map(std::io::Error::kind);
    let why = if io_kind == Some(std::io::ErrorKind::ConnectionRefused) {
        "connection refused: is ipam-bindings running there?".to_string()
    } else if lower.contains("dns error") || lower.contains("failed to lookup address") {
        "unknown host".to_string()
    } else if tls
        && (lower.contains("corrupt message") || lower.contains("invalidcontenttype") || lower.contains("tls"))
    {
        "the TLS handshake failed: is the server plaintext? Use an http:// --server without --tls-ca".to_string()
    } else if !tls && (lower.contains("connection reset") || lower.contains("closed") || lower.contains("frame")) {
        "the server hung up on plaintext HTTP/2: does it serve TLS? Use https:// or --tls-ca".to_string()
    } else if lower.contains("timed out") {
        "no answer within 5 s".to_string()
    } else {
        "connection failed".to_string()
    };
    format!("cannot connect to {url}: {why} ({causes})")
}

/// An error and its sources, joined with ": " (a source that only repeats the text before
/// it is left out: tonic's errors print their source inside their own text).
fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut texts: Vec<String> = Vec::new();
    for text in std::iter::successors(Some(error), |error| error.source()).map(ToString::to_string) {
        if texts.last().is_none_or(|last| !last.ends_with(&text)) {
            texts.push(text);
        }
    }
    texts.join(": ")
}

/// A plaintext HTTP/2 client talking to a TLS server connects (TCP) but its first call fails:
/// the TLS server's answer read as HTTP/2 is a framing error, or it hangs up.
fn plaintext_to_tls_hint(status: &tonic::Status) -> Option<&'static str> {
    let message = status.message();
    let broke = [
        "frame with invalid size",
        "invalid HTTP version",
        "broken pipe",
        "connection reset",
    ];
    broke
        .iter()
        .any(|symptom| message.contains(symptom))
        .then_some("the connection broke on the first call: if the server serves TLS, use https:// or --tls-ca")
}

/// A failed call, printed with everything the status carries.
pub fn describe(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    // A transport failure (refused TLS handshake, connection reset) says why only in its sources.
    if let Some(source) = std::error::Error::source(status) {
        text.push_str(&format!(": {}", causes(source)));
    }
    if let Some(hint) = plaintext_to_tls_hint(status) {
        text.push_str(&format!("\n  {hint}"));
    }
    if let Some(info) = status.get_details_error_info() {
        let code = info.metadata.get("code").cloned().unwrap_or_default();
        text.push_str(&format!("\n  reason: {} (code {code})", info.reason));
    }
    if let Some(bad_request) = status.get_details_bad_request() {
        for violation in bad_request.field_violations {
            text.push_str(&format!("\n  field {}: {}", violation.field, violation.description));
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(server: &str, tls_ca: bool) -> String {
        let tls = TlsArgs {
            tls_ca: tls_ca.then(|| "ca.pem".into()),
            ..TlsArgs::default()
        };
        Connection {
            server: server.into(),
            tls,
            token: None,
            traceparent: None,
            min_revision: None,
        }
        .url()
    }

    #[test]
    fn a_server_without_a_scheme_is_accepted() {
        assert_eq!(url("localhost:50051", false), "http://localhost:50051");
        assert_eq!(url("localhost:50051", true), "https://localhost:50051");
        assert_eq!(url("http://localhost:50051", true), "https://localhost:50051");
        assert_eq!(url("https://h:1", false), "https://h:1");
        assert_eq!(url("http://h:1", false), "http://h:1");
    }
}
