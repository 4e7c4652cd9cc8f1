//! `ipamctl bench`: load generation against a running server. Closed loop by default (each of
//! `--concurrency` workers issues its next call when the last one returns); with `--rate` it is
//! open loop: calls are scheduled at fixed times and latency is measured from the scheduled
//! time, so a stalled server shows up in the tail instead of being hidden (coordinated
//! omission). `--compare a,b` alternates scenarios in one invocation and prints their ratio,
//! because absolute numbers drift on shared machines.

pub mod plot;
pub mod stats;
pub mod watch;
pub mod workload;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::connection::Transport;
use tokio::time::Instant;

pub use crate::cli::BenchArgs;
use crate::connection::Connection;
use stats::{Recorder, Summary};
use workload::Workload;

/// One measured run.
pub struct RunResult {
    pub scenario: String,
    pub summary: Summary,
    pub recorder: Recorder,
}

pub async fn run(connection: &Connection, args: &BenchArgs, json: bool) -> Result<(), String> {
    let channels = open_channels(connection, args.connections).await?;
    if let ("watch" | "watch-routes", true) = (args.scenario.as_str(), args.compare.is_empty()) {
        return watch::run(&channels, args, json).await;
    }
    let scenarios: Vec<String> = if args.compare.is_empty() {
        vec![args.scenario.clone()]
    } else {
        args.compare.clone()
    };
    let mut workloads = Vec::new();
    for scenario in &scenarios {
        let workload = Workload::prepare(scenario, &channels, args).await?;
        workloads.push((scenario.clone(), Arc::new(workload)));
    }
    let rounds = if scenarios.len() > 1 { args.rounds.max(1) } else { 1 };
    let mut results: Vec<RunResult> = Vec::new();
    for round in 0..rounds {
        for (scenario, workload) in &workloads {
            if matches!(**workload, Workload::Done) {
                continue;
            }
            let (summary, recorder) = measure(Arc::clone(workload), &channels, args, scenario).await;
            if json {
                let mut value = summary.to_json(scenario);
                value["round"] = serde_json::json!(round);
                value["concurrency"] = serde_json::json!(args.concurrency);
                value["connections"] = serde_json::json!(args.connections);
                println!("{value}");
            } else {
                println!("{}", summary.to_line(scenario));
            }
            results.push(RunResult {
                scenario: scenario.clone(),
                summary,
                recorder,
            });
        }
    }
    if scenarios.len() > 1 {
        print_ratios(&scenarios, &results, json);
    }
    if let Some(path) = &args.plot {
        let series: Vec<(String, Recorder)> = scenarios
            .iter()
            .map(|scenario| {
                let mut merged = Recorder::new();
                results
                    .iter()
                    .filter(|r| &r.scenario == scenario)
                    .for_each(|r| merged.merge(&r.recorder));
                (scenario.clone(), merged)
            })
            .filter(|(_, recorder)| recorder.n_calls > 0)
            .collect();
        plot::draw(path, &series)?;
        eprintln!("latency curve written to {}", path.display());
    }
    Ok(())
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn print_ratios(scenarios: &[String], results: &[RunResult], json: bool) {
    let medians: Vec<f64> = scenarios
        .iter()
        .map(|scenario| {
            median(
                results
                    .iter()
                    .filter(|r| &r.scenario == scenario)
                    .map(|r| r.summary.calls_per_s)
                    .collect(),
            )
        })
        .collect();
    let baseline = medians[0].max(f64::EPSILON);
    for (scenario, value) in scenarios.iter().zip(&medians).skip(1) {
        let ratio = value / baseline;
        if json {
            println!(
                "{}",
                serde_json::json!({"ratio": ratio, "scenario": scenario, "baseline": scenarios[0], "median_calls_per_s": value, "baseline_median_calls_per_s": baseline})
            );
        } else {
            println!(
                "ratio {scenario}/{}: {ratio:.3} (median calls/s {value:.0} vs {baseline:.0})",
                scenarios[0]
            );
        }
    }
}

/// `n` connections; with several servers (`--server a,b,c`: replicas), spread over them in
/// turn (workers are spread over connections, so over the servers too).
pub async fn open_channels(connection: &Connection, n: usize) -> Result<Vec<Transport>, String> {
    let servers: Vec<&str> = connection.server.split(',').map(str::trim).collect();
    let mut channels = Vec::new();
    for index in 0..n.max(servers.len()) {
        let mut server = connection.clone();
        server.server = servers[index % servers.len()].to_string();
        channels.push(server.connect().await?);
    }
    Ok(channels)
}

/// A progress bar over warmup + measurement on a terminal; hidden (a no-op) otherwise.
fn progress_bar(scenario: &str, total: Duration) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total.as_millis() as u64),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template("{prefix:>14} [{bar:40}] {elapsed}/{duration}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(scenario.to_string());
    bar
}

/// Runs the workload's workers through warmup and the measured window.
async fn measure(
    workload: Arc<Workload>,
    channels: &[Transport],
    args: &BenchArgs,
    scenario: &str,
) -> (Summary, Recorder) {
    let start = Instant::now();
    let bar = progress_bar(scenario, args.warmup + args.duration);
    let ticker = {
        let bar = bar.clone();
        tokio::spawn(async move {
            loop {
                bar.set_position(start.elapsed().as_millis() as u64);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let measure_from = start + args.warmup;
    let measure_until = measure_from + args.duration;
    let issued = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    let concurrency = args.concurrency.max(1);
    for worker in 0..concurrency {
        let workload = Arc::clone(&workload);
        let channel = channels[worker % channels.len()].clone();
        let issued = Arc::clone(&issued);
        let (rate, requests) = (args.rate, args.requests);
        workers.spawn(async move {
            let mut recorder = Recorder::new();
            let mut clients = workload::Clients::new(channel);
            let mut sequence: u64 = 0;
            loop {
                let intended = match rate {
                    // Worker k owns ticks k, k + C, k + 2C, ... of the global schedule.
                    Some(rate) => {
                        let tick = sequence * concurrency as u64 + worker as u64;
                        let at = start + Duration::from_secs_f64(tick as f64 / rate);
                        tokio::time::sleep_until(at).await;
                        at
                    }
                    None => Instant::now(),
                };
                if intended >= measure_until {
                    break;
                }
                let measured = intended >= measure_from;
                if measured
                    && let Some(limit) = requests
                    && issued.fetch_add(1, Ordering::Relaxed) >= limit
                {
                    break;
                }
                let result = workload.call(&mut clients, worker, sequence).await;
                let latency = intended.elapsed();
                if measured {
                    match result {
                        Ok(n_ops) => recorder.record_ok(latency, n_ops),
                        Err(code) => recorder.record_error(latency, code),
                    }
                }
                sequence += 1;
            }
            recorder
        });
    }
    let mut total = Recorder::new();
    while let Some(recorder) = workers.join_next().await {
        if let Ok(recorder) = recorder {
            total.merge(&recorder);
        }
    }
    ticker.abort();
    bar.finish_and_clear();
    let elapsed = Instant::now()
        .min(measure_until)
        .saturating_duration_since(measure_from);
    (total.summary(elapsed), total)
}
