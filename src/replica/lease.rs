//! The lease: one replica at a time appends the writes of all (the others forward theirs to
//! it, [`super::forward`]) and runs the built-in rollout, so replicas do not race for the
//! stream's sequences and activations are not sent N-fold. The lease is a key in a JetStream
//! key-value bucket whose entries expire after [`LEASE_TTL`]: a replica takes it with `create`
//! (only when absent), keeps it with `update` at its revision every third of the TTL, and lets
//! it go at shutdown. A replica that loses NATS stops renewing and the key expires, so another
//! takes over within the TTL. The others read who holds it at the same pace
//! ([`Replica::lease_holder`](super::Replica)), or every [`UNKNOWN_HOLDER_RETRY`] while they
//! do not know: the bucket's reads may be served by a node that has not yet applied the
//! holder's `create` (replicas starting together found the key taken and read no holder),
//! and a replica that knows no holder appends itself, racing the holder until it reads again.
//!
//! The lease only saves work; it is not what keeps decisions right. Two holders at once (a
//! renewal that timed out but landed) still append correctly: every append is decided against
//! the stream's state and fenced by its compare-and-set, and an already ACTIVE binding
//! appends nothing, so activation still happens once.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::kv;
use tokio::sync::watch;
use tracing::{info, warn};

use super::Replica;

/// How long a lease lasts without renewal.
pub const LEASE_TTL: Duration = Duration::from_secs(6);
const KEY: &str = "writer";
/// How soon a replica that knows of no holder tries again (a third of the TTL otherwise).
pub const UNKNOWN_HOLDER_RETRY: Duration = Duration::from_millis(100);

/// Holds the lease whenever it can, until `shutdown`, and keeps [`Replica::lease_holder`]
/// current; the receiver says whether this replica holds it.
pub async fn hold(replica: Arc<Replica>, mut shutdown: watch::Receiver<bool>) -> watch::Receiver<bool> {
    let (held_sender, held) = watch::channel(false);
    tokio::spawn(async move {
        let bucket = format!("{}_LEASES", replica.name);
        let mut store = None;
        let mut revision: Option<u64> = None;
        let owner = bytes::Bytes::from(replica.writer_id.clone());
        loop {
            if store.is_none() {
                let config = kv::Config {
                    bucket: bucket.clone(),
                    history: 1,
                    max_age: LEASE_TTL,
                    num_replicas: replica.replicas,
                    storage: async_nats::jetstream::stream::StorageType::File,
                    ..Default::default()
                };
                match replica.jetstream.create_key_value(config).await {
                    Ok(created) => store = Some(created),
                    Err(error) => warn!(%error, bucket, "cannot open the lease bucket; retrying"),
                }
            }
            if let Some(store) = &store {
                let renewed = match revision {
                    Some(held_at) => store.update(KEY, owner.clone(), held_at).await.ok(),
                    None => store.create(KEY, owner.clone()).await.ok(),
                };
                if renewed.is_some() != revision.is_some() {
                    info!(
                        held = renewed.is_some(),
                        "lease (appends for all replicas, runs the rollout)"
                    );
                }
                revision = renewed;
                let holder = match revision {
                    Some(_) => Some(replica.writer_id.clone()),
                    None => match store.get(KEY).await {
                        Ok(value) => value.and_then(|owner| String::from_utf8(owner.to_vec()).ok()),
                        Err(_) => None,
                    },
                };
                replica
                    .lease_holder
                    .send_if_modified(|known| std::mem::replace(known, holder.clone()) != holder);
            }
            let holding = revision.is_some();
            replica.metrics.lease_held.set(holding as i64);
            held_sender.send_if_modified(|held| std::mem::replace(held, holding) != holding);
            let holder_unknown = store.is_some() && replica.lease_holder.borrow().is_none();
            let next = if holder_unknown {
                UNKNOWN_HOLDER_RETRY
            } else {
                LEASE_TTL / 3
            };
            tokio::select! {
                _ = shutdown.wait_for(|stopping| *stopping) => break,
                _ = tokio::time::sleep(next) => {}
            }
        }
        if let (Some(store), Some(_)) = (&store, revision) {
            // Let another replica take over at once instead of after the TTL.
            let _ = store.delete(KEY).await;
        }
        held_sender.send_replace(false);
        replica.lease_holder.send_replace(None);
    });
    held
}
