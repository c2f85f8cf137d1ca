//! The job loop: claim → validate files → queue → train → record the outcome, with events.
//!
//! A claimed job is a [`Lease`] whose heartbeat renews it and watches its status, so a cancel or
//! pause reaches a running trainer within one heartbeat. Every write is fenced by the claim's
//! attempt. An idle worker sleeps until a job is created or resumed (`LISTEN/NOTIFY`), with a
//! poll as the fallback. When the worker is shut down mid-training, the job is paused at the next
//! step boundary, its state saved, and it goes back to `queued` for the next start.

pub mod candle_trainer;
mod drive;
pub mod identity;
pub mod lease;
mod members;
mod publish;
pub mod trainer;
pub mod validate;

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::postgres::PgListener;
use tokio_util::sync::CancellationToken;

use crate::domain::ids::JobId;
use crate::store::Store;
use crate::store::blobs::BlobStore;
use crate::store::orphans::sweep_orphan_files;
pub use lease::Lease;
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
    /// Time between sweeps for bytes no row owns ([`Worker::sweep_orphans`]).
    pub sweep_interval: Duration,
}

/// What an API node without a worker runs: every `interval` until `shutdown`, remove the bytes
/// of files without a row (its cached copies of files deleted through another node).
pub async fn sweep_files_until_stopped(
    store: Store,
    blobs: BlobStore,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        match sweep_orphan_files(&store, &blobs, ORPHAN_AGE).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "swept file bytes no row owns"),
            Err(e) => tracing::warn!(error = ?e, "sweeping orphaned file bytes failed"),
        }
    }
}

/// File bytes with no row are removed once they are this old: an upload stores its bytes before
/// it registers the file, and may take a while between the two.
pub const ORPHAN_AGE: Duration = Duration::from_secs(3600);

/// What a worker tells the serving side about a job's models (the server attaches them).
///
/// `prepare` runs *before* the job is marked succeeded, so the first request after a client
/// reads `succeeded` finds the model attached; `withdraw` undoes it when the job turned out not to
/// be this worker's to publish (fenced off, paused or cancelled meanwhile).
pub trait ModelPublication: Send + Sync {
    /// Make `name` (the adapter in `dir`) servable now.
    fn prepare(&self, name: String, dir: std::path::PathBuf) -> BoxFuture<'static, ()>;
    /// Forget what [`Self::prepare`] did for `name`.
    fn withdraw(&self, name: String) -> BoxFuture<'static, ()>;
}

/// The worker's handle on [`ModelPublication`].
pub type ModelReadyHook = Arc<dyn ModelPublication>;

/// One worker: claims jobs from the shared database and runs them one at a time.
#[derive(Clone)]
pub struct Worker {
    store: Store,
    blobs: BlobStore,
    trainer: Arc<dyn Trainer>,
    settings: WorkerSettings,
    id: String,
    on_model_ready: Option<ModelReadyHook>,
    shutdown: CancellationToken,
}

impl Worker {
    /// A worker with a unique id (pid, random).
    pub fn new(
        store: Store,
        blobs: BlobStore,
        trainer: Arc<dyn Trainer>,
        settings: WorkerSettings,
    ) -> Self {
        let id = identity::new_worker_id(trainer.device());
        Self {
            store,
            blobs,
            trainer,
            settings,
            id,
            on_model_ready: None,
            shutdown: CancellationToken::new(),
        }
    }

    /// Tell `hook` about every model this worker publishes (the server attaches it first).
    pub fn with_model_ready(mut self, hook: ModelReadyHook) -> Self {
        self.on_model_ready = Some(hook);
        self
    }

