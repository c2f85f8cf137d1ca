//! The job state machine: statuses and the transitions clients may ask for, and a failed job's
//! error. Statuses are stored by their wire names; a name this enum does not know is a decoding
//! error, never a silent default.

use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo, PgValueRef};
use sqlx::{Decode, Encode, Postgres, Type};

/// A fine-tuning job's status, as OpenAI names them (plus `paused`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    /// Created; the worker has not validated the files yet.
    ValidatingFiles,
    /// Files validated; waiting for a worker.
    Queued,
    /// A worker is training it.
    Running,
    /// Stopped by the client; `resume` queues it again.
    Paused,
    /// Finished; `fine_tuned_model` is set.
    Succeeded,
    /// Finished with `error` set.
    Failed,
    /// Stopped for good by the client.
    Cancelled,
}

/// A transition a client asked for through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobAction {
    /// `POST /cancel`.
    Cancel,
    /// `POST /pause`.
    Pause,
    /// `POST /resume`.
    Resume,
}

impl JobStatus {
    /// The statuses a worker may claim and drive: not paused, not finished.
    pub const ACTIVE: [JobStatus; 3] = [Self::ValidatingFiles, Self::Queued, Self::Running];

    /// Every status, in lifecycle order.
    pub const ALL: [JobStatus; 7] = [
        Self::ValidatingFiles,
        Self::Queued,
        Self::Running,
        Self::Paused,
        Self::Succeeded,
        Self::Failed,
        Self::Cancelled,
    ];

    /// The wire name (`validating_files`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ValidatingFiles => "validating_files",
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Parse a stored status.
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == raw)
    }

    /// Finished for good: nothing will change it any more.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    /// The statuses from which `action` is allowed.
    pub fn allowed_sources(action: JobAction) -> &'static [JobStatus] {
        match action {
            JobAction::Cancel => &[
                Self::ValidatingFiles,
                Self::Queued,
                Self::Running,
                Self::Paused,
            ],
            JobAction::Pause => &[Self::ValidatingFiles, Self::Queued, Self::Running],
            JobAction::Resume => &[Self::Paused],
        }
    }

    /// The status `action` leads to.
    pub fn target(action: JobAction) -> Self {
        match action {
            JobAction::Cancel => Self::Cancelled,
            JobAction::Pause => Self::Paused,
            JobAction::Resume => Self::Queued,
        }
    }

    /// Why `action` cannot apply to a job in this status (the 409 message).
    pub fn conflict_message(self, action: JobAction) -> String {
        let verb = match action {
            JobAction::Cancel => "cancelled",
            JobAction::Pause => "paused",
            JobAction::Resume => "resumed",
        };
        format!(
            "Job is {} and cannot be {verb}; allowed from: {}",
            self.as_str(),
            Self::allowed_sources(action)
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Type<Postgres> for JobStatus {
    fn type_info() -> PgTypeInfo {
        <&str as Type<Postgres>>::type_info()
    }

    fn compatible(ty: &PgTypeInfo) -> bool {
        <&str as Type<Postgres>>::compatible(ty)
    }
}

impl PgHasArrayType for JobStatus {
    fn array_type_info() -> PgTypeInfo {
        <&str as PgHasArrayType>::array_type_info()
    }
}

impl Encode<'_, Postgres> for JobStatus {
    fn encode_by_ref(
        &self,
        buf: &mut PgArgumentBuffer,
    ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
        <&str as Encode<Postgres>>::encode(self.as_str(), buf)
    }
}

impl<'r> Decode<'r, Postgres> for JobStatus {
    fn decode(value: PgValueRef<'r>) -> Result<Self, sqlx::error::BoxDynError> {
        let raw = <&str as Decode<Postgres>>::decode(value)?;
        Self::parse(raw).ok_or_else(|| format!("unknown job status '{raw}' in the database").into())
    }
}

/// Why a job failed: its `error` object, `{code, message, param}`, as stored and as returned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = FineTuningJobError)]
pub struct JobError {
    /// Machine-readable code (`invalid_n_examples`, `training_diverged`, …).
    pub code: String,
    /// What went wrong, for people.
    pub message: String,
    /// The request parameter at fault, if any (`training_file`).
    pub param: Option<String>,
}

impl JobError {
    /// An error with no parameter at fault.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into(),
            param: None,
        }
    }

    /// Name the parameter at fault.
    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_jobs_accept_no_action() {
        for status in [
            JobStatus::Succeeded,
            JobStatus::Failed,
            JobStatus::Cancelled,
        ] {
            for action in [JobAction::Cancel, JobAction::Pause, JobAction::Resume] {
                assert!(!JobStatus::allowed_sources(action).contains(&status));
            }
        }
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(JobStatus::parse("done"), None);
    }

    #[test]
    fn only_paused_jobs_resume() {
        assert_eq!(
            JobStatus::allowed_sources(JobAction::Resume),
            &[JobStatus::Paused]
        );
        assert!(
            JobStatus::Running
                .conflict_message(JobAction::Resume)
                .contains("running")
        );
    }
}
