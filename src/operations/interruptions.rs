//! What interrupts every open stream of the server at once: the shutdown (the stream ends with
//! UNAVAILABLE) and a reload of the access policy (the stream checks its caller again). One
//! task follows the two channels and wakes the streams; each stream sees both in one atomic
//! word when it is polled, and keeps its waker in a slot of its own.
//!
//! Each stream waiting on the tokio watch channels itself took, every time it waited for an
//! event, a lock that all of them share: to register its wait, to poll it, and to drop it. At
//! 1,000 watch streams that was ~5% of the server's CPU during a fan-out
//! (docs/benchmarks.md, watch fan-out).

use std::future::{Future, poll_fn};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use futures_util::task::AtomicWaker;
use slab::Slab;
use tokio::sync::watch;

/// The bit of [`Shared::state`] set once the server stops.
const STOPPING: u64 = 1;
/// What [`Shared::state`] grows by on each policy change (above the stopping bit).
const POLICY_CHANGED: u64 = 2;

/// What interrupted a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interruption {
    /// The server is stopping: end the stream.
    Stopping,
    /// The access policy may have changed: check the caller again.
    PolicyChanged,
}

/// The server's side: raises interruptions for every stream subscribed. Made only by
/// [`Interrupter::follow`], so that every one is tied to a server's shutdown.
#[derive(Clone)]
pub struct Interrupter {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// [`STOPPING`], plus [`POLICY_CHANGED`] times the number of policy changes.
    state: AtomicU64,
    /// Each subscribed stream's waker.
    streams: Mutex<Slab<Arc<AtomicWaker>>>,
}

impl Shared {
    fn streams(&self) -> MutexGuard<'_, Slab<Arc<AtomicWaker>>> {
        self.streams.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the interruption, then wakes every stream (which sees it when polled).
    fn raise(&self, interruption: Interruption) {
        match interruption {
            Interruption::Stopping => self.state.fetch_or(STOPPING, Ordering::SeqCst),
            Interruption::PolicyChanged => self.state.fetch_add(POLICY_CHANGED, Ordering::SeqCst),
        };
        for (_, waker) in self.streams().iter() {
            waker.wake();
        }
    }
}

impl Interrupter {
    /// Follows `shutdown` (`true`: stopping; its sender gone counts as stopping) and `policy`
    /// (each change: a reload) from a task of its own, which ends once the server stops. Call
    /// inside the runtime.
    pub fn follow(mut shutdown: watch::Receiver<bool>, mut policy: watch::Receiver<u64>) -> Interrupter {
        let interrupter = Interrupter::unfollowed();
        let shared = Arc::clone(&interrupter.shared);
        tokio::spawn(async move {
            let mut policy_followed = true;
            loop {
                tokio::select! {
                    _ = shutdown.wait_for(|stopping| *stopping) => {
                        shared.raise(Interruption::Stopping);
                        return;
                    }
                    changed = policy.changed(), if policy_followed => match changed {
                        Ok(()) => shared.raise(Interruption::PolicyChanged),
                        Err(_) => policy_followed = false,
                    },
                }
            }
        });
        interrupter
    }

    /// An interrupter that nothing raises yet.
    fn unfollowed() -> Interrupter {
        Interrupter { shared: Arc::default() }
    }

    /// A stream's view of the interruptions from now on (and of a stop already under way).
    pub fn subscribe(&self) -> Interruptions {
        // Read before the waker is in the list: a change in between is seen as one (a check
        // too many), never missed.
        let seen = self.shared.state.load(Ordering::SeqCst) & !STOPPING;
        let waker = Arc::new(AtomicWaker::new());
        let slot = self.shared.streams().insert(Arc::clone(&waker));
        Interruptions {
            shared: Arc::clone(&self.shared),
            slot,
            waker,
            seen,
        }
    }

    /// Interrupts every stream as if the server were stopping or the policy had changed.
    #[cfg(test)]
    fn raise(&self, interruption: Interruption) {
        self.shared.raise(interruption);
    }
}

/// One stream's view of the interruptions; its slot is given back when it is dropped.
pub struct Interruptions {
    shared: Arc<Shared>,
    slot: usize,
    waker: Arc<AtomicWaker>,
    /// The state last reported, the stopping bit aside.
    seen: u64,
}

