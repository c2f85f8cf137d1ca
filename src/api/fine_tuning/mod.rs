//! `/v1/fine_tuning/jobs`: jobs ([`jobs`]), client actions on them ([`actions`]), and their
//! events and checkpoints ([`events`]).
//! See <https://platform.openai.com/docs/api-reference/fine-tuning>.

pub mod actions;
pub mod events;
pub mod jobs;

use crate::api::error::ApiError;
use crate::domain::ids::JobId;

/// The job a path names, or a 404 (an id that cannot parse never reaches the database).
fn job_id(raw: &str) -> Result<JobId, ApiError> {
    JobId::parse(raw).ok_or_else(|| ApiError::not_found("fine-tuning job", raw))
}