    /// Run until `shutdown` is cancelled: claim jobs, and between them sleep until a job is
    /// created or resumed, or the poll interval passes. A job training when `shutdown` fires is
    /// paused at its next step and queued again.
    pub async fn run_until_stopped(mut self, shutdown: CancellationToken) {
        self.shutdown = shutdown.clone();
        tracing::info!(worker_id = %self.id, "worker started");
        match self.release_dead_leases().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(jobs = n, "released the leases of this node's dead workers"),
            Err(e) => tracing::warn!(error = ?e, "releasing dead workers' leases failed"),
        }
        let mut listener = match self.store.job_listener().await {
            Ok(l) => Some(l),
            Err(e) => {
                tracing::warn!(error = ?e, "cannot LISTEN for new jobs; polling only");
                None
            }
        };
        let mut next_sweep = tokio::time::Instant::now();
        while !shutdown.is_cancelled() {
            if tokio::time::Instant::now() >= next_sweep {
                next_sweep = tokio::time::Instant::now() + self.settings.sweep_interval;
                match self.sweep_orphans(ORPHAN_AGE).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(removed = n, "swept stored bytes no row owns"),
                    Err(e) => tracing::warn!(error = ?e, "sweeping orphaned bytes failed"),
                }
            }
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
                    _ = next_notification(&mut listener) => {}
                }
            }
        }
        tracing::info!(worker_id = %self.id, "worker stopped");
    }

    /// Expire the leases held by workers of this node whose processes are gone (a `kill -9` or
    /// a crash before this start), so their jobs resume now rather than when the leases run out.
    /// Returns how many jobs were released.
    pub async fn release_dead_leases(&self) -> anyhow::Result<u64> {
        let holders = self.store.live_lease_holders().await?;
        let dead = identity::dead_on_this_node(&holders, identity::process_alive);
        if dead.is_empty() {
            return Ok(0);
        }
        Ok(self.store.expire_leases_of(&dead).await?)
    }

    /// Claim one job and drive it as far as it goes. False when there was nothing to claim.
    pub async fn run_once(&self) -> anyhow::Result<bool> {
        let device = self.trainer.device();
        let claimed = self.store.claim_job(&self.id, device, self.settings.lease);
        let Some(claim) = claimed.await? else {
            return Ok(false);
        };
        let lease = Lease::hold(
            self.store.clone(),
            claim,
            self.settings.lease,
            &self.shutdown,
        );
        self.drive(&lease).await?;
        Ok(true)
    }

    /// Delete expired files; bytes that cannot be removed now are left to [`Self::sweep_orphans`].
    async fn sweep_expired_files(&self) -> anyhow::Result<()> {
        for id in self.store.delete_expired_files().await? {
            if let Err(e) = self.blobs.remove(&id).await {
                tracing::warn!(file_id = %id, error = ?e, "an expired file's bytes stay for now");
            }
        }
        self.sweep_cancelled_outputs().await
    }

    /// Remove what no row owns: the bytes of files without a row written `age` or longer ago
    /// (their removal failed when the row went), and the shared outputs of cancelled jobs (one
    /// cancelled while paused, its worker gone, left them in the object store). Returns how many
    /// files and job folders went.
    pub async fn sweep_orphans(&self, age: Duration) -> anyhow::Result<usize> {
        let mut removed = sweep_orphan_files(&self.store, &self.blobs, age).await?;
        let shared = self.blobs.shared_jobs().await?;
        for id in self.store.cancelled_jobs(&shared).await? {
            let dir = self.settings.jobs_dir.join(id.as_str());
            self.blobs.unshare_dir(&dir).await?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Remove the output directories of cancelled jobs no worker held when they were cancelled
    /// (a paused or queued job keeps its state and checkpoints on disk until then).
    async fn sweep_cancelled_outputs(&self) -> anyhow::Result<()> {
        let Ok(mut dirs) = tokio::fs::read_dir(&self.settings.jobs_dir).await else {
            return Ok(());
        };
        let mut ids = Vec::new();
        while let Some(entry) = dirs.next_entry().await? {
            if let Some(id) = entry.file_name().to_str().and_then(JobId::parse) {
                ids.push(id);
            }
        }
        for id in self.store.cancelled_jobs(&ids).await? {
            let dir = self.settings.jobs_dir.join(id.as_str());
            let _ = tokio::fs::remove_dir_all(&dir).await;
            self.blobs.unshare_dir(&dir).await?;
        }
        Ok(())
    }
}

/// Wait for the next job notification; forever when there is no listener (or it broke).
async fn next_notification(listener: &mut Option<PgListener>) {
    let Some(l) = listener else {
        return std::future::pending().await;
    };
    if let Err(e) = l.recv().await {
        tracing::warn!(error = ?e, "job notifications failed; polling only");
        *listener = None;
    }
}
