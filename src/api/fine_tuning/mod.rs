//! `/v1/fine_tuning/jobs`: jobs ([`jobs`]), client actions on them ([`actions`]), and their
//! events and checkpoints ([`events`]).
//! See <https://platform.openai.com/docs/api-reference/fine-tuning>.

pub mod actions;
pub mod events;
pub mod jobs;

use crate::api::error::ApiError;
use crate::domain::ids::JobId;
use crate::domain::organization::OrganizationId;
use crate::store::{JobRow, Store};

/// The job a path names, or a 404 (an id that cannot parse never reaches the database).
fn job_id(raw: &str) -> Result<JobId, ApiError> {
    JobId::parse(raw).ok_or_else(|| ApiError::not_found("fine-tuning job", raw))
}

/// The job `raw` names if `org` owns it, else the same 404 as an unknown id.
pub async fn owned_job(store: &Store, org: &OrganizationId, raw: &str) -> Result<JobRow, ApiError> {
    let id = job_id(raw)?;
    store
        .get_job(org, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("fine-tuning job", raw))
}
