//! The watch fan-out benchmark: `--watchers` live watchers while creates run at a steady
//! `--rate`. Reports delivery lag from the writer's acknowledgement to arrival at each watcher
//! (p50, p99, max; an event that arrives before the writer has its reply counts as 0), events
//! lost (every watcher must see every create), and the create throughput with and without one
//! stalled watcher (a stream that is never read), alternated in one run.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipam_bindings::pb::api;
use ipam_bindings::pb::api::service_bindings_client::ServiceBindingsClient;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::BenchArgs;
use super::stats::Recorder;
use super::workload::{Clients, Workload, create_fixture};

pub async fn run(channels: &[Channel], args: &BenchArgs, json: bool) -> Result<(), String> {
    let targets = Arc::new(create_fixture(channels).await?);
    let workload = Arc::new(Workload::Create {
        targets: Arc::clone(&targets),
    });
    let account_id = targets.account_id();

    // 1. Fan-out: lag and loss.
    let acknowledged: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut watchers = tokio::task::JoinSet::new();
    let (stop_sender, stop) = tokio::sync::watch::channel(false);
    for index in 0..args.watchers {
        let mut client = ServiceBindingsClient::new(channels[index % channels.len()].clone());
        let request = api::WatchServiceBindingsRequest {
            account_id: account_id.clone(),
            ..Default::default()
        };
        let mut stream = client
            .watch_service_bindings(request)
            .await
            .map_err(|s| format!("watch: {s:?}"))?
            .into_inner();
        let mut stop = stop.clone();
        watchers.spawn(async move {
            let mut arrivals: Vec<(String, Instant)> = Vec::new();
            loop {
                tokio::select! {
                    message = stream.message() => match message {
                        Ok(Some(event)) => {
                            if event.kind() == api::ServiceBindingEventKind::Created
                                && let Some(binding) = event.binding
                            {
                                arrivals.push((binding.id, Instant::now()));
                            }
                        }
                        _ => break,
                    },
                    _ = stop.wait_for(|stopping| *stopping) => break,
                }
            }
            arrivals
        });
    }
    let rate = args.rate.unwrap_or(500.0);
    let started = Instant::now();
    let mut clients = Clients::new(channels[0].clone());
    let mut n_created = 0u64;
    let mut sequence = 0u64;
    while started.elapsed() < args.duration {
        let at = started + Duration::from_secs_f64(sequence as f64 / rate);
        tokio::time::sleep_until(at).await;
        if let Ok(response) = clients
            .bindings_mut()
            .create_service_binding(targets.next_request())
            .await
        {
            acknowledged
                .lock()
                .map_err(|_| "poisoned")?
                .insert(response.into_inner().id, Instant::now());
            n_created += 1;
        }
        sequence += 1;
    }
    // Let the last events arrive, then stop the watchers.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = stop_sender.send(true);
    let acknowledged = acknowledged.lock().map_err(|_| "poisoned")?.clone();
    let mut lag = Recorder::new();
    let mut lost = 0u64;
    while let Some(arrivals) = watchers.join_next().await {
        let arrivals = arrivals.map_err(|e| e.to_string())?;
        let seen: HashMap<&String, &Instant> = arrivals.iter().map(|(id, at)| (id, at)).collect();
        for (id, acked_at) in &acknowledged {
            match seen.get(id) {
                Some(arrived) => lag.record_ok(arrived.saturating_duration_since(*acked_at), 1),
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
        let mut client = ServiceBindingsClient::new(channels[0].clone());
        let request = api::WatchServiceBindingsRequest {
            account_id: account_id.clone(),
            ..Default::default()
        };
        let stalled = client
            .watch_service_bindings(request)
            .await
            .map_err(|s| format!("watch: {s:?}"))?
            .into_inner();
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
                "scenario": "watch", "watchers": args.watchers, "rate": rate, "created": n_created,
                "deliveries": lag_summary.n_calls, "lost": lost,
                "lag_ms": {"p50": lag_summary.p50_ms, "p99": lag_summary.p99_ms, "max": lag_summary.max_ms},
                "creates_per_s_without_stalled": without, "creates_per_s_with_stalled": with,
                "stalled_ratio": with_median / without_median,
            })
        );
    } else {
        println!(
            "watch: {} watchers, {n_created} creates at {rate:.0}/s, {} deliveries, {lost} lost",
            args.watchers, lag_summary.n_calls
        );
        println!(
            "delivery lag from acknowledgement: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
            lag_summary.p50_ms, lag_summary.p99_ms, lag_summary.max_ms
        );
        println!(
            "creates/s at concurrency {}: without a stalled watcher {without:.0?}, with one {with:.0?}; median ratio {:.3}",
            args.concurrency,
            with_median / without_median
        );
    }
    Ok(())
}

async fn closed_loop_creates(
    workload: &Arc<Workload>,
    channels: &[Channel],
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
