//! The command line: every subcommand and argument, with its help. Global options (server,
//! account, output, TLS) are listed apart from each command's own. Nothing here but clap and
//! the library: the `ipamctl_args` fuzz target compiles this file on its own.

use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "ipamctl",
    version,
    about = "Client and load generator for ipam-bindings",
    long_about = "Client and load generator for ipam-bindings: onboard prefixes, bind their CIDRs to \
                  services, look up where addresses go and follow binding changes.\n\n\
                  Most commands act for one account: give it with --account or IPAM_ACCOUNT."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// The server's gRPC endpoint: http://HOST:PORT, https://HOST:PORT, or HOST:PORT.
    #[arg(long, global = true, env = "IPAM_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    /// The account to act as (32 lowercase hex characters).
    #[arg(
        long,
        global = true,
        env = "IPAM_ACCOUNT",
        default_value = "",
        hide_default_value = true
    )]
    pub account: String,
    /// The access token to call with (`ipam-bindings token new`), for servers that enforce
    /// access control.
    #[arg(long, global = true, env = "IPAM_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Send a W3C traceparent (a new sampled trace) with every call and print its trace id,
    /// to find the calls in a tracing UI (servers with --otlp-endpoint).
    #[arg(long, global = true)]
    pub trace: bool,
    /// Replicas: answer only once the server applied this revision (as `x-ipam-revision`
    /// reported it on an earlier reply, from any replica): reads see that write.
    #[arg(long, global = true, env = "IPAM_MIN_REVISION")]
    pub min_revision: Option<u64>,
    /// table (for people) or json (one object per line, for scripts).
    #[arg(long, global = true, value_enum, default_value = "table")]
    pub output: Format,
    /// tokio worker threads of the client (0: one per core). On a machine shared with the
    /// server, fewer leave it more room.
    #[arg(long, global = true, env = "IPAMCTL_WORKER_THREADS", default_value_t = 0)]
    pub worker_threads: usize,
}

