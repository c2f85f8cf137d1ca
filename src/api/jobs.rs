//! `/v1/fine_tuning/jobs`: create, list, retrieve.
//! See <https://platform.openai.com/docs/api-reference/fine-tuning>.

use actix_web::{HttpResponse, web};
use serde_json::{Map, Value};

use super::ApiState;
use super::auth::Caller;
use super::error::{ApiError, ErrorResponse};
use super::objects::{FineTuningJob, ListResponse};
use crate::domain::ids::{FileId, JobId};
use crate::domain::job_request::{CreateFineTuningJobRequest, JobSpec};
use crate::domain::organization::OrganizationId;
use crate::domain::pagination::PageRequest;

/// Create a fine-tuning job. Files are validated after creation; failures land on the job.
#[utoipa::path(post, path = "/v1/fine_tuning/jobs", operation_id = "create_fine_tuning_job",
    tag = "Fine-tuning", request_body = CreateFineTuningJobRequest,
    responses((status = 200, body = FineTuningJob), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse)))]
pub async fn create_fine_tuning_job(
    state: web::Data<ApiState>,
    caller: Caller,
    body: web::Json<CreateFineTuningJobRequest>,
) -> Result<HttpResponse, ApiError> {
    let spec = JobSpec::parse(body.into_inner())?;
    if !state.base_models.contains(&spec.model) {
        return Err(ApiError::invalid(
            format!(
                "Model '{}' is not available for fine-tuning or does not exist; available: {}",
                spec.model,
                state.base_models.join(", ")
            ),
            Some("model"),
        )
        .with_code("model_not_available"));
    }
    check_file(&state, &caller.0, &spec.training_file, "training_file").await?;
    if let Some(validation) = &spec.validation_file {
        check_file(&state, &caller.0, validation, "validation_file").await?;
    }
    let id = JobId::generate();
    let job = state.store.insert_job(&id, &caller.0, &spec).await?;
    tracing::info!(job_id = %id, "created fine-tuning job");
    Ok(HttpResponse::Ok().json(FineTuningJob::from(job)))
}

async fn check_file(
    state: &ApiState,
    org: &OrganizationId,
    id: &FileId,
    param: &str,
) -> Result<(), ApiError> {
    let file = state
        .store
        .get_file(org, id.as_str())
        .await?
        .ok_or_else(|| {
            ApiError::invalid(format!("Invalid file id '{id}': no such file"), Some(param))
                .with_code("invalid_file_id")
        })?;
    if file.purpose != "fine-tune" {
        return Err(ApiError::invalid(
            format!(
                "File '{id}' has purpose '{}'; fine-tuning needs a file uploaded with purpose 'fine-tune'",
                file.purpose
            ),
            Some(param),
        )
        .with_code("invalid_file_purpose"));
    }
    Ok(())
}

/// List jobs, newest first. Filters: `metadata[key]=value` (repeatable).
#[utoipa::path(get, path = "/v1/fine_tuning/jobs", operation_id = "list_paginated_fine_tuning_jobs",
    tag = "Fine-tuning",
    params(("after" = Option<String>, Query, description = "A job id to list after"),
           ("limit" = Option<i64>, Query, description = "1–100, default 20"),
           ("metadata" = Option<Object>, Query, style = DeepObject, explode = true,
            description = "metadata[key]=value filters")),
    responses((status = 200, body = ListResponse<FineTuningJob>), (status = 400, body = ErrorResponse)))]
pub async fn list_paginated_fine_tuning_jobs(
    state: web::Data<ApiState>,
    caller: Caller,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let (mut after, mut limit) = (None, None);
    let mut metadata = Map::new();
    for (key, value) in query.into_inner() {
        match key.as_str() {
            "after" => after = Some(value),
            "limit" => {
                limit =
                    Some(value.parse::<i64>().map_err(|_| {
                        ApiError::invalid("limit must be an integer", Some("limit"))
                    })?)
            }
            k => {
                if let Some(name) = k
                    .strip_prefix("metadata[")
                    .and_then(|r| r.strip_suffix(']'))
                {
                    metadata.insert(name.to_owned(), Value::String(value));
                }
            }
        }
    }
    let page = PageRequest::parse(limit, after, None, 20, 100)?;
    let filter = (!metadata.is_empty()).then_some(Value::Object(metadata));
    let rows = state
        .store
        .list_jobs(&caller.0, filter.as_ref(), &page)
        .await?;
    Ok(HttpResponse::Ok().json(ListResponse::<FineTuningJob>::plain(rows)))
}

/// Retrieve one job.
#[utoipa::path(get, path = "/v1/fine_tuning/jobs/{job_id}", operation_id = "retrieve_fine_tuning_job",
    tag = "Fine-tuning", params(("job_id" = String, Path, description = "The job id")),
    responses((status = 200, body = FineTuningJob), (status = 404, body = ErrorResponse)))]
pub async fn retrieve_fine_tuning_job(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = path.into_inner();
    let job = state
        .store
        .get_job(&caller.0, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("fine-tuning job", &id))?;
    Ok(HttpResponse::Ok().json(FineTuningJob::from(job)))
}
