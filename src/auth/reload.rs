//! Keeping the policy current: re-read on SIGHUP and whenever the file's content changes
//! (polled every [`POLL_EVERY`]: a Kubernetes secret is swapped through a symlink, which file
//! notifications miss). A file that does not parse keeps the policy in force.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::Access;

/// How often the policy file is compared with the policy in force.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// Runs until `stop` turns true.
pub async fn watch_policy_file(access: Arc<Access>, mut stop: watch::Receiver<bool>) {
    if access.path.is_none() {
        return;
    }
    #[cfg(unix)]
    let mut hangups = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut last_error = None;
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        #[cfg(unix)]
        let hangup = async {
            match hangups.as_mut() {
                Some(signal) => signal.recv().await,
                None => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let hangup = std::future::pending::<Option<()>>();
        let why = tokio::select! {
            _ = stop.wait_for(|stopping| *stopping) => return,
            _ = poll.tick() => "the file changed",
            _ = hangup => "SIGHUP",
        };
        match access.reload() {
            Ok(changed) => {
                if changed {
                    info!(target: "audit", why, "access policy reloaded");
                }
                last_error = None;
            }
            // Said once per broken version of the file, not at every poll.
            Err(error) if last_error.as_ref() != Some(&error) => {
                warn!(target: "audit", why, %error, "the access policy was not reloaded; the previous one stays in force");
                last_error = Some(error);
            }
            Err(_) => {}
        }
    }
}
