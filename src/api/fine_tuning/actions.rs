//! `POST /v1/fine_tuning/jobs/{id}/cancel|pause|resume`: client-requested transitions. An action
//! the job's status does not allow is a 409 that says why.

use actix_web::post;
use actix_web::{HttpResponse, web};

use super::job_id;
use crate::api::ApiState;
use crate::api::auth::Caller;
use crate::api::error::{ApiError, ErrorResponse};
use crate::api::objects::FineTuningJob;
use crate::domain::job::{JobAction, JobStatus};
use crate::store::jobs::Transition;

async fn apply(
    state: web::Data<ApiState>,
    caller: Caller,
    raw: String,
    action: JobAction,
) -> Result<HttpResponse, ApiError> {
    let id = job_id(&raw)?;
    match state.store.transition_job(&caller.0, &id, action).await? {
        Transition::Done(job) => Ok(HttpResponse::Ok().json(FineTuningJob::from(*job))),
        Transition::NotFound => Err(ApiError::not_found("fine-tuning job", &raw)),
        Transition::Conflict(status) => Err(ApiError::conflict(JobStatus::conflict_message(
            status, action,
        ))),
    }
}

/// Cancel a job that has not finished.
#[utoipa::path(operation_id = "cancel_fine_tuning_job",
    tag = "Fine-tuning", params(("job_id" = String, Path, description = "The job id")),
    responses((status = 200, body = FineTuningJob), (status = 404, body = ErrorResponse),
              (status = 409, body = ErrorResponse)))]
#[post("/v1/fine_tuning/jobs/{job_id}/cancel")]
#[tracing::instrument(skip_all, fields(job_id = %path.as_str()))]
pub async fn cancel_fine_tuning_job(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    apply(state, caller, path.into_inner(), JobAction::Cancel).await
}

/// Pause a job that is validating, queued or running.
#[utoipa::path(operation_id = "pause_fine_tuning_job",
    tag = "Fine-tuning", params(("job_id" = String, Path, description = "The job id")),
    responses((status = 200, body = FineTuningJob), (status = 404, body = ErrorResponse),
              (status = 409, body = ErrorResponse)))]
#[post("/v1/fine_tuning/jobs/{job_id}/pause")]
#[tracing::instrument(skip_all, fields(job_id = %path.as_str()))]
pub async fn pause_fine_tuning_job(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    apply(state, caller, path.into_inner(), JobAction::Pause).await
}

/// Resume a paused job (it is queued again).
#[utoipa::path(operation_id = "resume_fine_tuning_job",
    tag = "Fine-tuning", params(("job_id" = String, Path, description = "The job id")),
    responses((status = 200, body = FineTuningJob), (status = 404, body = ErrorResponse),
              (status = 409, body = ErrorResponse)))]
#[post("/v1/fine_tuning/jobs/{job_id}/resume")]
#[tracing::instrument(skip_all, fields(job_id = %path.as_str()))]
pub async fn resume_fine_tuning_job(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    apply(state, caller, path.into_inner(), JobAction::Resume).await
}