impl Interruptions {
    /// Whether the server is stopping.
    pub fn stopping(&self) -> bool {
        self.shared.state.load(Ordering::SeqCst) & STOPPING != 0
    }

    /// Resolves at the next interruption: at once while the server is stopping, and once for
    /// any number of policy changes since the last one reported.
    pub fn wait(&mut self) -> impl Future<Output = Interruption> + '_ {
        poll_fn(|context| self.poll_next(context))
    }

    fn poll_next(&mut self, context: &mut Context<'_>) -> Poll<Interruption> {
        // The waker first, then the state: a raise after the load wakes this waker.
        self.waker.register(context.waker());
        let state = self.shared.state.load(Ordering::SeqCst);
        if state & STOPPING != 0 {
            return Poll::Ready(Interruption::Stopping);
        }
        if state != self.seen {
            self.seen = state;
            return Poll::Ready(Interruption::PolicyChanged);
        }
        Poll::Pending
    }
}

impl Drop for Interruptions {
    fn drop(&mut self) {
        self.shared.streams().remove(self.slot);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Whether `interruptions` has one to report now.
    fn now(interruptions: &mut Interruptions) -> Option<Interruption> {
        let mut context = Context::from_waker(std::task::Waker::noop());
        match interruptions.poll_next(&mut context) {
            Poll::Ready(interruption) => Some(interruption),
            Poll::Pending => None,
        }
    }

    #[test]
    fn a_policy_change_is_reported_once_and_a_stop_for_good() {
        let interrupter = Interrupter::unfollowed();
        let mut first = interrupter.subscribe();
        assert_eq!(now(&mut first), None);
        interrupter.raise(Interruption::PolicyChanged);
        interrupter.raise(Interruption::PolicyChanged);
        let mut second = interrupter.subscribe();
        assert_eq!(now(&mut first), Some(Interruption::PolicyChanged));
        assert_eq!(now(&mut first), None);
        assert_eq!(
            now(&mut second),
            None,
            "changes before a subscription are not reported to it"
        );
        assert!(!first.stopping());
        interrupter.raise(Interruption::Stopping);
        for _ in 0..2 {
            assert_eq!(now(&mut first), Some(Interruption::Stopping));
            assert_eq!(now(&mut second), Some(Interruption::Stopping));
        }
        assert!(first.stopping());
        let mut late = interrupter.subscribe();
        assert_eq!(now(&mut late), Some(Interruption::Stopping));
    }

    #[test]
    fn a_dropped_stream_gives_its_slot_back() {
        let interrupter = Interrupter::unfollowed();
        let kept = interrupter.subscribe();
        drop(interrupter.subscribe());
        assert_eq!(interrupter.shared.streams().len(), 1);
        drop(kept);
        assert!(interrupter.shared.streams().is_empty());
    }

    #[tokio::test]
    async fn the_channels_wake_a_waiting_stream() {
        let (stop, shutdown) = watch::channel(false);
        let (policy, policy_changes) = watch::channel(0_u64);
        let interrupter = Interrupter::follow(shutdown, policy_changes);
        let mut interruptions = interrupter.subscribe();
        let (first_sender, first) = tokio::sync::oneshot::channel();
        let waiting = tokio::spawn(async move {
            let _ = first_sender.send(interruptions.wait().await);
            interruptions.wait().await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        policy.send_modify(|generation| *generation += 1);
        let first = tokio::time::timeout(Duration::from_secs(5), first).await;
        assert_eq!(first.expect("woken"), Ok(Interruption::PolicyChanged));
        stop.send_replace(true);
        let second = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert_eq!(second.expect("woken").expect("the task ran"), Interruption::Stopping);
    }

    #[tokio::test]
    async fn a_dropped_shutdown_sender_stops_the_streams() {
        let (stop, shutdown) = watch::channel(false);
        let (_policy, policy_changes) = watch::channel(0_u64);
        let interrupter = Interrupter::follow(shutdown, policy_changes);
        let mut interruptions = interrupter.subscribe();
        drop(stop);
        let reported = tokio::time::timeout(Duration::from_secs(5), interruptions.wait()).await;
        assert_eq!(reported, Ok(Interruption::Stopping));
    }
}
