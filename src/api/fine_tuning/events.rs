//! `GET /v1/fine_tuning/jobs/{id}/events` and `/checkpoints`.

use actix_web::get;
use actix_web::{HttpResponse, web};
use serde::Deserialize;

use super::owned_job;
use crate::api::ApiState;
use crate::api::auth::Caller;
use crate::api::error::{ApiError, ErrorResponse};
use crate::api::objects::{FineTuningJobCheckpoint, FineTuningJobEvent, ListResponse};
use crate::domain::ids::JobId;
use crate::domain::organization::OrganizationId;
use crate::domain::pagination::PageRequest;

/// `after` and `limit`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct PageQuery {
    /// An id to list after.
    #[param(pattern = r"^([a-z]+-[A-Za-z0-9_-]{1,64})?$")]
    pub after: Option<String>,
    /// How many (1–100).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
}

/// The job a path names, if the caller may see it, and the page the query asks for.
async fn job_page(
    state: &ApiState,
    org: &OrganizationId,
    raw: &str,
    query: PageQuery,
    default_limit: i64,
) -> Result<(JobId, PageRequest), ApiError> {
    let id = owned_job(&state.store, org, raw).await?.id;
    let page = PageRequest::parse(query.limit, query.after, None, default_limit, 100)?;
    Ok((id, page))
}

/// A job's events, newest first.
#[utoipa::path(operation_id = "list_fine_tuning_events",
    tag = "Fine-tuning", params(("job_id" = String, Path, description = "The job id"), PageQuery),
    responses((status = 200, body = ListResponse<FineTuningJobEvent>), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse)))]
#[get("/v1/fine_tuning/jobs/{job_id}/events")]
#[tracing::instrument(skip_all, fields(job_id = %path.as_str()))]
pub async fn list_fine_tuning_events(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (id, page) = job_page(&state, &caller.0, &path, query.into_inner(), 20).await?;
    let rows = state.store.list_events(&id, &page).await?;
    Ok(HttpResponse::Ok().json(ListResponse::<FineTuningJobEvent>::plain(rows)))
}

/// A job's checkpoints, newest first.
#[utoipa::path(operation_id = "list_fine_tuning_job_checkpoints", tag = "Fine-tuning",
    params(("job_id" = String, Path, description = "The job id"), PageQuery),
    responses((status = 200, body = ListResponse<FineTuningJobCheckpoint>), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse)))]
#[get("/v1/fine_tuning/jobs/{job_id}/checkpoints")]
#[tracing::instrument(skip_all, fields(job_id = %path.as_str()))]
pub async fn list_fine_tuning_job_checkpoints(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    query: web::Query<PageQuery>,
) -> Result<HttpResponse, ApiError> {
    let (id, page) = job_page(&state, &caller.0, &path, query.into_inner(), 10).await?;
    let rows = state.store.list_checkpoints(&id, &page).await?;
    let list: ListResponse<FineTuningJobCheckpoint> =
        ListResponse::with_ids(rows, |c: &FineTuningJobCheckpoint| &c.id);
    Ok(HttpResponse::Ok().json(list))
}