impl GlobalArgs {
    /// The account, which most commands need.
    pub fn required_account(&self) -> Result<String, String> {
        if self.account.is_empty() {
            return Err(
                "--account or IPAM_ACCOUNT is required (the account to act as, 32 lowercase hex characters)".into(),
            );
        }
        Ok(self.account.clone())
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Onboard, read, update and delete prefixes.
    #[command(subcommand)]
    Prefixes(PrefixCommand),
    /// Bind CIDRs of a prefix to services, and read or delete bindings.
    #[command(subcommand)]
    Bindings(BindingCommand),
    /// List the service catalog (the names --service accepts).
    Services,
    /// Which binding handles these addresses.
    Lookup {
        /// Addresses to look up; none (or `-`) reads one per line from stdin.
        addresses: Vec<String>,
        /// Only count bindings the rollout has made ACTIVE ("where does traffic go now").
        #[arg(long)]
        active_only: bool,
    },
    /// Print binding changes as they happen; reconnects and resumes after a disconnect.
    ///
    /// Without --account it watches every account.
    Watch {
        /// Only this prefix's bindings (needs --account).
        #[arg(long, default_value = "", hide_default_value = true)]
        prefix: String,
        /// Only this binding (needs --account).
        #[arg(long, default_value = "", hide_default_value = true)]
        binding: String,
        /// Replay every change after this revision first (0: the whole history).
        #[arg(long)]
        after_revision: Option<u64>,
    },
    /// What a binding change would do to traffic (nothing is changed).
    #[command(subcommand)]
    Preview(PreviewCommand),
    /// The effective routing table (every covered address -> its most specific binding), and
    /// its changes. With --account, that account's; without, every account's.
    #[command(subcommand)]
    Routes(RoutesCommand),
    /// What an external provisioner does, on servers started with --rollout external.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// Print a shell completion script (e.g. `ipamctl completions bash > /etc/bash_completion.d/ipamctl`).
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Generate load and report throughput and latency.
    Bench(BenchArgs),
}

#[derive(Subcommand, Debug)]
pub enum PrefixCommand {
    /// Onboard a prefix (IPv4 /24 or shorter, IPv6 /48 or shorter).
    Create {
        /// The prefix, e.g. 203.0.113.0/24.
        cidr: String,
        /// The AS number that originates it.
        #[arg(long)]
        asn: Option<u32>,
        /// Free text, up to 1000 characters.
        #[arg(long, default_value = "", hide_default_value = true)]
        description: String,
        /// Check only: every check of the real call, nothing changed.
        #[arg(long)]
        validate_only: bool,
    },
    /// Show one prefix.
    Get {
        /// The prefix id.
        id: String,
    },
    /// List the account's prefixes in network order (every page unless one is chosen).
    List {
        /// Return one page of at most this many.
        #[arg(long)]
        page_size: Option<i32>,
        /// Return the page after this token (printed after a page).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Change a prefix's description.
    Update {
        /// The prefix id.
        id: String,
        /// The new description.
        #[arg(long)]
        description: String,
        /// Check only: every check of the real call, nothing changed.
        #[arg(long)]
        validate_only: bool,
    },
    /// Offboard a prefix (it must have no bindings left).
    Delete {
        /// The prefix id.
        id: String,
        /// Check only: every check of the real call, nothing changed.
        #[arg(long)]
        validate_only: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum PreviewCommand {
    /// The ranges a new binding would take over, and from which binding.
    Create {
        /// The prefix id.
        #[arg(long)]
        prefix: String,
        /// The CIDR to bind, inside the prefix.
        cidr: String,
        /// The service (a name as `ipamctl services` prints it, or its id).
        #[arg(long)]
        service: String,
    },
    /// The ranges a binding's deletion would hand back, and to which binding.
    Delete {
        /// The prefix id.
        #[arg(long)]
        prefix: String,
        /// The binding id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum RoutesCommand {
    /// Print the table as it is now.
    Export {
        /// Only ACTIVE bindings count (where traffic goes now).
        #[arg(long)]
        active_only: bool,
    },
    /// Print each change to the table (routes removed and added, per revision).
    Watch {
        /// Start after this revision (an export's); default: now.
        #[arg(long)]
        after_revision: Option<i64>,
        /// Only ACTIVE bindings count.
        #[arg(long)]
        active_only: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum RolloutCommand {
    /// Print the account's PROVISIONING bindings: the backlog, then each new one as it appears
    /// (list-then-watch; each printed once).
    Watch,
    /// Report a binding's configuration propagated: PROVISIONING -> ACTIVE (an ACTIVE one
    /// stays as it is).
    Complete {
        /// The prefix id.
        #[arg(long)]
        prefix: String,
        /// The binding id.
        id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum BindingCommand {
    /// Bind a CIDR of the prefix to a service (the first binding must be the whole prefix).
    Create {
        /// The prefix id.
        #[arg(long)]
        prefix: String,
        /// The CIDR to bind, inside the prefix.
        cidr: String,
        /// The service: a name as `ipamctl services` prints it (`"Magic Transit"`,
        /// `magic-transit`, `cdn`, `spectrum`; any case) or its id.
        #[arg(long)]
        service: String,
        /// Makes a retry safe: the same request id returns the same binding.
        #[arg(long, default_value = "", hide_default_value = true)]
        request_id: String,
        /// Check only: every check of the real call, nothing changed.
        #[arg(long)]
        validate_only: bool,
    },
    /// Show one binding.
    Get {
        /// The prefix id.
        #[arg(long)]
        prefix: String,
        /// The binding id.
        id: String,
    },
    /// List a prefix's bindings in network order (every page unless one is chosen).
    List {
        /// The prefix id.
        #[arg(long)]
        prefix: String,
        /// Return one page of at most this many.
        #[arg(long)]
        page_size: Option<i32>,
        /// Return the page after this token (printed after a page).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Delete a binding (the prefix-wide one goes last).
    Delete {
        /// The prefix id.
        #[arg(long)]
        prefix: String,
        /// The binding id.
        id: String,
        /// Check only: every check of the real call, nothing changed.
        #[arg(long)]
        validate_only: bool,
    },
}

/// TLS towards a server started with --tls-cert (and --tls-client-ca for mutual TLS).
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "TLS options")]
pub struct TlsArgs {
    /// PEM CA that signed the server's certificate; turns TLS on (so does an https:// --server).
    #[arg(long, global = true, env = "IPAM_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate, for servers that require one (mutual TLS).
    #[arg(long, global = true, env = "IPAM_TLS_CLIENT_CERT", requires = "tls_client_key")]
    pub tls_client_cert: Option<std::path::PathBuf>,
    /// PEM key of --tls-client-cert.
    #[arg(long, global = true, env = "IPAM_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    pub tls_client_key: Option<std::path::PathBuf>,
    /// Name to verify in the server's certificate (default: the host of --server).
    #[arg(long, global = true, env = "IPAM_TLS_DOMAIN")]
    pub tls_domain: Option<String>,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
}

/// `ipamctl bench`'s arguments.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// health, lookup, lookup-batch (FULL view), lookup-batch-compact, create, mixed, watch
    /// (binding events), watch-routes (WatchRoutes deltas), load, or etcd-put (durable puts to
    /// an etcd cluster at --server, the anchor for creates).
    #[arg(default_value = "health")]
    pub scenario: String,
    /// Run these scenarios alternately (e.g. health,lookup) and print throughput ratios.
    #[arg(long, value_delimiter = ',')]
    pub compare: Vec<String>,
    /// Rounds of --compare.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Calls in flight at once (workers).
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// HTTP/2 connections the workers share.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// How long to measure (after warmup).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Stop after this many calls instead of after --duration.
    #[arg(long)]
    pub requests: Option<u64>,
    /// Open loop at this many calls per second in total.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Unmeasured run-in before measuring.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Addresses per LookupAddresses call (lookup-batch, lookup-batch-compact).
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// Fraction of reads in the mixed scenario.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,
    /// Give each create (create, mixed) a fresh request id, as a client that retries safely
    /// does: the server then remembers one idempotency key per binding.
    #[arg(long)]
    pub request_ids: bool,
    /// Prefixes the fixture (and the load scenario) creates.
    #[arg(long, default_value_t = 1000)]
    pub prefixes: usize,
    /// Bindings per prefix the fixture (and the load scenario) creates, the prefix-wide one included.
    #[arg(long, default_value_t = 4)]
    pub bindings_per_prefix: usize,
    /// The load scenario's history per prefix: create and delete one more binding this many
    /// times (two events each), so the log grows while the live set does not.
    #[arg(long, default_value_t = 0)]
    pub churn_per_prefix: usize,
    /// Watchers of the watch scenario.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,
    /// Draw the latency percentile curve (one per scenario) to this SVG file.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
}

/// The URL to dial for `--server`: `HOST:PORT` as grpcurl users type it means
/// `http://HOST:PORT`, and `https://` when a CA is given (an `http://` URL with a CA too).
pub fn server_url(server: &str, tls: bool) -> String {
    match server.split_once("://") {
        None if tls => format!("https://{server}"),
        None => format!("http://{server}"),
        Some(("http", rest)) if tls => format!("https://{rest}"),
        Some(_) => server.to_string(),
    }
}

/// The property of the `ipamctl_args` fuzz target (`fuzz/fuzz_targets/ipamctl_args.rs`
/// includes this file), replayed over its corpus by this module's tests: any argument list
/// (the input split at NUL bytes) is parsed or refused with a message, never a panic; an
/// accepted one parses the same again, names an account exactly when it has one, dials a URL,
/// and a service name it carries resolves to a service whose own name resolves to it again.
#[cfg_attr(not(any(test, fuzzing)), allow(dead_code))]
pub fn check_arguments(data: &[u8]) {
    use clap::{CommandFactory, FromArgMatches};
    use ipam_bindings::domain::Service;

    thread_local! {
        /// The definition, built once: building it is most of a parse's cost.
        static DEFINITION: std::cell::RefCell<clap::Command> = std::cell::RefCell::new(Cli::command());
    }
    let argv: Vec<String> = std::iter::once("ipamctl".to_string())
        .chain(
            data.split(|byte| *byte == 0)
                .map(|arg| String::from_utf8_lossy(arg).into_owned()),
        )
        .collect();
    let parse = || {
        DEFINITION
            .with_borrow_mut(|definition| definition.try_get_matches_from_mut(&argv))
            .and_then(|matches| Cli::from_arg_matches(&matches))
    };
    let cli = match parse() {
        Ok(cli) => cli,
        Err(error) => {
            assert!(!error.render().to_string().is_empty(), "a refusal says why");
            return;
        }
    };
    let again = parse().expect("parses again");
    assert_eq!(format!("{again:?}"), format!("{cli:?}"));
    assert_eq!(cli.global.required_account().is_ok(), !cli.global.account.is_empty());
    assert!(server_url(&cli.global.server, cli.tls.tls_ca.is_some()).contains("://"));
    let service = match &cli.command {
        Command::Bindings(BindingCommand::Create { service, .. }) => Some(service),
        Command::Preview(PreviewCommand::Create { service, .. }) => Some(service),
        _ => None,
    };
    if let Some(service) = service.and_then(|name| Service::from_name(name)) {
        assert_eq!(Service::from_name(service.name()), Some(service));
        assert_eq!(Service::from_name(&service.id().to_string()), Some(service));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fuzz target's seeds and past findings (`fuzz/corpus/ipamctl_args/`,
    /// `fuzz/regressions/ipamctl_args/`) hold the property under stable `cargo test`.
    #[test]
    fn every_seed_and_past_finding_of_the_arguments_target_holds() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
        let mut checked = 0;
        for kind in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(kind).join("ipamctl_args")) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let bytes = std::fs::read(&path).unwrap();
                let held = std::panic::catch_unwind(|| check_arguments(&bytes));
                assert!(held.is_ok(), "{} breaks the property", path.display());
                checked += 1;
            }
        }
        assert!(checked >= 5, "the seeds are missing from fuzz/corpus/ipamctl_args");
    }
}
