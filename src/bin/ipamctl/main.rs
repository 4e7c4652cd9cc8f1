//! `ipamctl`: the command-line client of ipam-bindings and its load generator.
//! Client commands print an aligned table (or JSON lines with `--output json`); errors print
//! the status, reason, numeric code and offending field, and exit 1.

mod bench;
mod output;

use std::io::BufRead;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use ipam_bindings::pb::api;
use ipam_bindings::pb::api::prefixes_client::PrefixesClient;
use ipam_bindings::pb::api::routing_client::RoutingClient;
use ipam_bindings::pb::api::service_bindings_client::ServiceBindingsClient;
use ipam_bindings::pb::api::services_client::ServicesClient;
use output::{Format, binding_json};
use tonic::transport::Channel;
use tonic_types::StatusExt;

#[derive(Parser, Debug)]
#[command(name = "ipamctl", version, about = "Client and load generator for ipam-bindings")]
struct Cli {
    /// The server's gRPC endpoint.
    #[arg(long, global = true, env = "IPAM_SERVER", default_value = "http://127.0.0.1:50051")]
    server: String,
    /// The account to act as (32 lowercase hex characters).
    #[arg(long, global = true, env = "IPAM_ACCOUNT", default_value = "")]
    account: String,
    #[command(flatten)]
    tls: TlsArgs,
    /// table (for people) or json (one object per line, for scripts).
    #[arg(long, global = true, value_enum, default_value = "table")]
    output: Format,
    /// tokio worker threads of the client (0: one per core). On a machine shared with the
    /// server, fewer leave it more room.
    #[arg(long, global = true, env = "IPAMCTL_WORKER_THREADS", default_value_t = 0)]
    worker_threads: usize,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Onboard, read, update and delete prefixes.
    #[command(subcommand)]
    Prefixes(PrefixCommand),
    /// Bind CIDRs of a prefix to services.
    #[command(subcommand)]
    Bindings(BindingCommand),
    /// The service catalog.
    Services,
    /// Which binding handles these addresses (arguments, or one per line on stdin).
    Lookup {
        addresses: Vec<String>,
        #[arg(long)]
        active_only: bool,
    },
    /// Print binding events as they come; reconnects and resumes after a disconnect.
    Watch {
        #[arg(long, default_value = "")]
        prefix: String,
        #[arg(long, default_value = "")]
        binding: String,
        /// Replay from after this revision first.
        #[arg(long)]
        after_revision: Option<u64>,
    },
    /// Generate load and report throughput and latency.
    Bench(bench::BenchArgs),
}

#[derive(Subcommand, Debug)]
enum PrefixCommand {
    Create {
        cidr: String,
        #[arg(long)]
        asn: Option<u32>,
        #[arg(long, default_value = "")]
        description: String,
    },
    Get {
        id: String,
    },
    List {
        #[arg(long)]
        page_size: Option<i32>,
        #[arg(long)]
        page_token: Option<String>,
    },
    Update {
        id: String,
        #[arg(long)]
        description: String,
    },
    Delete {
        id: String,
    },
}

#[derive(Subcommand, Debug)]
enum BindingCommand {
    Create {
        #[arg(long)]
        prefix: String,
        cidr: String,
        /// A service id, or its name: magic-transit, cdn, spectrum.
        #[arg(long)]
        service: String,
        #[arg(long, default_value = "")]
        request_id: String,
    },
    Get {
        #[arg(long)]
        prefix: String,
        id: String,
    },
    List {
        #[arg(long)]
        prefix: String,
        #[arg(long)]
        page_size: Option<i32>,
        #[arg(long)]
        page_token: Option<String>,
    },
    Delete {
        #[arg(long)]
        prefix: String,
        id: String,
    },
}

