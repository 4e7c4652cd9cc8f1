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
    #[arg(long, env = "IPAM_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// How long the built-in rollout takes to report a new binding propagated (0s, 250ms, 5s, 4h).
    #[arg(long, env = "IPAM_PROVISIONING_DELAY", default_value = "5s", value_parser = humantime::parse_duration)]
    pub provisioning_delay: Duration,

    /// Tokio worker threads for the server (0 = one per core).
    #[arg(long, env = "IPAM_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
}
