//! Command-line flags, each also readable from an environment variable. Parsing only: no I/O.
//! `ipam-bindings --help` lists every flag with its default and variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, ValueEnum};

/// ipam-bindings: decides which network service handles each address of a customer's BYOIP
/// prefixes, over gRPC.
#[derive(Clone, Debug, Parser)]
#[command(name = "ipam-bindings", version, about)]
pub struct Config {
    #[command(flatten)]
    pub server: ServerOptions,

    /// Tokio worker threads for the server (0 = one per core).
    #[arg(long, env = "IPAM_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// Export traces over OTLP/gRPC to this collector (http://HOST:4317); off when not set.
    #[arg(long, env = "IPAM_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// The share of traces to record when the caller did not decide (0.0-1.0); a caller's
    /// sampled `traceparent` is always followed, an unsampled one never.
    #[arg(long, env = "IPAM_TRACE_SAMPLE_RATIO", default_value_t = 1.0, value_parser = sample_ratio)]
    pub trace_sample_ratio: f64,

    /// Log line format: text for people, json for log shippers. Filter with RUST_LOG.
    #[arg(long, env = "IPAM_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// An operator tool to run instead of the server (with the server stopped).
    #[command(subcommand)]
    pub tool: Option<Tool>,
}

/// Whether calls are checked against the access policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Every caller may act for every account (allowed only on loopback listeners, unless
    /// --allow-unauthenticated).
    Off,
    /// Every call needs credentials and a grant in --auth-policy.
    Enforce,
}

/// What turns a new binding ACTIVE.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RolloutMode {
    /// The built-in timer, --provisioning-delay after the binding's creation.
    Timer,
    /// An external provisioner, through Rollout/CompleteProvisioning; nothing activates by
    /// itself.
    External,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

fn sample_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err("a ratio from 0.0 to 1.0".into()),
    }
}

fn duration(text: &str) -> Result<Duration, humantime::DurationError> {
    humantime::parse_duration(text)
}

/// Everything `server::serve` needs besides its listener.
#[derive(Clone, Debug, Args)]
pub struct ServerOptions {
    /// Address to serve gRPC on.
    #[arg(long, env = "IPAM_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Directory of the embedded sled database holding the event log.
    #[arg(long, env = "IPAM_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,

    /// Fault injection for tests (not a flag): makes appends fail as a full disk would.
    #[arg(skip)]
    pub storage_faults: crate::log::StorageFaults,

    /// What turns new bindings ACTIVE: the built-in timer, or an external provisioner calling
    /// Rollout/CompleteProvisioning.
    #[arg(long, env = "IPAM_ROLLOUT", value_enum, default_value = "timer")]
    pub rollout: RolloutMode,

    /// How long the built-in rollout takes to report a new binding propagated (0s, 250ms, 5s, 4h).
    #[arg(long, env = "IPAM_PROVISIONING_DELAY", default_value = "5s", value_parser = duration)]
    pub provisioning_delay: Duration,

    /// Events between background snapshots of the state (restarts replay at most this many
    /// events past the last one; each costs a copy of the state, taken a chunk per commit).
    #[arg(long, env = "IPAM_SNAPSHOT_EVERY", default_value_t = 100_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub snapshot_every: u64,

    /// On SIGTERM: how long to keep serving with health NOT_SERVING, so the mesh stops routing
    /// new calls here before the listener closes.
    #[arg(long, env = "IPAM_DRAIN_DELAY", default_value = "0s", value_parser = duration)]
    pub drain_delay: Duration,

    /// After the drain delay: how long calls in flight get to finish before they are cut.
    #[arg(long, env = "IPAM_SHUTDOWN_GRACE", default_value = "10s", value_parser = duration)]
    pub shutdown_grace: Duration,

    /// Largest request message accepted, in bytes (larger: RESOURCE_EXHAUSTED).
    #[arg(long, env = "IPAM_MAX_MESSAGE_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_message_bytes: usize,

