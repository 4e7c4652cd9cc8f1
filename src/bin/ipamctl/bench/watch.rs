//! The watch fan-out benchmark: `--watchers` live watchers while creates run at a steady
//! `--rate` (each create is its own task, so a slow reply does not lower the rate). Reports
//! delivery lag to arrival at each watcher, events lost (every watcher must see every
//! acknowledged create), and the create throughput with and without one stalled watcher (a
//! stream that is never read), alternated.
//!
//! `watch` follows WatchServiceBindings: the lag is from the event's `time` (stamped by the
//! server when it decided the change) to the watcher's clock on arrival, both on this machine.
//! `watch-routes` follows WatchRoutes (the account's whole table, from its head): a delta
//! carries no time, so the lag is from the create's sending, and a create arrives with the
//! delta whose added routes name its binding.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::connection::Transport;
use ipam_bindings::pb::api;
use ipam_bindings::pb::api::routing_client::RoutingClient;
use ipam_bindings::pb::api::service_bindings_client::ServiceBindingsClient;
use tokio::time::Instant;

use super::BenchArgs;
use super::stats::Recorder;
use super::workload::{Clients, Workload, create_fixture};

pub async fn run(channels: &[Transport], args: &BenchArgs, json: bool) -> Result<(), String> {
    let targets = Arc::new(create_fixture(channels, false).await?);
    let workload = Arc::new(Workload::Create {
        targets: Arc::clone(&targets),
    });
    let account_id = targets.account_id();
    let routes = args.scenario == "watch-routes";

    // 1. Fan-out: lag and loss.
    // Each acknowledged create's binding id, and when it was sent.
    let acknowledged: Arc<Mutex<HashMap<String, SystemTime>>> = Arc::default();
    let n_arrivals = Arc::new(AtomicU64::new(0));
    let mut watchers = tokio::task::JoinSet::new();
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    for index in 0..args.watchers {
        let mut stream = Watched::open(&channels[index % channels.len()], &account_id, routes).await?;
        let mut stop = stop.clone();
        let n_arrivals = Arc::clone(&n_arrivals);
        watchers.spawn(async move {
            let mut arrivals: Vec<Arrival> = Vec::new();
            loop {
                tokio::select! {
                    arrived = stream.next() => match arrived {
                        Some(mut arrived) => {
                            // One per message that brings a create: a delta's added routes
                            // are one create's binding and the pieces of those it splits.
                            n_arrivals.fetch_add(arrived.len().min(1) as u64, Ordering::Relaxed);
                            arrivals.append(&mut arrived);
                        }
                        None => break,
                    },
                    _ = stop.wait_for(|stopping| *stopping) => break,
                }
            }
            arrivals
        });
    }
    let rate = args.rate.unwrap_or(500.0);
    let started = Instant::now();
    let mut creates = tokio::task::JoinSet::new();
    let mut sequence = 0u64;
    while started.elapsed() < args.duration {
        let at = started + Duration::from_secs_f64(sequence as f64 / rate);
        tokio::time::sleep_until(at).await;
        let mut client = ServiceBindingsClient::new(channels[sequence as usize % channels.len()].clone());
        let (request, acknowledged) = (targets.next_request(), Arc::clone(&acknowledged));
        creates.spawn(async move {
            let sent = SystemTime::now();
            if let Ok(response) = client.create_service_binding(request).await
                && let Ok(mut acknowledged) = acknowledged.lock()
            {
                acknowledged.insert(response.into_inner().id, sent);
            }
        });
        sequence += 1;
    }
    while creates.join_next().await.is_some() {}
    // Let the last events arrive (until all have, or nothing moved for 5 s), then stop.
    let expected = acknowledged.lock().map_err(|_| "poisoned")?.len() as u64 * args.watchers as u64;
    let (mut last_count, mut last_progress) = (0, Instant::now());
    while last_progress.elapsed() < Duration::from_secs(5) {
        let count = n_arrivals.load(Ordering::Relaxed);
        if count >= expected {
            break;
        }
        if count != last_count {
            (last_count, last_progress) = (count, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = stop_sender.send(true);
    let acknowledged = acknowledged.lock().map_err(|_| "poisoned")?.clone();
    let n_created = acknowledged.len();
    let mut lag = Recorder::new();
    let mut lost = 0u64;
    while let Some(arrivals) = watchers.join_next().await {
        let arrivals = arrivals.map_err(|e| e.to_string())?;
        // A binding's first arrival (a later delta may split it again).
        let mut seen: HashMap<&String, &Arrival> = HashMap::new();
        for arrival in &arrivals {
            seen.entry(&arrival.binding_id).or_insert(arrival);
        }
        for (id, sent) in &acknowledged {
            match seen.get(id) {
                Some(arrival) => {
                    let since = arrival.committed.unwrap_or(*sent);
                    lag.record_ok(arrival.at.duration_since(since).unwrap_or_default(), 1)
                }
                None => lost += 1,
            }
        }
    }
    let lag_summary = lag.summary(args.duration);

    // 2. Write throughput with and without one stalled watcher, alternated.
    let mut without = Vec::new();
    let mut with = Vec::new();
    let window = Duration::from_secs(3);
    for _ in 0..args.rounds.max(1) {
        without.push(closed_loop_creates(&workload, channels, args.concurrency, window).await);
        let stalled = Watched::open(&channels[0], &account_id, routes).await?;
        with.push(closed_loop_creates(&workload, channels, args.concurrency, window).await);
        drop(stalled);
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (without_median, with_median) = (median(without.clone()), median(with.clone()));
    if json {
        println!(
            "{}",
            serde_json::json!({
                "scenario": args.scenario, "watchers": args.watchers, "rate": rate, "created": n_created,
                "deliveries": lag_summary.n_calls, "lost": lost,
                "lag_ms": {"p50": lag_summary.p50_ms, "p99": lag_summary.p99_ms, "max": lag_summary.max_ms},
                "creates_per_s_without_stalled": without, "creates_per_s_with_stalled": with,
                "stalled_ratio": with_median / without_median,
            })
        );
    } else {
        println!(
            "{}: {} watchers, {n_created} creates at {rate:.0}/s, {} deliveries, {lost} lost",
            args.scenario, args.watchers, lag_summary.n_calls
        );
        println!(
            "delivery lag from {}: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            if routes { "the create's sending" } else { "commit" },
            lag_summary.p50_ms,
            lag_summary.p99_ms,
            lag_summary.max_ms
        );
        println!(
            "creates/s at concurrency {}: without a stalled watcher {without:.0?}, with one {with:.0?}; median ratio {:.3}",
            args.concurrency,
            with_median / without_median
        );
    }
    Ok(())
}

/// A created binding seen by a watcher.
struct Arrival {
    binding_id: String,
    /// The watcher's clock on arrival.
    at: SystemTime,
    /// The server's time of the change, when the message carries it.
    committed: Option<SystemTime>,
}

/// One watcher's stream, of either kind.
enum Watched {
    Bindings(tonic::Streaming<api::ServiceBindingEvent>),
    Routes(tonic::Streaming<api::RouteDelta>),
}

impl Watched {
    /// A watcher of the account's routing table (`routes`) or of its binding events.
    async fn open(channel: &Transport, account_id: &str, routes: bool) -> Result<Watched, String> {
        Ok(match routes {
            true => Watched::Routes(watch_routes(channel, account_id).await?),
            false => Watched::Bindings(watch_bindings(channel, account_id).await?),
        })
    }

    /// The created bindings the next message brings (none for other messages); `None` once the
    /// stream ends or fails.
    async fn next(&mut self) -> Option<Vec<Arrival>> {
        match self {
            Watched::Bindings(stream) => {
                let event = stream.message().await.ok()??;
                let created = event.kind() == api::ServiceBindingEventKind::Created;
                Some(match (created, event.binding, event.time) {
                    (true, Some(binding), Some(time)) => vec![Arrival {
                        binding_id: binding.id,
                        at: SystemTime::now(),
                        committed: Some(UNIX_EPOCH + Duration::new(time.seconds as u64, time.nanos as u32)),
                    }],
                    _ => Vec::new(),
                })
            }
            // Every route the delta adds names its binding: the new one, and the pieces of the
            // ones around it that it split.
            Watched::Routes(stream) => {
                let delta = stream.message().await.ok()??;
                let at = SystemTime::now();
                let arrivals = delta.added.into_iter().map(|route| Arrival {
                    binding_id: route.binding_id,
                    at,
                    committed: None,
                });
                Some(arrivals.collect())
            }
        }
    }
}

async fn watch_bindings(
    channel: &Transport,
    account_id: &str,
) -> Result<tonic::Streaming<api::ServiceBindingEvent>, String> {
    let request = api::WatchServiceBindingsRequest {
        account_id: account_id.to_string(),
        ..Default::default()
    };
    let response = ServiceBindingsClient::new(channel.clone())
        .watch_service_bindings(request)
        .await;
    Ok(response.map_err(|s| format!("watch: {s:?}"))?.into_inner())
}

/// The account's whole table, from the revision of its export.
async fn watch_routes(channel: &Transport, account_id: &str) -> Result<tonic::Streaming<api::RouteDelta>, String> {
    let mut client = RoutingClient::new(channel.clone());
    let export = api::ExportRoutesRequest {
        account_id: account_id.to_string(),
        ..Default::default()
    };
    let mut chunks = (client.export_routes(export).await)
        .map_err(|s| format!("export: {s:?}"))?
        .into_inner();
    let revision = (chunks.message().await)
        .map_err(|s| format!("export: {s:?}"))?
        .map_or(0, |chunk| chunk.revision);
    let request = api::WatchRoutesRequest {
        account_id: account_id.to_string(),
        after_revision: revision,
        ..Default::default()
    };
    let response = client.watch_routes(request).await;
    Ok(response.map_err(|s| format!("watch routes: {s:?}"))?.into_inner())
}

async fn closed_loop_creates(
    workload: &Arc<Workload>,
    channels: &[Transport],
    concurrency: usize,
    window: Duration,
) -> f64 {
    let deadline = Instant::now() + window;
    let mut workers = tokio::task::JoinSet::new();
    for worker in 0..concurrency.max(1) {
        let workload = Arc::clone(workload);
        let mut clients = Clients::new(channels[worker % channels.len()].clone());
        workers.spawn(async move {
            let mut n = 0u64;
            let mut sequence = 0;
            while Instant::now() < deadline {
                if workload.call(&mut clients, worker, sequence).await.is_ok() {
                    n += 1;
                }
                sequence += 1;
            }
            n
        });
    }
    let mut total = 0;
    while let Some(n) = workers.join_next().await {
        total += n.unwrap_or(0);
    }
    total as f64 / window.as_secs_f64()
}
