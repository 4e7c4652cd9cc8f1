//! A replica's lag and connection, measured once a second for the metrics: how many events
//! and how many seconds this replica is behind the stream's head.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;

use super::Replica;
use crate::engine::Applied;

/// Measures until `shutdown`. `applied` is what the replica's projections hold.
pub async fn measure(replica: Arc<Replica>, applied: watch::Receiver<Applied>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let metrics = &replica.metrics;
        metrics.nats_connected.set(replica.connected() as i64);
        let applied_sequence = replica.applied_sequence.load(Ordering::Acquire);
        metrics.applied_sequence.set(applied_sequence as i64);
        if let Ok(last) = replica.last_sequence().await {
            let (mut lag_events, mut lag_seconds) = (0, 0.0);
            if last > applied_sequence {
                if let Ok(Some(newest)) = replica.group_at(last).await {
                    lag_events = newest.position.last_revision.saturating_sub(applied.borrow().revision);
                }
                if let Ok(Some(oldest)) = replica.group_at(applied_sequence + 1).await {
                    let now = async_nats::datetime::DateTime::now_utc().unix_timestamp_nanos();
                    lag_seconds = (now - oldest.published_unix_nanos).max(0) as f64 / 1e9;
                }
            }
            metrics.lag_events.set(lag_events as i64);
            metrics.lag_seconds.set(lag_seconds);
        }
        tokio::select! {
            _ = shutdown.wait_for(|stopping| *stopping) => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
