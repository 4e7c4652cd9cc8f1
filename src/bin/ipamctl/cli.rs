//! The command line: every subcommand and argument, with its help. Global options (server,
//! account, output, TLS) are listed apart from each command's own.

use clap::{Args, Parser, Subcommand};

use crate::bench::BenchArgs;
use crate::connection::TlsArgs;
use crate::output::Format;

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
