//! The job loop: claim → validate files → queue → train → record the outcome, with events.
//!
//! A heartbeat renews the lease while a job is held and watches its status, so a cancel or pause
//! reaches a running trainer within one heartbeat. Every write is fenced by the claim's attempt.

pub mod candle_trainer;
mod drive;
mod publish;
pub mod trainer;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::store::blobs::BlobStore;
use crate::store::{ClaimedJob, Store};
pub use trainer::{Trainer, Unavailable};

/// How a worker polls and leases.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Sleep between empty polls.
    pub poll_interval: Duration,
    /// Lease length; renewed every third of it.
    pub lease: Duration,
    /// A job whose lease expired more than this many times (its workers died) fails.
    pub max_lost_leases: i32,
    /// Where job outputs go (`<data dir>/jobs/<id>`).
    pub jobs_dir: std::path::PathBuf,
}

/// Called with `(model name, adapter dir)` when a job's model is published.
pub type ModelReadyHook = Arc<dyn Fn(String, std::path::PathBuf) + Send + Sync>;

/// One worker: claims jobs from the shared database and runs them one at a time.
#[derive(Clone)]
pub struct Worker {
    store: Store,
    blobs: BlobStore,
    trainer: Arc<dyn Trainer>,
    settings: WorkerSettings,
    id: String,
    on_model_ready: Option<ModelReadyHook>,
}

impl Worker {
    /// A worker with a unique id (host, pid, random).
    pub fn new(
        store: Store,
        blobs: BlobStore,
        trainer: Arc<dyn Trainer>,
        settings: WorkerSettings,
    ) -> Self {
        let id = format!(
            "worker-{}-{}",
            std::process::id(),
            crate::domain::ids::JobId::generate().body()
        );
        Self {
            store,
            blobs,
            trainer,
            settings,
            id,
            on_model_ready: None,
        }
    }

    /// Tell `hook` about every model this worker publishes (the server preloads it).
    pub fn with_model_ready(mut self, hook: ModelReadyHook) -> Self {
        self.on_model_ready = Some(hook);
        self
    }

    /// Run until `shutdown` is cancelled, polling for work.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) {
        tracing::info!(worker_id = %self.id, "worker started");
        while !shutdown.is_cancelled() {
            let worked = match self.run_once().await {
                Ok(worked) => worked,
                Err(e) => {
                    tracing::error!(error = ?e, "worker iteration failed");
                    false
                }
            };
            if let Err(e) = self.sweep_expired_files().await {
                tracing::warn!(error = ?e, "sweeping expired files failed");
            }
            if !worked {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(self.settings.poll_interval) => {}
                }
            }
        }
        tracing::info!(worker_id = %self.id, "worker stopped");
    }

    /// Claim one job and drive it as far as it goes. False when there was nothing to claim.
    pub async fn run_once(&self) -> anyhow::Result<bool> {
        let Some(claim) = self.store.claim_job(&self.id, self.settings.lease).await? else {
            return Ok(false);
        };
        let stop = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat(
            self.store.clone(),
            claim.clone(),
            self.settings.lease,
            stop.clone(),
        ));
        let result = self.drive(&claim, &stop).await;
        heartbeat.abort();
        result?;
        Ok(true)
    }

    async fn sweep_expired_files(&self) -> anyhow::Result<()> {
        for id in self.store.delete_expired_files().await? {
            if let Some(id) = crate::domain::ids::FileId::parse(&id) {
                self.blobs.remove(&id).await?;
            }
        }
        Ok(())
    }
}

/// Renew the lease every third of it; cancel `stop` when the job is paused, cancelled, or taken
/// over by another worker.
async fn heartbeat(store: Store, claim: ClaimedJob, lease: Duration, stop: CancellationToken) {
    let every = (lease / 3).min(Duration::from_secs(1));
    loop {
        tokio::time::sleep(every).await;
        match store.heartbeat(&claim, lease).await {
            Ok(Some(status))
                if status.is_terminal() || status == crate::domain::job::JobStatus::Paused =>
            {
                tracing::info!(job_id = %claim.job.id, %status, "job stopped by the client");
                stop.cancel();
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
