//! The interface between the job loop and a training engine.
//!
//! The worker hands a [`TrainingRequest`] to a [`Trainer`] on a blocking thread, records the
//! trainer's [`Update`]s (sent through [`Progress`]) on the job, and cancels its [`StopSignal`]
//! when the job is paused or cancelled or the worker shuts down. The candle trainer is one
//! implementation; [`Unavailable`] is the honest stand-in used until one is configured.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

use crate::domain::hyperparameters::{Hyperparameters, WorkerDevice};
use crate::domain::ids::JobId;
use crate::domain::job::JobError;
pub use crate::train::run::Update;

/// Everything a trainer needs to run one job.
#[derive(Debug, Clone)]
pub struct TrainingRequest {
    /// The job being trained.
    pub job_id: JobId,
    /// Base model name as the client gave it.
    pub model: String,
    /// Training data on disk.
    pub training_file: PathBuf,
    /// Validation data on disk.
    pub validation_file: Option<PathBuf>,
    /// Hyperparameters (some may still be `auto`).
    pub hyperparameters: Hyperparameters,
    /// Seed.
    pub seed: i64,
    /// Where to write checkpoints and the final adapter.
    pub output_dir: PathBuf,
    /// The adapter directory to start from (a job continuing a fine-tuned model).
    pub init_adapter: Option<PathBuf>,
}

/// What a finished training run produced.
#[derive(Debug, Clone, Default)]
pub struct TrainingOutcome {
    /// Tokens trained on (all epochs).
    pub trained_tokens: i64,
    /// The final adapter directory (PEFT), served as the fine-tuned model.
    pub adapter_dir: PathBuf,
    /// Files to publish as `fine-tune-results`: (path, filename shown to clients).
    pub result_files: Vec<(PathBuf, String)>,
    /// With `ensemble_size` > 1: every member's adapter directory, in order.
    pub members: Vec<PathBuf>,
}

/// Why a training run did not produce a model.
#[derive(Debug, thiserror::Error)]
pub enum TrainingFailure {
    /// The stop signal was honoured (pause, cancel or shutdown) after the state was saved.
    #[error("training stopped on request at step {step}")]
    Stopped {
        /// Optimizer steps done.
        step: usize,
    },
    /// Training failed; the error lands on the job.
    #[error("{0}")]
    Failed(JobError),
}

/// One update on its way to the worker; `applied` hears back once the worker has recorded it.
pub type Report = (Update, Option<std::sync::mpsc::Sender<()>>);

/// A rewrite applied to every update on its way (an ensemble member's steps numbered after the
/// members before it).
type Rewrite = Arc<dyn Fn(Update) -> Update + Send + Sync>;

/// The channel a trainer reports through.
#[derive(Clone)]
pub struct Progress {
    tx: UnboundedSender<Report>,
    rewrite: Option<Rewrite>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("rewrites", &self.rewrite.is_some())
            .finish()
    }
}

impl Progress {
    /// Wrap the worker's channel.
    pub fn new(tx: UnboundedSender<Report>) -> Self {
        Self { tx, rewrite: None }
    }

    /// The same channel with every update passed through `rewrite` first.
    pub fn rewritten(&self, rewrite: impl Fn(Update) -> Update + Send + Sync + 'static) -> Self {
        Self {
            tx: self.tx.clone(),
            rewrite: Some(Arc::new(rewrite)),
        }
    }

    /// Report an update (dropped if the job is no longer being watched). A checkpoint waits
    /// until the worker has recorded it and every update before it: the trainer writes the state
    /// a lost worker resumes from only after that, so a resumed run never starts past metrics
    /// that were still on their way to the database. A saved state (and a finished ensemble
    /// member) waits too, until the worker has shared it (with an object store): training goes
    /// on only from what others can see.
    pub fn send(&self, update: Update) {
        let update = match &self.rewrite {
            Some(r) => r(update),
            None => update,
        };
        if matches!(
            update,
            Update::Checkpoint { .. } | Update::StateSaved(_) | Update::MemberFinished(_)
        ) {
            let (applied, done) = std::sync::mpsc::channel();
            if self.tx.send((update, Some(applied))).is_ok() {
                // An error means the worker dropped it unrecorded (it is stopping): go on.
                let _ = done.recv();
            }
        } else {
            let _ = self.tx.send((update, None));
        }
    }
}

/// Tells a trainer to stop at the next step boundary, and whether what it has is still wanted.
#[derive(Debug, Clone, Default)]
pub struct StopSignal {
    token: CancellationToken,
    discard: Arc<AtomicBool>,
}

impl StopSignal {
    /// A signal that fires when `token` is cancelled.
    pub fn new(token: CancellationToken) -> Self {
        Self {
            token,
            discard: Arc::default(),
        }
    }

    /// Stop, keeping the state so the job can resume (pause, shutdown, lost lease).
    pub fn cancel(&self) {
        self.token.cancel();
    }

    /// Stop and throw the state away: the job was cancelled and never resumes.
    pub fn discard(&self) {
        self.discard.store(true, Ordering::SeqCst);
        self.token.cancel();
    }

    /// Whether the trainer should stop now.
    pub fn is_cancelled(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Whether the run is stopped for good (nothing to save).
    pub fn discards(&self) -> bool {
        self.discard.load(Ordering::SeqCst)
    }
}

/// A training engine. `train` runs on a blocking thread and must poll `stop` between steps.
pub trait Trainer: Send + Sync + 'static {
    /// Train one job to completion, or until `stop` is cancelled.
    fn train(
        &self,
        request: TrainingRequest,
        progress: &Progress,
        stop: &StopSignal,
    ) -> Result<TrainingOutcome, TrainingFailure>;

    /// The kind of device it trains on: the worker claims only jobs that accept it.
    fn device(&self) -> WorkerDevice {
        WorkerDevice::Cpu
    }
}

/// The trainer of a server built without a training engine: every job fails with a clear error.
#[derive(Debug, Default, Clone, Copy)]
pub struct Unavailable;

impl Trainer for Unavailable {
    fn train(
        &self,
        _request: TrainingRequest,
        _progress: &Progress,
        _stop: &StopSignal,
    ) -> Result<TrainingOutcome, TrainingFailure> {
        Err(TrainingFailure::Failed(JobError::new(
            "trainer_unavailable",
            "Training is not available yet: this ferrotune build has no training engine, so the \
             job cannot be trained",
        )))
    }
}
