//! `/v1/fine_tuning/jobs`: create, list, retrieve.
//! See <https://platform.openai.com/docs/api-reference/fine-tuning>.

use actix_web::{HttpRequest, HttpResponse, web};
use actix_web::{get, post};
use serde_json::Value;

use super::owned_job;
use crate::api::ApiState;
use crate::api::auth::Caller;
use crate::api::error::{ApiError, ErrorResponse};
use crate::api::json_body::JsonBody;
use crate::api::objects::{FineTuningJob, ListResponse};
use crate::domain::hyperparameters::Hyperparameters;
use crate::domain::ids::{FileId, JobId};
use crate::domain::job_request::{CreateFineTuningJobRequest, JobSpec};
use crate::domain::organization::OrganizationId;
use crate::domain::pagination::PageRequest;
use crate::model_dir::adapter::AdapterConfig;
use crate::store::FileRow;

/// Create a fine-tuning job. Files are validated after creation; failures land on the job.
#[utoipa::path(operation_id = "create_fine_tuning_job",
    tag = "Fine-tuning", request_body = CreateFineTuningJobRequest,
    responses((status = 200, body = FineTuningJob), (status = 400, body = ErrorResponse),
              (status = 401, body = ErrorResponse)))]
#[post("/v1/fine_tuning/jobs")]
#[tracing::instrument(skip_all)]
pub async fn create_fine_tuning_job(
    state: web::Data<ApiState>,
    caller: Caller,
    body: JsonBody<CreateFineTuningJobRequest>,
) -> Result<HttpResponse, ApiError> {
    let mut spec = JobSpec::parse(body.into_inner())?;
    if spec.model.starts_with("ft:") {
        // Continue from a fine-tuned model (or checkpoint) of the caller's: its adapter is the
        // starting point, its base the job's model.
        let Some(from) = state.store.get_model(&caller.0, &spec.model).await? else {
            return Err(ApiError::invalid(
                format!(
                    "Model '{}' does not exist or is not yours to continue from",
                    spec.model
                ),
                Some("model"),
            )
            .with_code("model_not_available"));
        };
        // The adapter's shape is what trains: show it on the job.
        let dir = state.blobs.local_dir(&from.path).await?;
        let lora = AdapterConfig::read(&dir).map_err(|e| {
            ApiError::invalid(
                format!("The adapter of '{}' cannot be read: {e}", spec.model),
                Some("model"),
            )
        })?;
        let hp = &mut spec.hyperparameters;
        (hp.lora.rank, hp.lora.alpha, hp.lora.target) = (
            lora.rank as u32,
            lora.alpha(),
            lora.targets_in_module_order(),
        );
        hp.init_model = Some(std::mem::replace(&mut spec.model, from.base_model));
    }
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
    let training = check_file(&state, &caller.0, &spec.training_file, "training_file").await?;
    check_split(&spec.hyperparameters, training.example_count.map(i64::from))?;
    if let Some(validation) = &spec.validation_file {
        check_file(&state, &caller.0, validation, "validation_file").await?;
    }
    let id = JobId::generate();
    let job = state.store.insert_job(&id, &caller.0, &spec).await?;
    tracing::info!(job_id = %id, "created fine-tuning job");
    Ok(HttpResponse::Ok().json(FineTuningJob::from(job)))
}

/// A held-out split (other than 0, none) must leave examples on both sides.
fn check_split(hp: &Hyperparameters, examples: Option<i64>) -> Result<(), ApiError> {
    let (Some(split), Some(n)) = (hp.evaluation.validation_split, examples) else {
        return Ok(());
    };
    if split == 0.0 {
        return Ok(()); // none held out, as asked
    }
    let held = if split < 1.0 {
        (split * n as f64).round()
    } else {
        split
    };
    if held < 1.0 || held >= n as f64 {
        return Err(ApiError::invalid(
            format!(
                "validation_split {split} holds out {held} of the training file's {n} examples; \
                 at least one must be held out and one left to train on"
            ),
            Some("hyperparameters.validation_split"),
        ));
    }
    Ok(())
}

async fn check_file(
    state: &ApiState,
    org: &OrganizationId,
    id: &FileId,
    param: &str,
) -> Result<FileRow, ApiError> {
    let file = state.store.get_file(org, id).await?.ok_or_else(|| {
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
    Ok(file)
}

/// List jobs, newest first. Filters: `metadata[key]=value` (repeatable).
#[utoipa::path(operation_id = "list_paginated_fine_tuning_jobs",
    tag = "Fine-tuning",
    params(("after" = Option<String>, Query, pattern = r"^(ftjob-[A-Za-z0-9_-]{1,64})?$",
            description = "A job id to list after"),
           ("limit" = Option<i64>, Query, minimum = 1, maximum = 100, description = "1–100, default 20"),
           ("metadata" = Option<Object>, Query, style = DeepObject, explode = true,
            description = "metadata[key]=value filters")),
    responses((status = 200, body = ListResponse<FineTuningJob>), (status = 400, body = ErrorResponse)))]
#[get("/v1/fine_tuning/jobs")]
#[tracing::instrument(skip_all)]
pub async fn list_paginated_fine_tuning_jobs(
    state: web::Data<ApiState>,
    caller: Caller,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let q: ListJobsQuery = serde_qs::Config::new(2, false)
        .deserialize_str(req.query_string())
        .map_err(|e| ApiError::invalid(format!("Invalid query string: {e}"), None))?;
    // `limit=` with no value reads as absent to serde_qs; it is still not an integer.
    let empty_limit = req.query_string().split('&').any(|kv| kv == "limit=");
    let limit = match q.limit {
        _ if empty_limit => None,
        None => Some(None),
        Some(l) => l.parse::<i64>().ok().map(Some),
    }
    .ok_or_else(|| ApiError::invalid("limit must be an integer", Some("limit")))?;
    let page = PageRequest::parse(limit, q.after, None, 20, 100)?;
    let filter = (!q.metadata.is_empty()).then(|| {
        let pairs = q.metadata.into_iter().map(|(k, v)| (k, Value::String(v)));
        Value::Object(pairs.collect())
    });
    if let Some(f) = &filter {
        crate::domain::text::storable_json("metadata", f)?;
    }
    let rows = state
        .store
        .list_jobs(&caller.0, filter.as_ref(), &page)
        .await?;
    Ok(HttpResponse::Ok().json(ListResponse::<FineTuningJob>::plain(rows)))
}

/// Query of `GET /v1/fine_tuning/jobs` (`metadata[key]=value`, repeatable).
#[derive(Debug, serde::Deserialize)]
struct ListJobsQuery {
    after: Option<String>,
    limit: Option<String>,
    #[serde(default)]
    metadata: std::collections::BTreeMap<String, String>,
}

/// Retrieve one job.
#[utoipa::path(operation_id = "retrieve_fine_tuning_job",
    tag = "Fine-tuning", params(("job_id" = String, Path, description = "The job id")),
    responses((status = 200, body = FineTuningJob), (status = 404, body = ErrorResponse)))]
#[get("/v1/fine_tuning/jobs/{job_id}")]
#[tracing::instrument(skip_all, fields(job_id = %path.as_str()))]
pub async fn retrieve_fine_tuning_job(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let job = owned_job(&state.store, &caller.0, &path.into_inner()).await?;
    Ok(HttpResponse::Ok().json(FineTuningJob::from(job)))
}
