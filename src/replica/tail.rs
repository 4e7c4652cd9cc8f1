//! The tail: an ordered consumer of the stream from the sequence after the replica's last
//! applied message, handing each group to the writer in stream order, decoded but for this
//! replica's own appends (see [`Arrival`]). The ordered consumer recreates itself after a gap
//! or a lost heartbeat; when it fails for good (NATS gone), the tail waits and starts a new one
//! after the last group it delivered.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull::OrderedConfig};
use futures_util::StreamExt;
use tracing::warn;

use super::{Arrival, Replica};

/// How long the tail waits for a message before it asks whether the stream moved on without it.
const STALL_CHECK: Duration = Duration::from_secs(1);
/// How long the tail waits before it starts over after NATS failed it.
const RESTART_AFTER: Duration = Duration::from_millis(500);

/// Delivers every message after `after_sequence`, in order, to `deliver` (a message that does
/// not decode is delivered as the reason, with its sequence). Ends when `deliver` returns false.
pub async fn tail<F, Fut>(replica: Arc<Replica>, after_sequence: u64, mut deliver: F)
where
    F: FnMut(Result<Arrival, String>) -> Fut,
    Fut: Future<Output = bool>,
{
    let own_prefix = format!("{}-", replica.writer_id);
    let mut delivered = after_sequence;
    loop {
        let consumer = replica
            .stream
            .create_consumer(OrderedConfig {
                deliver_policy: match delivered {
                    0 => DeliverPolicy::All,
                    sequence => DeliverPolicy::ByStartSequence {
                        start_sequence: sequence + 1,
                    },
                },
                ..Default::default()
            })
            .await;
        let messages = match consumer {
            Ok(consumer) => consumer.messages().await,
            Err(error) => {
                warn!(%error, after = delivered, "cannot create the stream's consumer; retrying");
                tokio::time::sleep(RESTART_AFTER).await;
                continue;
            }
        };
        let mut messages = match messages {
            Ok(messages) => messages,
            Err(error) => {
                warn!(%error, after = delivered, "cannot follow the stream; retrying");
                tokio::time::sleep(RESTART_AFTER).await;
                continue;
            }
        };
        loop {
            let message = match tokio::time::timeout(STALL_CHECK, messages.next()).await {
                Ok(Some(Ok(message))) => message,
                Ok(Some(Err(error))) => {
                    warn!(%error, after = delivered, "following the stream failed; starting over");
                    break;
                }
                Ok(None) => break,
                // Quiet: fine if the stream is, not if it moved on (a consumer lost with its
                // node that has not noticed yet). The stream's last sequence is refreshed every
                // second by the replica's status poll and by every append's ack.
                Err(_) => {
                    let last = replica.known_last_sequence();
                    if last > delivered {
                        warn!(after = delivered, last, "the stream's consumer stalled; starting over");
                        break;
                    }
                    continue;
                }
            };
            let Ok(info) = message.info() else { continue };
            let sequence = info.stream_sequence;
            if sequence <= delivered {
                continue;
            }
            let published = info.published;
            let no_headers = async_nats::HeaderMap::new();
            let headers = message.headers.as_ref().unwrap_or(&no_headers);
            let arrival = Arrival::read(sequence, headers, &message.payload, published, &own_prefix);
            delivered = sequence;
            if !deliver(arrival).await {
                return;
            }
        }
        tokio::time::sleep(RESTART_AFTER).await;
    }
}