    /// Calls served at once across all connections; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "IPAM_MAX_CONCURRENT_CALLS", default_value_t = 4096)]
    pub max_concurrent_calls: usize,

    /// Calls served at once on one connection; more are refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "IPAM_MAX_CALLS_PER_CONNECTION", default_value_t = 1024)]
    pub max_calls_per_connection: usize,

    /// Longest a unary call may take (a shorter grpc-timeout from the caller wins); past it the
    /// caller gets DEADLINE_EXCEEDED. Watch streams are not limited.
    #[arg(long, env = "IPAM_REQUEST_TIMEOUT", default_value = "30s", value_parser = duration)]
    pub request_timeout: Duration,

    /// Interval of HTTP/2 keepalive pings to idle clients.
    #[arg(long, env = "IPAM_HTTP2_KEEPALIVE_INTERVAL", default_value = "30s", value_parser = duration)]
    pub http2_keepalive_interval: Duration,

    /// How long a keepalive ping may go unanswered before the connection is closed.
    #[arg(long, env = "IPAM_HTTP2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = duration)]
    pub http2_keepalive_timeout: Duration,

    /// Serve Prometheus metrics at http://ADDR/metrics (off when not set).
    #[arg(long, env = "IPAM_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Serve the v4 JSON API (Cloudflare's, under /client/v4) at http://ADDR (off when not set).
    #[arg(long, env = "IPAM_HTTP_LISTEN")]
    pub http_listen: Option<SocketAddr>,

    /// PEM certificate chain: serve gRPC over TLS (needs --tls-key).
    #[arg(long, env = "IPAM_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "IPAM_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA bundle: require client certificates signed by it (mutual TLS; needs --tls-cert).
    #[arg(long, env = "IPAM_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Access control [default: enforce with --auth-policy, off without].
    #[arg(long, env = "IPAM_AUTH", value_enum)]
    pub auth: Option<AuthMode>,

    /// The access policy (TOML: tokens and SPIFFE principals with their grants); re-read on
    /// SIGHUP and when its content changes.
    #[arg(long, env = "IPAM_AUTH_POLICY")]
    pub auth_policy: Option<PathBuf>,

    /// Trust `x-forwarded-client-cert` from the sidecar whose SPIFFE id this is (the `By` of
    /// the header's last element); without it the header is ignored.
    #[arg(long, env = "IPAM_TRUST_XFCC")]
    pub trust_xfcc: Option<String>,

    /// Serve without access control on a non-loopback address (refused otherwise).
    #[arg(long, env = "IPAM_ALLOW_UNAUTHENTICATED")]
    pub allow_unauthenticated: bool,

    /// Where the event log's truth lives: this node's sled (one server), or a NATS JetStream
    /// stream shared by every replica (each keeping its own sled copy in --data-dir).
    #[arg(long, env = "IPAM_LOG_BACKEND", value_enum, default_value = "sled")]
    pub log_backend: LogBackend,

    #[command(flatten)]
    pub nats: NatsOptions,
}

/// Where the event log's truth lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogBackend {
    /// This node's embedded sled database.
    Sled,
    /// A replicated NATS JetStream stream (--nats-*).
    Jetstream,
}

/// The NATS JetStream stream of `--log-backend jetstream`.
#[derive(Clone, Debug, Args)]
pub struct NatsOptions {
    /// NATS servers, comma-separated (nats://host:4222,tls://host:4222).
    #[arg(
        id = "nats_url",
        long = "nats-url",
        env = "IPAM_NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,

