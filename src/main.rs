//! The `ipam-bindings` server binary: flags -> logging -> runtime -> bind -> serve until
//! SIGTERM or SIGINT -> drain -> exit 0.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use std::path::Path;

use ipam_bindings::auth::credentials;
use ipam_bindings::auth::policy::is_token_id;
use ipam_bindings::config::{Config, LogFormat, TokenTool, Tool};
use ipam_bindings::log::{EventLog, LogError, tools};
use ipam_bindings::server::{Listeners, serve};
use ipam_bindings::telemetry;
use tracing::{error, info};

// The process allocator: mimalloc, large blocks on glibc's (`src/allocator.rs`).
ipam_bindings::install_allocator!();

fn main() -> ExitCode {
    // sled panics on some damaged files; the log reports those as errors of its own.
    ipam_bindings::log::quiet_storage_panics();
    let config = Config::parse();
    if let Some(tool) = &config.tool {
        let report = match tool {
            Tool::Token(TokenTool::New {
                principal,
                id,
                expires_at,
            }) => new_token(principal, id.as_deref(), expires_at.as_deref()),
            tool => run_tool(tool, &config.server.data_dir),
        };
        return match report {
            // Reports go to stderr: an export may be writing the log to stdout.
            Ok(report) => {
                if !report.is_empty() {
                    eprintln!("{report}");
                }
                ExitCode::SUCCESS
            }
            Err(message) => {
                eprintln!("ipam-bindings: {message}");
                ExitCode::FAILURE
            }
        };
    }
    // Large blocks are unmapped off the thread that frees them (the writer, under the
    // projections' write lock, when a map of the state has grown: `allocator`'s module doc).
    ipam_bindings::allocator::free_large_blocks_in_background();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    // tokio runs a task woken by the running one next (the LIFO slot). For HTTP/2 that means
    // the connection task runs after every single stream that gives it a frame: one writev per
    // watch message. Without it the
    // connection task queues behind the other woken streams and writes their frames together.
    // It is off: watch fan-out latency and lookups improved, creates did not change
    // (docs/benchmarks.md, "tokio's LIFO slot"). Needs `--cfg tokio_unstable` (.cargo/config.toml).
    #[cfg(tokio_unstable)]
    runtime.disable_lifo_slot();
    if config.worker_threads > 0 {
        runtime.worker_threads(config.worker_threads);
    }
    let runtime = match runtime.build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ipam-bindings: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    // The OTLP exporter's gRPC client lives on the runtime: build it inside.
    let traces = {
        let _inside = runtime.enter();
        match init_logging(
            config.log_format,
            config.otlp_endpoint.as_deref(),
            config.trace_sample_ratio,
        ) {
            Ok(traces) => traces,
            Err(message) => {
                eprintln!("ipam-bindings: {message}");
                return ExitCode::FAILURE;
            }
        }
    };
    // A RUSTFLAGS variable replaces .cargo/config.toml's flags, and with them this setting.
    #[cfg(not(tokio_unstable))]
    tracing::warn!(
        "built without --cfg tokio_unstable (a RUSTFLAGS variable overrides .cargo/config.toml): \
         tokio's LIFO slot stays on, which about doubles watch latency under fan-out"
    );
    let log_format = config.log_format;
    let served = runtime.block_on(run(config));
    if let Some(provider) = traces {
        // Flushes the spans still queued (bounded by the exporter's timeout).
        ipam_bindings::telemetry::shutdown(provider);
    }
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            // Once: a JSON log line for log shippers, or a plain line on stderr for people
            // (text logs go to stdout, so logging it too would show it twice on a terminal).
            match log_format {
                LogFormat::Json => error!("{message}"),
                LogFormat::Text => eprintln!("ipam-bindings: {message}"),
            }
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> Result<(), String> {
    let bind = |address: std::net::SocketAddr| async move {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .map_err(|error| format!("cannot listen on {address}: {error}"))?;
        let bound = listener
            .local_addr()
            .map_err(|error| format!("cannot read the listen address: {error}"))?;
        Ok::<_, String>((listener, bound))
    };
    let (grpc, address) = bind(config.server.listen).await?;
    let optional = async |address: Option<std::net::SocketAddr>, what: &str, path: &str| {
        let Some(address) = address else {
            return Ok::<_, String>(None);
        };
        let (listener, bound) = bind(address).await?;
        info!(address = %bound, "{what} at http://{bound}{path}");
        Ok(Some(listener))
    };
    let metrics = optional(config.server.metrics_listen, "metrics", "/metrics").await?;
    let http = optional(config.server.http_listen, "v4 JSON API", "/client/v4").await?;
    info!(%address, data_dir = %config.server.data_dir.display(), "listening");
    serve(config.server, Listeners { grpc, metrics, http }, termination())
        .await
        .map_err(|error| error.to_string())
}

/// Log lines to stdout, filtered by RUST_LOG (default info): text, or one JSON object per
/// line with the call's span fields (method, request_id, traceparent) at the top level. With
/// an OTLP endpoint, the service's spans are exported too (whatever RUST_LOG says about log
/// lines); the provider is returned to be shut down at exit.
fn init_logging(
    format: LogFormat,
    otlp_endpoint: Option<&str>,
    sample_ratio: f64,
) -> Result<Option<opentelemetry_sdk::trace::SdkTracerProvider>, String> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let lines = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(std::io::stdout().is_terminal())
            .with_filter(filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_filter(filter)
            .boxed(),
    };
    let provider = otlp_endpoint
        .map(|endpoint| telemetry::init(endpoint, sample_ratio))
        .transpose()?;
    let spans = provider.as_ref().map(|provider| {
        // The service's own spans (calls and writes), whatever the log filter says.
        let ours = tracing_subscriber::filter::Targets::new().with_target("ipam_bindings", tracing::Level::INFO);
        telemetry::layer(provider).with_filter(ours)
    });
    tracing_subscriber::registry().with(lines).with(spans).init();
    Ok(provider)
}