/// TLS towards a server started with --tls-cert (and --tls-client-ca for mutual TLS).
#[derive(clap::Args, Debug, Clone, Default)]
struct TlsArgs {
    /// PEM CA that signed the server's certificate; turns TLS on (so does an https:// --server).
    #[arg(long, global = true, env = "IPAM_TLS_CA")]
    tls_ca: Option<std::path::PathBuf>,
    /// PEM client certificate, for servers that require one (mutual TLS).
    #[arg(long, global = true, env = "IPAM_TLS_CLIENT_CERT", requires = "tls_client_key")]
    tls_client_cert: Option<std::path::PathBuf>,
    /// PEM key of --tls-client-cert.
    #[arg(long, global = true, env = "IPAM_TLS_CLIENT_KEY", requires = "tls_client_cert")]
    tls_client_key: Option<std::path::PathBuf>,
    /// Name to verify in the server's certificate (default: the host of --server).
    #[arg(long, global = true, env = "IPAM_TLS_DOMAIN")]
    tls_domain: Option<String>,
}

impl TlsArgs {
    fn client_config(&self, server: &str) -> Result<Option<tonic::transport::ClientTlsConfig>, String> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        if self.tls_ca.is_none() && !server.starts_with("https://") {
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

/// How to reach the server.
pub struct Connection {
    server: String,
    tls: TlsArgs,
}

impl Connection {
    pub async fn connect(&self) -> Result<Channel, String> {
        // An http:// URL with a CA given means TLS: switch the scheme so tonic negotiates it.
        let tls = self.tls.client_config(&self.server)?;
        let url = match &tls {
            Some(_) => self.server.replacen("http://", "https://", 1),
            None => self.server.clone(),
        };
        let mut endpoint = Channel::from_shared(url).map_err(|e| format!("bad --server {:?}: {e}", self.server))?;
        if let Some(tls) = tls {
            endpoint = endpoint.tls_config(tls).map_err(|e| format!("TLS: {e}"))?;
        }
        endpoint
            .connect_timeout(Duration::from_secs(5))
            .connect()
            .await
            .map_err(|e| format!("cannot connect to {}: {e}", self.server))
    }
}

/// A failed call, printed with everything the status carries.
fn describe(status: &tonic::Status) -> String {
    let mut text = format!("{:?}: {}", status.code(), status.message());
    // A transport failure (refused TLS handshake, connection reset) says why only in its sources.
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        text.push_str(&format!(": {cause}"));
        source = cause.source();
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if cli.worker_threads > 0 {
        builder.worker_threads(cli.worker_threads);
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

fn service_id(name_or_id: &str) -> String {
    match name_or_id.to_ascii_lowercase().as_str() {
        "magic-transit" | "magic_transit" | "mt" => bench::workload::MAGIC_TRANSIT.into(),
        "cdn" => bench::workload::CDN.into(),
        "spectrum" => bench::workload::SPECTRUM.into(),
        _ => name_or_id.into(),
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    let connection = Connection {
        server: cli.server.clone(),
        tls: cli.tls.clone(),
    };
    let json = cli.output == Format::Json;
    let account_id = cli.account.clone();
    if let Command::Bench(args) = &cli.command {
        return bench::run(&connection, args, json).await;
    }
    let channel = connection.connect().await?;
    let fail = |status: tonic::Status| describe(&status);
    match cli.command {
        Command::Prefixes(command) => prefixes(PrefixesClient::new(channel), account_id, command, cli.output).await?,
        Command::Bindings(command) => {
            bindings(ServiceBindingsClient::new(channel), account_id, command, cli.output).await?
        }
        Command::Services => {
            let services = ServicesClient::new(channel)
                .list_services(api::ListServicesRequest { account_id })
                .await
                .map_err(fail)?
                .into_inner()
                .services;
            let mut table = output::Table::new(vec!["ID", "NAME"]);
            for service in services {
                if json {
                    println!("{}", serde_json::json!({"id": service.id, "name": service.name}));
                }
                table.push(vec![service.id, service.name]);
            }
            if !json {
                println!("{}", table.render());
            }
        }
        Command::Lookup { addresses, active_only } => {
            let addresses = if addresses.is_empty() || addresses == ["-"] {
                std::io::stdin()
                    .lock()
                    .lines()
                    .map_while(Result::ok)
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect()
            } else {
                addresses
            };
            let mut client = RoutingClient::new(channel);
            let mut table = output::Table::new(vec![
                "ADDRESS", "FOUND", "CIDR", "SERVICE", "STATE", "PREFIX", "ACCOUNT",
            ]);
            for chunk in addresses.chunks(10_000) {
                let request = api::LookupAddressesRequest {
                    addresses: chunk.to_vec(),
                    active_only,
                };
                let response = client.lookup_addresses(request).await.map_err(fail)?.into_inner();
                let results = response
                    .results()
                    .map_err(|error| fail(tonic::Status::internal(format!("undecodable response: {error}"))))?;
                for result in results {
                    let binding = result.binding.as_ref();
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"address": result.address, "found": result.found, "prefix_id": result.prefix_id,
                                "account_id": result.account_id, "binding": binding.map(binding_json)})
                        );
                    }
                    table.push(vec![
                        result.address.clone(),
                        result.found.to_string(),
                        binding.map(|b| b.cidr.clone()).unwrap_or_default(),
                        binding.map(|b| b.service_name.clone()).unwrap_or_default(),
                        binding
                            .map(|b| binding_json(b)["state"].as_str().unwrap_or_default().to_string())
                            .unwrap_or_default(),
                        result.prefix_id.clone(),
                        result.account_id.clone(),
                    ]);
                }
            }
            if !json {
                println!("{}", table.render());
            }
        }
        Command::Watch {
            prefix,
            binding,
            after_revision,
        } => watch(&connection, account_id, prefix, binding, after_revision, json).await?,
        Command::Bench(_) => unreachable!("handled above"),
    }
    Ok(())
}

async fn prefixes(
    mut client: PrefixesClient<Channel>,
    account_id: String,
    command: PrefixCommand,
    format: Format,
) -> Result<(), String> {
    let fail = |status: tonic::Status| describe(&status);
    let prefix = match command {
        PrefixCommand::Create { cidr, asn, description } => {
            let request = api::CreatePrefixRequest {
                account_id,
                cidr,
                asn,
                description,
            };
            client.create_prefix(request).await.map_err(fail)?.into_inner()
        }
        PrefixCommand::Get { id } => {
            let request = api::GetPrefixRequest {
                account_id,
                prefix_id: id,
            };
            client.get_prefix(request).await.map_err(fail)?.into_inner()
        }
        PrefixCommand::Update { id, description } => {
            let request = api::UpdatePrefixRequest {
                account_id,
                prefix_id: id,
                description,
            };
            client.update_prefix(request).await.map_err(fail)?.into_inner()
        }
        PrefixCommand::Delete { id } => {
            let request = api::DeletePrefixRequest {
                account_id,
                prefix_id: id,
            };
            let deleted = client.delete_prefix(request).await.map_err(fail)?.into_inner();
            print_deleted(&deleted.id, format);
            return Ok(());
        }
        PrefixCommand::List { page_size, page_token } => {
            let follow = page_size.is_none() && page_token.is_none();
            let (all, token) = collect_pages(follow, page_token.unwrap_or_default(), |page_token| {
                let mut client = client.clone();
                let request = api::ListPrefixesRequest {
                    account_id: account_id.clone(),
                    page_size: page_size.unwrap_or(0),
                    page_token,
                };
                async move {
                    let page = client.list_prefixes(request).await.map_err(fail)?.into_inner();
                    Ok((page.prefixes, page.next_page_token))
                }
            })
            .await?;
            output::print(&all, format);
            print_next_token(&token, follow, format);
            return Ok(());
        }
    };
    output::print(&[prefix], format);
    Ok(())
}

async fn bindings(
    mut client: ServiceBindingsClient<Channel>,
    account_id: String,
    command: BindingCommand,
    format: Format,
) -> Result<(), String> {
    let fail = |status: tonic::Status| describe(&status);
    let binding = match command {
        BindingCommand::Create {
            prefix,
            cidr,
            service,
            request_id,
        } => {
            let request = api::CreateServiceBindingRequest {
                account_id,
                prefix_id: prefix,
                cidr,
                service_id: service_id(&service),
                request_id,
            };
            client.create_service_binding(request).await.map_err(fail)?.into_inner()
        }
        BindingCommand::Get { prefix, id } => {
            let request = api::GetServiceBindingRequest {
                account_id,
                prefix_id: prefix,
                binding_id: id,
            };
            client.get_service_binding(request).await.map_err(fail)?.into_inner()
        }
        BindingCommand::Delete { prefix, id } => {
            let request = api::DeleteServiceBindingRequest {
                account_id,
                prefix_id: prefix,
                binding_id: id,
            };
            let deleted = client.delete_service_binding(request).await.map_err(fail)?.into_inner();
            print_deleted(&deleted.id, format);
            return Ok(());
        }
        BindingCommand::List {
            prefix,
            page_size,
            page_token,
        } => {
            let follow = page_size.is_none() && page_token.is_none();
            let (all, token) = collect_pages(follow, page_token.unwrap_or_default(), |page_token| {
                let mut client = client.clone();
                let request = api::ListServiceBindingsRequest {
                    account_id: account_id.clone(),
                    prefix_id: prefix.clone(),
                    page_size: page_size.unwrap_or(0),
                    page_token,
                };
                async move {
                    let page = client.list_service_bindings(request).await.map_err(fail)?.into_inner();
                    Ok((page.bindings, page.next_page_token))
                }
            })
            .await?;
            output::print(&all, format);
            print_next_token(&token, follow, format);
            return Ok(());
        }
    };
    output::print(&[binding], format);
    Ok(())
}

/// Fetches pages until the last one, or just one page when the caller chose the page
/// (`follow` false). Returns the items and the token of the page after them.
async fn collect_pages<T, Page>(
    follow: bool,
    first_token: String,
    mut fetch: impl FnMut(String) -> Page,
) -> Result<(Vec<T>, String), String>
where
    Page: std::future::Future<Output = Result<(Vec<T>, String), String>>,
{
    let mut token = first_token;
    let mut all = Vec::new();
    loop {
        let (items, next_token) = fetch(token).await?;
        all.extend(items);
        token = next_token;
        if !follow || token.is_empty() {
            return Ok((all, token));
        }
    }
}

fn print_deleted(id: &str, format: Format) {
    if format == Format::Json {
        println!("{}", serde_json::json!({"deleted": id}))
    } else {
        println!("deleted {id}")
    }
}

fn print_next_token(token: &str, followed: bool, format: Format) {
    if !followed && !token.is_empty() {
        if format == Format::Json {
            println!("{}", serde_json::json!({"next_page_token": token}));
        } else {
            println!("next page: --page-token {token}");
        }
    }
}

/// Follows the stream; on a disconnect (or the server's UNAVAILABLE at shutdown) reconnects
/// with the last revision seen, so no event is missed or repeated.
async fn watch(
    connection: &Connection,
    account_id: String,
    prefix_id: String,
    binding_id: String,
    mut after_revision: Option<u64>,
    json: bool,
) -> Result<(), String> {
    loop {
        let channel = match connection.connect().await {
            Ok(channel) => channel,
            Err(error) => {
                eprintln!("ipamctl: {error}; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let request = api::WatchServiceBindingsRequest {
            account_id: account_id.clone(),
            prefix_id: prefix_id.clone(),
            binding_id: binding_id.clone(),
            after_revision,
        };
        let mut stream = match ServiceBindingsClient::new(channel)
            .watch_service_bindings(request)
            .await
        {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == tonic::Code::Unavailable => {
                eprintln!("ipamctl: {}; retrying in 1 s", describe(&status));
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(status) => return Err(describe(&status)),
        };
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    after_revision = Some(event.revision);
                    let kind = event
                        .kind()
                        .as_str_name()
                        .trim_start_matches("SERVICE_BINDING_EVENT_KIND_")
                        .to_string();
                    let binding = event.binding.unwrap_or_default();
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({"revision": event.revision, "kind": kind, "binding": binding_json(&binding)})
                        );
                    } else {
                        let state = binding_json(&binding)["state"].as_str().unwrap_or_default().to_string();
                        println!(
                            "{:>8}  {kind:<26}  {:<20}  {:<13}  {state:<12}  {}",
                            event.revision, binding.cidr, binding.service_name, binding.id
                        );
                    }
                }
                Ok(None) => break,
                Err(status) => {
                    eprintln!(
                        "ipamctl: stream ended: {}; resuming after revision {}",
                        describe(&status),
                        after_revision.unwrap_or(0)
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    break;
                }
            }
        }
    }
}
