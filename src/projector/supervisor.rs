//! Keeps the projector running: [`supervise`] restarts it with backoff after
//! an error or a panic, publishes whether it is running (the service maps
//! that to its health status), answers requests while it is down, and gives
//! up — so that the process exits non-zero — when it has kept failing for
//! [`RestartPolicy::give_up_after`].
//!
//! A restart resumes from the checkpoint, so it loses and duplicates nothing:
//! every derived write has a deterministic id.

use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::{mpsc, watch};

use super::{run, AskError, ProjectorConfig, Request};
use crate::domain::panic_message;
use crate::store::{EventStore, StoreError};

/// How a failed projector is restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Wait before the first restart; doubled after each failure.
    pub first_backoff: Duration,
    /// Longest wait between restarts.
    pub max_backoff: Duration,
    /// Give up when the projector has not run for this long without failing.
    pub give_up_after: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        Self {
            first_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(5),
            give_up_after: Duration::from_secs(120),
        }
    }
}

/// What the projector is doing, as [`supervise`] publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Reading its checkpoint (first start).
    Starting,
    /// Subscribed and folding.
    Running,
    /// Failed; restarts after a backoff.
    Restarting {
        /// Why it failed last.
        reason: String,
    },
    /// Stopped on request, cleanly.
    Stopped,
    /// Gave up restarting, or was stopped while failing.
    Failed {
        /// Why.
        reason: String,
    },
}

/// Runs the projector until `shutdown` turns true, restarting it after any
/// error or panic. `Ok` only for a clean stop; `Err` says why the projector
/// could not be kept running (the service then exits non-zero).
pub async fn supervise<S: EventStore>(
    store: S,
    config: ProjectorConfig,
    mut requests: mpsc::Receiver<Request>,
    mut shutdown: watch::Receiver<bool>,
    status: watch::Sender<Status>,
) -> Result<(), String> {
    let policy = config.restart.clone();
    let mut backoff = policy.first_backoff;
    let mut failing_since: Option<Instant> = None;
    loop {
        let started = Instant::now();
        let outcome = std::panic::AssertUnwindSafe(run(
            store.clone(),
            config.clone(),
            &mut requests,
            shutdown.clone(),
            &status,
        ))
        .catch_unwind()
        .await;
        let reason = match outcome {
            Ok(Ok(())) => {
                status.send_replace(Status::Stopped);
                return Ok(());
            }
            // No restart can fix a permission: say so now.
            Ok(Err(err @ StoreError::PermissionDenied(_))) => {
                return Err(fail(&status, err.to_string()));
            }
            Ok(Err(err)) => err.to_string(),
            Err(panic) => format!("the projector panicked: {}", panic_message(panic.as_ref())),
        };
        // A run that lasted a while was healthy: its failure starts a new
        // count and the backoff starts over.
        if started.elapsed() > policy.max_backoff * 2 {
            failing_since = None;
            backoff = policy.first_backoff;
        }
        let since = *failing_since.get_or_insert(started);
        if *shutdown.borrow() {
            return Err(fail(&status, format!("stopped while failing: {reason}")));
        }
        if since.elapsed() >= policy.give_up_after {
            return Err(fail(
                &status,
                format!(
                    "the projector kept failing for {:?}; giving up: {reason}",
                    since.elapsed()
                ),
            ));
        }
        tracing::error!(%reason, retry_in = ?backoff, "PROJECTOR DOWN: it failed and restarts after the backoff; reads answer UNAVAILABLE meanwhile");
        status.send_replace(Status::Restarting {
            reason: reason.clone(),
        });
        let resume = tokio::time::sleep(backoff);
        tokio::pin!(resume);
        loop {
            tokio::select! {
                () = &mut resume => break,
                changed = shutdown.changed() => {
                    if changed.is_err() || *shutdown.borrow() {
                        return Err(fail(&status, format!("stopped while failing: {reason}")));
                    }
                }
                Some(request) = requests.recv() => {
                    request.refuse(AskError::Unavailable(format!("the projector is restarting after: {reason}")));
                }
            }
        }
        backoff = (backoff * 2).min(policy.max_backoff);
    }
}

fn fail(status: &watch::Sender<Status>, reason: String) -> String {
    tracing::error!(%reason, "projector stopped for good");
    status.send_replace(Status::Failed {
        reason: reason.clone(),
    });
    reason
}