    /// The JetStream stream holding the event log (created if missing).
    #[arg(
        id = "nats_stream",
        long = "nats-stream",
        env = "IPAM_NATS_STREAM",
        default_value = "IPAM_EVENTS"
    )]
    pub stream: String,

    /// Copies JetStream keeps of the stream (when this replica creates it): 3 survives one
    /// node lost.
    #[arg(id = "nats_replicas", long = "nats-replicas", env = "IPAM_NATS_REPLICAS", default_value_t = 3,
          value_parser = clap::value_parser!(u64).range(1..=5))]
    pub replicas: u64,

    /// NATS credentials file (JWT + nkey seed).
    #[arg(id = "nats_creds", long = "nats-creds", env = "IPAM_NATS_CREDS")]
    pub creds: Option<PathBuf>,

    /// PEM CA bundle to verify the NATS servers with (turns TLS on).
    #[arg(id = "nats_tls_ca", long = "nats-tls-ca", env = "IPAM_NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate for NATS (mutual TLS; needs --nats-tls-key).
    #[arg(
        id = "nats_tls_cert",
        long = "nats-tls-cert",
        env = "IPAM_NATS_TLS_CERT",
        requires = "nats_tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --nats-tls-cert.
    #[arg(
        id = "nats_tls_key",
        long = "nats-tls-key",
        env = "IPAM_NATS_TLS_KEY",
        requires = "nats_tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// How long an append may wait for the stream's acknowledgement before it is resent (an
    /// append gives up with STORAGE_UNAVAILABLE after twice this).
    #[arg(id = "nats_timeout", long = "nats-timeout", env = "IPAM_NATS_TIMEOUT", default_value = "2s", value_parser = duration)]
    pub timeout: Duration,
}

impl ServerOptions {
    /// The defaults, with this data directory and provisioning delay (for tests and embedding).
    pub fn new(data_dir: impl Into<PathBuf>, provisioning_delay: Duration) -> ServerOptions {
        #[derive(Parser)]
        struct DefaultsOnly {
            #[command(flatten)]
            options: ServerOptions,
        }
        let mut options = DefaultsOnly::parse_from(["ipam-bindings"]).options;
        options.data_dir = data_dir.into();
        options.provisioning_delay = provisioning_delay;
        options
    }
}

/// Offline operator tools over `--data-dir`.
#[derive(Clone, Debug, clap::Subcommand)]
pub enum Tool {
    /// Check every record of the log (checksums, formats, revisions); exit 1 at the first
    /// damaged one, naming its revision.
    Verify,
    /// Write the log as JSON lines (one event per line, with its revision).
    Export {
        /// File to write; "-" for standard output.
        #[arg(long, default_value = "-")]
        output: PathBuf,
    },
    /// Rebuild an empty data directory from an export.
    Import {
        /// File to read; "-" for standard input.
        #[arg(long, default_value = "-")]
        input: PathBuf,
    },
    /// Access tokens (no data directory needed).
    #[command(subcommand)]
    Token(TokenTool),
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum TokenTool {
    /// Make a token: prints it once, and the policy entry to paste (which holds only its hash).
    New {
        /// The name the token acts as (what events record as their actor).
        #[arg(long)]
        principal: String,
        /// The token's id in the policy (1-32 letters, digits, dashes; random by default).
        #[arg(long)]
        id: Option<String>,
        /// When the token stops working, UTC (2027-01-01T00:00:00Z).
        #[arg(long)]
        expires_at: Option<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_with_humane_durations() {
        let config = Config::parse_from([
            "ipam-bindings",
            "--provisioning-delay",
            "250ms",
            "--drain-delay",
            "5s",
            "--listen",
            "0.0.0.0:9000",
        ]);
        assert_eq!(config.server.provisioning_delay, Duration::from_millis(250));
        assert_eq!(config.server.drain_delay, Duration::from_secs(5));
        assert_eq!(config.server.listen.port(), 9000);
        assert!(
            Config::try_parse_from(["ipam-bindings", "--tls-cert", "c.pem"]).is_err(),
            "cert needs a key"
        );
        let options = ServerOptions::new("/tmp/x", Duration::ZERO);
        assert_eq!(options.shutdown_grace, Duration::from_secs(10));
    }
}
