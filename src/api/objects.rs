//! The OpenAI objects the API returns, rendered from store rows.

use serde::Serialize;
use serde_json::Value;

use crate::domain::job::{JobError, JobStatus};
use crate::domain::pagination::Page;
use crate::store::{CheckpointRow, EventRow, FileRow, JobRow};

/// A file (`object: "file"`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OpenAIFile {
    /// `file-…`.
    pub id: String,
    /// Always `file`.
    pub object: &'static str,
    /// Size in bytes.
    pub bytes: i64,
    /// Unix seconds.
    pub created_at: i64,
    /// Name given at upload.
    pub filename: String,
    /// Purpose given at upload.
    pub purpose: String,
    /// `processed` once stored and validated.
    pub status: String,
    /// Expiry in Unix seconds, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    /// Validation details, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_details: Option<String>,
    /// Detected dataset format (`chat`, `completion`, `alpaca`, `sharegpt`) of a `fine-tune` file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dataset_format: Option<String>,
    /// Number of examples in a `fine-tune` file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub example_count: Option<i32>,
}

impl From<FileRow> for OpenAIFile {
    fn from(r: FileRow) -> Self {
        Self {
            id: r.id.into_string(),
            object: "file",
            bytes: r.bytes,
            created_at: r.created_at.timestamp(),
            filename: r.filename,
            purpose: r.purpose,
            status: r.status,
            expires_at: r.expires_at.map(|t| t.timestamp()),
            status_details: r.status_details,
            dataset_format: r.dataset_format,
            example_count: r.example_count,
        }
    }
}

/// A fine-tuning job (`object: "fine_tuning.job"`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FineTuningJob {
    /// `ftjob-…`.
    pub id: String,
    /// Always `fine_tuning.job`.
    pub object: &'static str,
    /// Unix seconds.
    pub created_at: i64,
    /// Null unless the job failed.
    pub error: Option<JobError>,
    /// Null until the job succeeded.
    pub fine_tuned_model: Option<String>,
    /// Unix seconds when finished.
    pub finished_at: Option<i64>,
    /// `n_epochs`, `batch_size`, `learning_rate_multiplier` (numbers or `"auto"`) and LoRA knobs.
    #[schema(value_type = Object)]
    pub hyperparameters: Value,
    /// Base model.
    pub model: String,
    /// Owner.
    pub organization_id: String,
    /// Result file ids.
    pub result_files: Vec<String>,
    /// Seed.
    pub seed: i64,
    /// Status.
    pub status: JobStatus,
    /// Tokens trained on, once known.
    pub trained_tokens: Option<i64>,
    /// Training file id.
    pub training_file: String,
    /// Validation file id.
    pub validation_file: Option<String>,
    /// Estimated finish (Unix seconds) while running.
    pub estimated_finish: Option<i64>,
    /// The `suffix` the job was created with (an extension; absent when none was given).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub suffix: Option<String>,
    /// Echoed integrations.
    #[schema(value_type = Option<Vec<Object>>)]
    pub integrations: Option<Value>,
    /// Metadata pairs.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// `{type: "supervised", supervised: {hyperparameters}}`.
    #[schema(value_type = Object)]
    pub method: Value,
}

impl From<JobRow> for FineTuningJob {
    fn from(r: JobRow) -> Self {
        let status = r.status;
        let error = r.error.filter(|_| status == JobStatus::Failed).map(|e| e.0);
        Self {
            id: r.id.into_string(),
            object: "fine_tuning.job",
            created_at: r.created_at.timestamp(),
            error,
            fine_tuned_model: r.fine_tuned_model,
            finished_at: r.finished_at.map(|t| t.timestamp()),
            hyperparameters: r.hyperparameters.0.to_json(),
            model: r.model,
            organization_id: r.organization_id.into_string(),
            result_files: r
                .result_files
                .into_iter()
                .map(|f| f.into_string())
                .collect(),
            seed: r.seed,
            status,
            trained_tokens: r.trained_tokens,
            training_file: r.training_file.into_string(),
            validation_file: r.validation_file.map(|f| f.into_string()),
            estimated_finish: r.estimated_finish.map(|t| t.timestamp()),
            suffix: r.suffix.clone().filter(|s| !s.is_empty()),
            integrations: r.integrations,
            metadata: r.metadata,
            method: r.method,
        }
    }
}

