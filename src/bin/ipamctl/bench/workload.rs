//! The scenarios: what one benchmark call does, and the fixture each needs on the server
//! (prefixes and bindings to look up or to create inside).

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::connection::Transport;
use ipam_bindings::pb::api;
use ipam_bindings::pb::api::prefixes_client::PrefixesClient;
use ipam_bindings::pb::api::routing_client::RoutingClient;
use ipam_bindings::pb::api::service_bindings_client::ServiceBindingsClient;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::BenchArgs;

use ipam_bindings::domain::service::{CDN_ID as CDN, MAGIC_TRANSIT_ID as MAGIC_TRANSIT, SPECTRUM_ID as SPECTRUM};

/// One worker's clients (cheap clones over one channel).
pub struct Clients {
    health: HealthClient<Transport>,
    routing: RoutingClient<Transport>,
    bindings: ServiceBindingsClient<Transport>,
    /// For etcd's KV service (the etcd-put anchor).
    raw: tonic::client::Grpc<Transport>,
}

impl Clients {
    pub fn new(channel: Transport) -> Clients {
        Clients {
            health: HealthClient::new(channel.clone()),
            routing: RoutingClient::new(channel.clone()),
            bindings: ServiceBindingsClient::new(channel.clone()),
            raw: tonic::client::Grpc::new(channel),
        }
    }
}

