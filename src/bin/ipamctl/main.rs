//! `ipamctl`: the command-line client of ipam-bindings and its load generator.
//! Client commands print an aligned table (or JSON lines with `--output json`); errors print
//! the status, reason, numeric code and offending field, and exit 1.
//!
//! Rooms: [`cli`] (the arguments), [`connection`] (reaching the server, explaining failures),
//! [`commands`] (one module per command group), [`output`] (tables and JSON), [`bench`] (the
//! load generator).

mod bench;
mod cli;
mod commands;
mod connection;
mod output;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command};
use connection::Connection;
use output::Format;

// mimalloc, large blocks on glibc's, as the server (`src/allocator.rs`): a client on the same
// cores as the server it measures leaves it more CPU.
ipam_bindings::install_allocator!();

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Like every Unix tool, end quietly when the reader goes away (`ipamctl ... | head`)
    // instead of failing to print.
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default, before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cli.global.worker_threads > 0 {
        builder.worker_threads(cli.global.worker_threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("ipamctl: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ipamctl: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let connection = Connection {
        server: cli.global.server.clone(),
        tls: cli.tls.clone(),
        token: cli.global.token.clone(),
        min_revision: cli.global.min_revision,
        traceparent: cli.global.trace.then(|| {
            let (traceparent, trace_id) = connection::new_traceparent();
            eprintln!("trace id: {trace_id}");
            traceparent
        }),
    };
    let format = cli.global.output;
    match cli.command {
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "ipamctl", &mut std::io::stdout());
            Ok(())
        }
        Command::Bench(args) => bench::run(&connection, &args, format == Format::Json).await,
        Command::Prefixes(command) => {
            let account_id = cli.global.required_account()?;
            commands::prefixes::run(connection.connect().await?, account_id, command, format).await
        }
        Command::Bindings(command) => {
            let account_id = cli.global.required_account()?;
            commands::bindings::run(connection.connect().await?, account_id, command, format).await
        }
        Command::Preview(command) => {
            let account_id = cli.global.required_account()?;
            commands::routes::preview(connection.connect().await?, account_id, command, format).await
        }
        Command::Routes(command) => {
            let account_id = cli.global.account.clone();
            commands::routes::routes(connection.connect().await?, account_id, command, format).await
        }
        Command::Rollout(command) => {
            let account_id = cli.global.required_account()?;
            commands::rollout::run(connection.connect().await?, account_id, command, format).await
        }
        Command::Services => {
            let account_id = cli.global.required_account()?;
            commands::services::run(connection.connect().await?, account_id, format).await
        }
        Command::Lookup { addresses, active_only } => {
            commands::lookup::run(connection.connect().await?, addresses, active_only, format).await
        }
        Command::Watch {
            prefix,
            binding,
            after_revision,
        } => {
            let args = commands::watch::WatchArgs {
                account_id: cli.global.account.clone(),
                prefix_id: prefix,
                binding_id: binding,
                after_revision,
                json: format == Format::Json,
            };
            commands::watch::run(&connection, args).await
        }
    }
}
