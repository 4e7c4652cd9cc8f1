//! Latency statistics of a benchmark run: an HDR histogram of microseconds, summarized as
//! throughput and the usual percentiles.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// What one worker (or a whole run) recorded.
pub struct Recorder {
    pub latencies_us: Histogram<u64>,
    /// Operations completed: calls, or addresses for batched lookups.
    pub n_ops: u64,
    pub n_calls: u64,
    /// Failed calls by gRPC status code name.
    pub errors: BTreeMap<String, u64>,
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

impl Recorder {
    pub fn new() -> Recorder {
        // 1 µs .. 100 s at 3 significant digits.
        let latencies_us = Histogram::new_with_bounds(1, 100_000_000, 3).unwrap_or_else(|_| Histogram::new(3).unwrap());
        Recorder {
            latencies_us,
            n_ops: 0,
            n_calls: 0,
            errors: BTreeMap::new(),
        }
    }

    pub fn record_ok(&mut self, latency: Duration, n_ops: u64) {
        self.latencies_us.saturating_record(latency.as_micros().max(1) as u64);
        self.n_ops += n_ops;
        self.n_calls += 1;
    }

    pub fn record_error(&mut self, latency: Duration, code: tonic::Code) {
        self.latencies_us.saturating_record(latency.as_micros().max(1) as u64);
        self.n_calls += 1;
        *self.errors.entry(format!("{code:?}")).or_default() += 1;
    }

    pub fn merge(&mut self, other: &Recorder) {
        let _ = self.latencies_us.add(&other.latencies_us);
        self.n_ops += other.n_ops;
        self.n_calls += other.n_calls;
        for (code, count) in &other.errors {
            *self.errors.entry(code.clone()).or_default() += count;
        }
    }

    pub fn summary(&self, elapsed: Duration) -> Summary {
        let seconds = elapsed.as_secs_f64().max(f64::EPSILON);
        let percentile = |q: f64| self.latencies_us.value_at_quantile(q) as f64 / 1000.0;
        Summary {
            elapsed_s: elapsed.as_secs_f64(),
            n_calls: self.n_calls,
            n_ops: self.n_ops,
            ops_per_s: self.n_ops as f64 / seconds,
            calls_per_s: self.n_calls as f64 / seconds,
            p50_ms: percentile(0.50),
            p90_ms: percentile(0.90),
            p99_ms: percentile(0.99),
            p999_ms: percentile(0.999),
            max_ms: self.latencies_us.max() as f64 / 1000.0,
            errors: self.errors.clone(),
        }
    }
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct Summary {
    pub elapsed_s: f64,
    pub n_calls: u64,
    pub n_ops: u64,
    pub ops_per_s: f64,
    pub calls_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub errors: BTreeMap<String, u64>,
}

impl Summary {
    pub fn to_json(&self, scenario: &str) -> serde_json::Value {
        serde_json::json!({
            "scenario": scenario,
            "elapsed_s": self.elapsed_s,
            "calls": self.n_calls,
            "ops": self.n_ops,
            "ops_per_s": self.ops_per_s,
            "calls_per_s": self.calls_per_s,
            "latency_ms": {
                "p50": self.p50_ms, "p90": self.p90_ms, "p99": self.p99_ms, "p99.9": self.p999_ms, "max": self.max_ms,
            },
            "errors": self.errors,
        })
    }

    pub fn to_line(&self, scenario: &str) -> String {
        let errors = if self.errors.is_empty() {
            String::new()
        } else {
            format!("  errors {:?}", self.errors)
        };
        format!(
            "{scenario:<14} {:>10.0} ops/s {:>10.0} calls/s  p50 {:>7.3} ms  p90 {:>7.3}  p99 {:>7.3}  p99.9 {:>7.3}  max {:>8.3}  ({} calls in {:.1} s){errors}",
            self.ops_per_s,
            self.calls_per_s,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.n_calls,
            self.elapsed_s
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_throughput() {
        let mut recorder = Recorder::new();
        for ms in 1..=100u64 {
            recorder.record_ok(Duration::from_millis(ms), 10);
        }
        recorder.record_error(Duration::from_millis(1), tonic::Code::Unavailable);
        let summary = recorder.summary(Duration::from_secs(2));
        assert_eq!(summary.n_calls, 101);
        assert_eq!(summary.n_ops, 1000);
        assert!((summary.ops_per_s - 500.0).abs() < 1e-9);
        assert!((summary.p50_ms - 50.0).abs() < 0.1, "{}", summary.p50_ms);
        assert!((summary.p99_ms - 99.0).abs() < 0.1, "{}", summary.p99_ms);
        assert!((summary.max_ms - 100.0).abs() < 0.1);
        assert_eq!(summary.errors.get("Unavailable"), Some(&1));
    }

    #[test]
    fn merging_adds_everything() {
        let (mut a, mut b) = (Recorder::new(), Recorder::new());
        a.record_ok(Duration::from_micros(10), 1);
        b.record_ok(Duration::from_micros(30), 2);
        b.record_error(Duration::from_micros(5), tonic::Code::Internal);
        a.merge(&b);
        assert_eq!((a.n_calls, a.n_ops, a.latencies_us.len()), (3, 3, 3));
        assert_eq!(a.errors.get("Internal"), Some(&1));
    }
}
