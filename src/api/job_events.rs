//! `GET /v1/fine_tuning/jobs/{id}/events` and `/checkpoints`.

use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, ErrorResponse};
use super::objects::{FineTuningJobCheckpoint, FineTuningJobEvent, ListResponse};
use crate::domain::organization::OrganizationId;
use crate::domain::pagination::PageRequest;

/// `after` and `limit`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PageQuery {
    /// An id to list after.
    pub after: Option<String>,
    /// How many (1–100).
    pub limit: Option<i64>,
}

async fn visible_job(state: &ApiState, org: &OrganizationId, id: &str) -> Result<(), ApiError> {
    match state.store.get_job(org, id).await? {
        Some(_) => Ok(()),
        None => Err(ApiError::not_found("fine-tuning job", id)),
    }
}

/// A job's events, newest first.
#[utoipa::path(get, path = "/v1/fine_tuning/jobs/{job_id}/events", operation_id = "list_fine_tuning_events",
    tag = "Fine-tuning", params(("job_id" = String, Path, description = "The job id"), PageQuery),
    responses((status = 200, body = ListResponse<FineTuningJobEvent>), (status = 404, body = ErrorResponse)))]
pub async fn list_fine_tuning_events(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    visible_job(&state, &caller.0, &id).await?;
    let q = query.into_inner();
    let page = PageRequest::parse(q.limit, q.after, None, 20, 100)?;
    let rows = state.store.list_events(&id, &page).await?;
    Ok(HttpResponse::Ok().json(ListResponse::<FineTuningJobEvent>::plain(rows)))
}

/// A job's checkpoints, newest first.
#[utoipa::path(get, path = "/v1/fine_tuning/jobs/{job_id}/checkpoints",
    operation_id = "list_fine_tuning_job_checkpoints", tag = "Fine-tuning",
    params(("job_id" = String, Path, description = "The job id"), PageQuery),
    responses((status = 200, body = ListResponse<FineTuningJobCheckpoint>), (status = 404, body = ErrorResponse)))]
pub async fn list_fine_tuning_job_checkpoints(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    visible_job(&state, &caller.0, &id).await?;
    let q = query.into_inner();
    let page = PageRequest::parse(q.limit, q.after, None, 10, 100)?;
    let rows = state.store.list_checkpoints(&id, &page).await?;
    let list: ListResponse<FineTuningJobCheckpoint> =
        ListResponse::with_ids(rows, |c: &FineTuningJobCheckpoint| &c.id);
    Ok(HttpResponse::Ok().json(list))
}