/// etcd's `etcdserverpb.PutRequest`, its first two fields (key, value): all a put needs.
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdPutRequest {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// etcd's `PutResponse`, unread.
#[derive(Clone, PartialEq, prost::Message)]
struct EtcdPutResponse {}

/// One durable put of a fresh key with a 256-byte value to etcd (`--server` is etcd's client
/// URL): the side-by-side anchor for durable creates, driven by the same client.
async fn etcd_put(clients: &mut Clients, worker: usize, sequence: u64) -> Result<u64, Code> {
    clients.raw.ready().await.map_err(|_| Code::Unavailable)?;
    let request = EtcdPutRequest {
        key: format!("/ipam-bench/{worker}/{sequence}").into_bytes(),
        value: vec![b'x'; 256],
    };
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.KV/Put");
    let codec = tonic_prost::ProstCodec::<EtcdPutRequest, EtcdPutResponse>::default();
    clients
        .raw
        .unary(tonic::Request::new(request), path, codec)
        .await
        .map(|_| 1)
        .map_err(|status| status.code())
}

/// Where durable creates go: /16 prefixes with a prefix-wide binding, filled with /32s.
pub struct CreateTargets {
    prefixes: Vec<api::Prefix>,
    next: AtomicU64,
    /// Each create carries a fresh request id.
    request_ids: bool,
}

impl CreateTargets {
    /// The account owning the target prefixes (to watch only the benchmark's own events).
    pub fn account_id(&self) -> String {
        self.prefixes.first().map(|p| p.account_id.clone()).unwrap_or_default()
    }

    pub fn next_request(&self) -> api::CreateServiceBindingRequest {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let prefix = &self.prefixes[(n % self.prefixes.len() as u64) as usize];
        let base: Ipv4Addr = prefix
            .cidr
            .split('/')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let offset = 1 + (n / self.prefixes.len() as u64) % 65_534;
        let address = Ipv4Addr::from(u32::from(base) + offset as u32);
        api::CreateServiceBindingRequest {
            account_id: prefix.account_id.clone(),
            prefix_id: prefix.id.clone(),
            cidr: format!("{address}/32"),
            service_id: CDN.into(),
            validate_only: false,
            // Unique within the fixture's fresh account, which scopes the keys.
            request_id: if self.request_ids {
                format!("bench-{n}")
            } else {
                String::new()
            },
        }
    }
}

pub enum Workload {
    Health,
    Lookup {
        addresses: Vec<String>,
    },
    LookupBatch {
        addresses: Vec<String>,
        batch: usize,
        view: api::LookupView,
    },
    Create {
        targets: Arc<CreateTargets>,
    },
    Mixed {
        addresses: Vec<String>,
        targets: Arc<CreateTargets>,
        read_ratio: f64,
    },
    /// etcd puts (the server is an etcd cluster).
    EtcdPut,
    /// A scenario that did all its work while preparing (load).
    Done,
}

impl Workload {
    pub async fn prepare(scenario: &str, channels: &[Transport], args: &BenchArgs) -> Result<Workload, String> {
        match scenario {
            "health" => Ok(Workload::Health),
            "lookup" => Ok(Workload::Lookup {
                addresses: lookup_fixture(channels, args).await?,
            }),
            "lookup-batch" | "lookup-batch-compact" => Ok(Workload::LookupBatch {
                addresses: lookup_fixture(channels, args).await?,
                batch: args.batch.max(1),
                view: if scenario == "lookup-batch" {
                    api::LookupView::Full
                } else {
                    api::LookupView::Compact
                },
            }),
            "etcd-put" => Ok(Workload::EtcdPut),
            "create" => Ok(Workload::Create {
                targets: Arc::new(create_fixture(channels, args.request_ids).await?),
            }),
            "mixed" => Ok(Workload::Mixed {
                addresses: lookup_fixture(channels, args).await?,
                targets: Arc::new(create_fixture(channels, args.request_ids).await?),
                read_ratio: args.read_ratio,
            }),
            "load" => {
                let started = std::time::Instant::now();
                let (prefixes, bindings) = load(channels, args).await?;
                let seconds = started.elapsed().as_secs_f64();
                println!(
                    "loaded {prefixes} prefixes and {bindings} bindings in {seconds:.1} s ({:.0} creates/s)",
                    (prefixes + bindings) as f64 / seconds
                );
                Ok(Workload::Done)
            }
            other => Err(format!(
                "unknown scenario {other:?}: use health, lookup, lookup-batch, lookup-batch-compact, create, mixed, watch, load or etcd-put"
            )),
        }
    }

    /// One call; Ok(number of operations it did).
    pub async fn call(&self, clients: &mut Clients, worker: usize, sequence: u64) -> Result<u64, Code> {
        let pick = |addresses: &[String], salt: u64| {
            let index = (sequence.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ (worker as u64).wrapping_add(salt)) as usize;
            addresses[index % addresses.len()].clone()
        };
        match self {
            Workload::Health => {
                let request = HealthCheckRequest { service: String::new() };
                clients.health.check(request).await.map(|_| 1).map_err(|s| s.code())
            }
            Workload::Lookup { addresses } => lookup_one(clients, pick(addresses, 0)).await,
            Workload::LookupBatch { addresses, batch, view } => {
                let start = (sequence as usize * 7919 + worker * 104_729) % addresses.len();
                let batch_addresses = (0..*batch).map(|i| &addresses[(start + i) % addresses.len()]);
                let request = api::LookupAddressesRequest::new(batch_addresses, false, *view);
                clients
                    .routing
                    .lookup_addresses(request)
                    .await
                    // Counted, not decoded: the client shares the machine with the server.
                    .map(|r| r.into_inner().len() as u64)
                    .map_err(|s| s.code())
            }
            Workload::Create { targets } => create_one(clients, targets).await,
            Workload::Mixed {
                addresses,
                targets,
                read_ratio,
            } => {
                let roll = (sequence.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64;
                if roll < *read_ratio {
                    lookup_one(clients, pick(addresses, 1)).await
                } else {
                    create_one(clients, targets).await
                }
            }
            Workload::EtcdPut => etcd_put(clients, worker, sequence).await,
            Workload::Done => Ok(0),
        }
    }
}

async fn lookup_one(clients: &mut Clients, address: String) -> Result<u64, Code> {
    let request = api::LookupAddressRequest {
        address,
        active_only: false,
    };
    match clients.routing.lookup_address(request).await {
        Ok(_) => Ok(1),
        // A miss is an answer, not a failure.
        Err(status) if status.code() == Code::NotFound => Ok(1),
        Err(status) => Err(status.code()),
    }
}

async fn create_one(clients: &mut Clients, targets: &CreateTargets) -> Result<u64, Code> {
    clients
        .bindings
        .create_service_binding(targets.next_request())
        .await
        .map(|_| 1)
        .map_err(|s| s.code())
}

fn random_account() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

async fn create_prefix(
    client: &mut PrefixesClient<Transport>,
    account_id: &str,
    cidr: String,
) -> Result<Option<api::Prefix>, String> {
    let request = api::CreatePrefixRequest {
        account_id: account_id.into(),
        cidr,
        asn: None,
        description: "bench".into(),
        validate_only: false,
    };
    match client.create_prefix(request).await {
        Ok(response) => Ok(Some(response.into_inner())),
        Err(status) if status.code() == Code::AlreadyExists => Ok(None),
        Err(status) => Err(format!("creating a fixture prefix failed: {status:?}")),
    }
}

async fn bind(
    client: &mut ServiceBindingsClient<Transport>,
    prefix: &api::Prefix,
    cidr: String,
    service_id: &str,
) -> Result<Option<api::ServiceBinding>, String> {
    let request = api::CreateServiceBindingRequest {
        account_id: prefix.account_id.clone(),
        prefix_id: prefix.id.clone(),
        cidr,
        service_id: service_id.into(),
        request_id: String::new(),
        validate_only: false,
    };
    match client.create_service_binding(request).await {
        Ok(response) => Ok(Some(response.into_inner())),
        Err(status) if status.code() == Code::AlreadyExists => Ok(None),
        Err(status) => Err(format!("creating a fixture binding failed: {status:?}")),
    }
}

async fn unbind(client: &mut ServiceBindingsClient<Transport>, binding: &api::ServiceBinding) -> Result<(), String> {
    let request = api::DeleteServiceBindingRequest {
        account_id: binding.account_id.clone(),
        prefix_id: binding.prefix_id.clone(),
        binding_id: binding.id.clone(),
        validate_only: false,
    };
    match client.delete_service_binding(request).await {
        Ok(_) => Ok(()),
        Err(status) => Err(format!("deleting a churn binding failed: {status:?}")),
    }
}

/// 16 fresh /16s in 10.0.0.0/8 (skipping any already taken), each with a prefix-wide binding;
/// creates into them carry request ids if `request_ids`.
pub async fn create_fixture(channels: &[Transport], request_ids: bool) -> Result<CreateTargets, String> {
    let mut prefixes_client = PrefixesClient::new(channels[0].clone());
    let mut bindings_client = ServiceBindingsClient::new(channels[0].clone());
    let account_id = random_account();
    let mut prefixes = Vec::new();
    for second_octet in 0..=255u32 {
        if prefixes.len() == 16 {
            break;
        }
        if let Some(prefix) =
            create_prefix(&mut prefixes_client, &account_id, format!("10.{second_octet}.0.0/16")).await?
        {
            bind(&mut bindings_client, &prefix, prefix.cidr.clone(), MAGIC_TRANSIT).await?;
            prefixes.push(prefix);
        }
    }
    if prefixes.is_empty() {
        return Err("10.0.0.0/8 is full on this server: use a fresh data dir".into());
    }
    // With several replicas (--server a,b,c), each must hold the targets before creates start.
    if let Some(last) = prefixes.last() {
        for channel in &channels[1..] {
            wait_until_listed(channel, last).await?;
        }
    }
    Ok(CreateTargets {
        prefixes,
        next: AtomicU64::new(0),
        request_ids,
    })
}

/// Waits until the server behind `channel` lists the prefix's prefix-wide binding.
async fn wait_until_listed(channel: &Transport, prefix: &api::Prefix) -> Result<(), String> {
    let mut client = ServiceBindingsClient::new(channel.clone());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let request = api::ListServiceBindingsRequest {
            account_id: prefix.account_id.clone(),
            prefix_id: prefix.id.clone(),
            ..Default::default()
        };
        if let Ok(listed) = client.list_service_bindings(request).await
            && !listed.into_inner().bindings.is_empty()
        {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err("a replica did not receive the benchmark's fixture within 30 s".into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Loads prefixes with nested bindings (see [`load`]) and returns addresses inside them,
/// plus 10% addresses outside every prefix (misses).
async fn lookup_fixture(channels: &[Transport], args: &BenchArgs) -> Result<Vec<String>, String> {
    // Addresses come from the whole index range: prefixes an earlier load made count too.
    load(channels, args).await?;
    let n_prefixes = args.prefixes;
    let mut rng_state = 0x853c_49e6_748f_ea9b_u64;
    let mut next = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    let n_v6 = (n_prefixes / 4).max(1) as u64;
    let n_v4 = (n_prefixes - n_prefixes / 4).max(1) as u64;
    let mut addresses = Vec::with_capacity(100_000);
    for _ in 0..100_000 {
        let address = match next() % 10 {
            // 198.18.0.0/16: inside no prefix.
            0 => Ipv4Addr::from(0xc612_0000 | (next() as u32 & 0xffff)).to_string(),
            1 => Ipv6Addr::from(u128::from(v6_prefix((next() % n_v6) as u32).0) | u128::from(next() & 0xffff))
                .to_string(),
            _ => Ipv4Addr::from(u32::from(v4_prefix((next() % n_v4) as u32).0) | (next() as u32 & 0xff)).to_string(),
        };
        addresses.push(address);
    }
    Ok(addresses)
}

/// The i-th /24 of 20.0.0.0/6 (262,144 of them), and the i-th /48 of 2001:db8::/32 for IPv6.
/// Benchmark servers hold no real customers, so any space will do.
fn v4_prefix(index: u32) -> (Ipv4Addr, u8) {
    (Ipv4Addr::from(0x1400_0000u32 + (index % 262_144) * 256), 24)
}

fn v6_prefix(index: u32) -> (Ipv6Addr, u8) {
    (
        Ipv6Addr::from(0x2001_0db8_0000_u128 << 80 | (u128::from(index % 65_536) << 80)),
        48,
    )
}

/// Fills the server with `--prefixes` prefixes (3 IPv4 /24s for each IPv6 /48) with
/// `--bindings-per-prefix` bindings each, nested as in real use: the prefix-wide binding on
/// Magic Transit, a half on CDN, a quarter on Spectrum, then CDN /32s (/128s). Uses
/// `--concurrency` writers so that group commit batches them. Existing ones are skipped.
pub async fn load(channels: &[Transport], args: &BenchArgs) -> Result<(usize, usize), String> {
    let account_id = random_account();
    let next_prefix = Arc::new(AtomicU64::new(0));
    let n_bindings = Arc::new(AtomicU64::new(0));
    let n_prefixes_created = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency.clamp(1, 256) {
        let channel = channels[worker % channels.len()].clone();
        let (account_id, next_prefix, n_bindings) = (account_id.clone(), next_prefix.clone(), n_bindings.clone());
        let n_prefixes_created = Arc::clone(&n_prefixes_created);
        let (n_prefixes, per_prefix, churn) = (args.prefixes as u64, args.bindings_per_prefix, args.churn_per_prefix);
        workers.spawn(async move {
            let mut prefixes = PrefixesClient::new(channel.clone());
            let mut bindings = ServiceBindingsClient::new(channel);
            loop {
                let index = next_prefix.fetch_add(1, Ordering::Relaxed);
                if index >= n_prefixes {
                    return Ok::<(), String>(());
                }
                let index = index as u32;
                let cidrs: Vec<(String, &str)> = if index % 4 == 3 {
                    let (base, _) = v6_prefix(index / 4);
                    let base = u128::from(base);
                    let mut cidrs = vec![(format!("{}/48", Ipv6Addr::from(base)), MAGIC_TRANSIT)];
                    cidrs.push((format!("{}/49", Ipv6Addr::from(base)), CDN));
                    cidrs.push((format!("{}/50", Ipv6Addr::from(base)), SPECTRUM));
                    cidrs.extend(
                        (1..)
                            .map(|host| (format!("{}/128", Ipv6Addr::from(base | host)), CDN))
                            .take(per_prefix),
                    );
                    cidrs
                } else {
                    let (base, _) = v4_prefix(index - index / 4);
                    let base = u32::from(base);
                    let mut cidrs = vec![(format!("{}/24", Ipv4Addr::from(base)), MAGIC_TRANSIT)];
                    cidrs.push((format!("{}/25", Ipv4Addr::from(base)), CDN));
                    cidrs.push((format!("{}/26", Ipv4Addr::from(base)), SPECTRUM));
                    cidrs.extend((1..255u32).map(|host| (format!("{}/32", Ipv4Addr::from(base | host)), CDN)));
                    cidrs
                };
                let Some(prefix) = create_prefix(&mut prefixes, &account_id, cidrs[0].0.clone()).await? else {
                    // Already there (an earlier load): skipped, not counted.
                    continue;
                };
                n_prefixes_created.fetch_add(1, Ordering::Relaxed);
                let churn_cidr = cidrs.last().map(|(cidr, _)| cidr.clone()).unwrap_or_default();
                for (cidr, service) in cidrs.into_iter().take(per_prefix) {
                    bind(&mut bindings, &prefix, cidr, service).await?;
                    n_bindings.fetch_add(1, Ordering::Relaxed);
                }
                for _ in 0..churn {
                    let created = bind(&mut bindings, &prefix, churn_cidr.clone(), CDN).await?;
                    if let Some(binding) = created {
                        unbind(&mut bindings, &binding).await?;
                    }
                }
            }
        });
    }
    while let Some(result) = workers.join_next().await {
        result.map_err(|error| error.to_string())??;
    }
    Ok((
        n_prefixes_created.load(Ordering::Relaxed) as usize,
        n_bindings.load(Ordering::Relaxed) as usize,
    ))
}
