//! A claimed job that owns its lease: while the value lives, a heartbeat renews the lease and
//! watches the job's status; dropping it stops the heartbeat.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::trainer::StopSignal;
use crate::domain::job::JobStatus;
use crate::store::{ClaimedJob, JobRow, Store};

/// A job this worker holds, with the heartbeat that keeps holding it.
#[derive(Debug)]
pub struct Lease {
    claim: ClaimedJob,
    stop: StopSignal,
    _heartbeat: AbortOnDropHandle<()>,
}

impl Lease {
    /// Start renewing `claim`'s lease of length `lease`. The lease's stop signal is cancelled
    /// when the client pauses or cancels the job, another worker takes it over, or `shutdown` is
    /// cancelled.
    pub fn hold(
        store: Store,
        claim: ClaimedJob,
        lease: Duration,
        shutdown: &CancellationToken,
    ) -> Self {
        let stop = StopSignal::new(shutdown.child_token());
        let heartbeat = tokio::spawn(heartbeat(store, claim.clone(), lease, stop.clone()));
        Self {
            claim,
            stop,
            _heartbeat: AbortOnDropHandle::new(heartbeat),
        }
    }

    /// The claim (job row and fencing token) every write goes through.
    pub fn claim(&self) -> &ClaimedJob {
        &self.claim
    }

    /// The job as claimed.
    pub fn job(&self) -> &JobRow {
        &self.claim.job
    }

    /// Fires when the job must stop at the next step boundary.
    pub fn stop(&self) -> &StopSignal {
        &self.stop
    }
}

/// Renew the lease every third of it (at most every second); fire `stop` when the job is
/// paused, finished, or taken over by another worker (discarding the run when cancelled).
async fn heartbeat(store: Store, claim: ClaimedJob, lease: Duration, stop: StopSignal) {
    let every = (lease / 3).min(Duration::from_secs(1));
    loop {
        tokio::time::sleep(every).await;
        match store.heartbeat(&claim, lease).await {
            Ok(Some(status)) if status.is_terminal() || status == JobStatus::Paused => {
                tracing::info!(job_id = %claim.job.id, %status, "job stopped by the client");
                if status == JobStatus::Cancelled {
                    stop.discard();
                } else {
                    stop.cancel();
                }
                return;
            }
            Ok(Some(_)) => {}
            Ok(None) => {
                tracing::warn!(job_id = %claim.job.id, "lease lost to another worker");
                stop.cancel();
                return;
            }
            Err(e) => tracing::warn!(error = ?e, "heartbeat failed; retrying"),
        }
    }
}
