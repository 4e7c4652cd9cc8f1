//! Command-line flags, each also readable from an environment variable. Parsing only: no I/O.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// ipam-bindings: decides which network service handles each address of a customer's BYOIP
/// prefixes, over gRPC.
#[derive(Clone, Debug, Parser)]
#[command(name = "ipam-bindings", version, about)]
pub struct Config {
    /// Address to serve gRPC on (plaintext HTTP/2).
    #[arg(long, env = "IPAM_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Directory of the embedded sled database holding the event log.
    #[arg(long, env = "IPAM_DATA_DIR", default_value = "./data", global = true)]
    pub data_dir: PathBuf,

    /// How long the built-in rollout takes to report a new binding propagated (0s, 250ms, 5s, 4h).
    #[arg(long, env = "IPAM_PROVISIONING_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub provisioning_delay: Duration,

    /// Tokio worker threads for the server (0 = one per core).
    #[arg(long, env = "IPAM_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,

    /// An operator tool to run instead of the server (with the server stopped).
    #[command(subcommand)]
    pub tool: Option<Tool>,
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
}
