//! The watch fan-out benchmark: `--watchers` live watchers while creates run at a steady
//! `--rate` (each create is its own task, so a slow reply does not lower the rate). Reports
//! delivery lag from commit to arrival at each watcher (the event's `time`, stamped by the
//! server when it decided the change, to the watcher's clock on arrival: both on this
//! machine), events lost (every watcher must see every acknowledged create), and the create
//! throughput with and without one stalled watcher (a stream that is never read), alternated.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::connection::Transport;
use ipam_bindings::pb::api;
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

    // 1. Fan-out: lag and loss.
    let acknowledged: Arc<Mutex<HashSet<String>>> = Arc::default();
    let n_arrivals = Arc::new(AtomicU64::new(0));
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
        let n_arrivals = Arc::clone(&n_arrivals);
        watchers.spawn(async move {
            // (binding id, lag from the event's commit time to arrival)
            let mut arrivals: Vec<(String, Duration)> = Vec::new();
            loop {
                tokio::select! {
                    message = stream.message() => match message {
                        Ok(Some(event)) => {
                            if event.kind() == api::ServiceBindingEventKind::Created
                                && let (Some(binding), Some(time)) = (event.binding, event.time)
                            {
                                let committed = UNIX_EPOCH + Duration::new(time.seconds as u64, time.nanos as u32);
                                let lag = SystemTime::now().duration_since(committed).unwrap_or_default();
                                arrivals.push((binding.id, lag));
                                n_arrivals.fetch_add(1, Ordering::Relaxed);
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
    let mut creates = tokio::task::JoinSet::new();
    let mut sequence = 0u64;
    while started.elapsed() < args.duration {
        let at = started + Duration::from_secs_f64(sequence as f64 / rate);
        tokio::time::sleep_until(at).await;
        let mut client = ServiceBindingsClient::new(channels[sequence as usize % channels.len()].clone());
        let (request, acknowledged) = (targets.next_request(), Arc::clone(&acknowledged));
        creates.spawn(async move {
            if let Ok(response) = client.create_service_binding(request).await
                && let Ok(mut acknowledged) = acknowledged.lock()
            {
                acknowledged.insert(response.into_inner().id);
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
        let seen: HashMap<&String, &Duration> = arrivals.iter().map(|(id, lag)| (id, lag)).collect();
        for id in &acknowledged {
            match seen.get(id) {
                Some(lag_of_event) => lag.record_ok(**lag_of_event, 1),
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
            "delivery lag from commit: p50 {:.3} ms  p99 {:.3} ms  max {:.3} ms",
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