/// Makes a token: prints it (shown once) and the policy entry to paste, which holds only its
/// hash.
fn new_token(principal: &str, id: Option<&str>, expires_at: Option<&str>) -> Result<String, String> {
    let id = match id {
        Some(id) if is_token_id(id) => id.to_string(),
        Some(id) => return Err(format!("`{id}` is not a token id (1 to 32 letters, digits or dashes)")),
        None => credentials::new_token_id()?,
    };
    if principal.is_empty() {
        return Err("--principal is empty".into());
    }
    if let Some(at) = expires_at {
        humantime::parse_rfc3339(at)
            .map_err(|_| format!("--expires-at `{at}` is not a UTC time like 2027-01-01T00:00:00Z"))?;
    }
    let token = credentials::new_token(&id)?;
    let sha256 = ipam_bindings::hex::encode(&credentials::sha256(token.as_bytes()));
    let principal = principal.replace('\\', "\\\\").replace('"', "\\\"");
    let expires = expires_at.map(|at| format!("expires_at = {at}\n")).unwrap_or_default();
    println!(
        "{token}\n\n# The token above is shown once: store it now. The policy keeps only its hash.\n\
         [[token]]\nid = \"{id}\"\nsha256 = \"{sha256}\"\nprincipal = \"{principal}\"\n{expires}\
         grants = [ ]  # e.g. {{ permission = \"ip_prefixes.edit\", accounts = [\"<account id>\"] }}"
    );
    Ok(String::new())
}

/// Runs an offline operator tool; returns its report.
fn run_tool(tool: &Tool, data_dir: &Path) -> Result<String, String> {
    // Opening creates a missing directory: right for an import, wrong for reading one.
    if !matches!(tool, Tool::Import { .. }) && !data_dir.is_dir() {
        return Err(format!("{} does not exist or is not a directory", data_dir.display()));
    }
    let log = EventLog::open(data_dir).map_err(|error| match error {
        LogError::InUse(_) => format!("{error} (stop the server first)"),
        error => format!("cannot open {}: {error}", data_dir.display()),
    })?;
    match tool {
        Tool::Verify => {
            let verified = tools::verify(&log).map_err(|error| error.to_string())?;
            Ok(verified.to_string())
        }
        Tool::Export { output } => {
            let exported = if output.as_os_str() == "-" {
                tools::export(&log, &mut std::io::stdout().lock())
            } else {
                let file = std::fs::File::create(output).map_err(|error| format!("{}: {error}", output.display()))?;
                tools::export(&log, &mut std::io::BufWriter::new(file))
            };
            match exported {
                Ok(n_events) => Ok(format!("exported {n_events} events")),
                // The reader had enough (`export | head`): not an error, and nothing to report.
                Err(tools::ToolError::Io(error)) if error.kind() == std::io::ErrorKind::BrokenPipe => Ok(String::new()),
                Err(error) => Err(error.to_string()),
            }
        }
        Tool::Token(_) => Err("token tools need no data directory".into()),
        Tool::Import { input } => {
            let n_events = if input.as_os_str() == "-" {
                tools::import(&log, std::io::stdin().lock())
            } else {
                let file = std::fs::File::open(input).map_err(|error| format!("{}: {error}", input.display()))?;
                tools::import(&log, std::io::BufReader::new(file))
            }
            .map_err(|error| error.to_string())?;
            Ok(format!("imported {n_events} events into {}", data_dir.display()))
        }
    }
}

/// Completes on SIGTERM or SIGINT.
async fn termination() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = terminate.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    /// The constructor ran before the test harness's first allocation (this binary's tests
    /// link its allocator and constructor too).
    #[test]
    fn mimalloc_commits_arenas_on_demand() {
        if std::env::var_os("MIMALLOC_ARENA_EAGER_COMMIT").is_none() {
            assert!(ipam_bindings::allocator::commits_on_demand());
        }
    }
}