/// A job event (`object: "fine_tuning.job.event"`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FineTuningJobEvent {
    /// `ftevent-…`.
    pub id: String,
    /// Always `fine_tuning.job.event`.
    pub object: &'static str,
    /// Unix seconds.
    pub created_at: i64,
    /// `info`, `warn` or `error`.
    pub level: String,
    /// Message.
    pub message: String,
    /// `message` or `metrics`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Metrics (`step`, `total_steps`, `train_loss`, …) or null.
    #[schema(value_type = Option<Object>)]
    pub data: Option<Value>,
}

impl From<EventRow> for FineTuningJobEvent {
    fn from(r: EventRow) -> Self {
        Self {
            id: r.id.into_string(),
            object: "fine_tuning.job.event",
            created_at: r.created_at.timestamp(),
            level: r.level,
            message: r.message,
            kind: r.kind,
            data: r.data,
        }
    }
}

/// A checkpoint (`object: "fine_tuning.job.checkpoint"`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FineTuningJobCheckpoint {
    /// `ftckpt-…`.
    pub id: String,
    /// Always `fine_tuning.job.checkpoint`.
    pub object: &'static str,
    /// Unix seconds.
    pub created_at: i64,
    /// Servable model name, `…:ckpt-step-N`.
    pub fine_tuned_model_checkpoint: String,
    /// The job.
    pub fine_tuning_job_id: String,
    /// Optimizer step.
    pub step_number: i32,
    /// Metrics at that step.
    #[schema(value_type = Object)]
    pub metrics: Value,
}

impl From<CheckpointRow> for FineTuningJobCheckpoint {
    fn from(r: CheckpointRow) -> Self {
        Self {
            id: r.id.into_string(),
            object: "fine_tuning.job.checkpoint",
            created_at: r.created_at.timestamp(),
            fine_tuned_model_checkpoint: r.fine_tuned_model_checkpoint,
            fine_tuning_job_id: r.job_id.into_string(),
            step_number: r.step_number,
            metrics: r.metrics,
        }
    }
}

/// A page of objects. Files and checkpoints also carry `first_id`/`last_id`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ListResponse<T> {
    /// Always `list`.
    pub object: &'static str,
    /// The objects.
    pub data: Vec<T>,
    /// True when more objects follow `last_id`.
    pub has_more: bool,
    /// Id of the first object (files and checkpoints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_id: Option<Option<String>>,
    /// Id of the last object (files and checkpoints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_id: Option<Option<String>>,
}

impl<T> ListResponse<T> {
    /// A page without `first_id`/`last_id` (jobs, events).
    pub fn plain<R: Into<T>>(page: Page<R>) -> Self {
        Self {
            object: "list",
            data: page.items.into_iter().map(Into::into).collect(),
            has_more: page.has_more,
            first_id: None,
            last_id: None,
        }
    }

    /// A page with `first_id`/`last_id` taken from each object's id (files, checkpoints).
    pub fn with_ids<R: Into<T>>(page: Page<R>, id: impl Fn(&T) -> &str) -> Self {
        let mut list = Self::plain(page);
        list.first_id = Some(list.data.first().map(|o| id(o).to_owned()));
        list.last_id = Some(list.data.last().map(|o| id(o).to_owned()));
        list
    }
}

/// `{id, object, deleted: true}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeletedObject {
    /// The deleted object's id.
    pub id: String,
    /// Its object type.
    pub object: &'static str,
    /// Always true.
    pub deleted: bool,
}
