//! The Batch API: `POST /v1/batches` over a file of requests (`purpose=batch`), `GET` one or a
//! page, `POST …/cancel`. The [`runner`] answers the lines in the background, at low priority,
//! and writes the output and error files. See
//! <https://platform.openai.com/docs/api-reference/batch>.

use std::time::Duration;

use actix_web::{HttpResponse, get, post, web};

pub mod runner;
pub mod types;

use crate::api::ApiState;
use crate::api::auth::Caller;
use crate::api::error::{ApiError, ErrorResponse};
use crate::api::json_body::JsonBody;
use crate::api::metadata::check_metadata;
use crate::api::responses::input::item_id;
use crate::api::sampling::bad;
use crate::domain::batch::{BatchRequest, ENDPOINTS, read_requests};
use crate::domain::ids::FileId;
use crate::domain::pagination::PageRequest;
use crate::store::batches::{BatchRow, NewBatch};
use crate::store::blobs::BlobStore;
use types::{BatchList, BatchListQuery, BatchObject, CreateBatchRequest};

/// The one completion window served.
const WINDOW: Duration = Duration::from_secs(24 * 3600);

/// The requests of stored batch file `id`.
pub async fn requests_of(blobs: &BlobStore, id: &FileId) -> Result<Vec<BatchRequest>, String> {
    let path = blobs.local(id).await.map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
        read_requests(std::io::BufReader::new(file)).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| e.to_string())?
}

/// Create a batch.
#[utoipa::path(operation_id = "create_batch", tag = "Batch", request_body = CreateBatchRequest,
    responses((status = 200, body = BatchObject), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse)))]
#[post("/v1/batches")]
pub async fn create_batch(
    state: web::Data<ApiState>,
    caller: Caller,
    body: JsonBody<CreateBatchRequest>,
) -> Result<HttpResponse, ApiError> {
    let req = body.into_inner();
    if !ENDPOINTS.contains(&req.endpoint.as_str()) {
        return Err(bad(
            "endpoint",
            format!("endpoint must be one of {}", ENDPOINTS.join(", ")),
        ));
    }
    if req.completion_window != "24h" {
        return Err(bad("completion_window", "completion_window must be '24h'"));
    }
    let metadata = check_metadata(req.metadata.as_ref())?;
    let missing = || ApiError::not_found("File", &req.input_file_id).with_param("input_file_id");
    let file_id = FileId::parse(&req.input_file_id).ok_or_else(missing)?;
    let file = state
        .store
        .get_file(&caller.0, &file_id)
        .await?
        .ok_or_else(missing)?;
    if file.purpose != "batch" {
        return Err(bad(
            "input_file_id",
            format!(
                "file {} has purpose '{}'; a batch reads a file uploaded with purpose 'batch'",
                req.input_file_id, file.purpose
            ),
        ));
    }
    let requests = requests_of(&state.blobs, &file_id).await.map_err(|e| {
        bad(
            "input_file_id",
            format!("the file cannot be read as a batch: {e}"),
        )
    })?;
    if let Some(r) = requests.iter().find(|r| r.url != req.endpoint) {
        return Err(bad(
            "endpoint",
            format!(
                "line {} calls {} but the batch's endpoint is {}: every line must call it",
                r.line, r.url, req.endpoint
            ),
        ));
    }
    let id = item_id("batch");
    let row = state
        .store
        .insert_batch(
            &caller.0,
            &NewBatch {
                id: &id,
                endpoint: &req.endpoint,
                input_file_id: &req.input_file_id,
                completion_window: &req.completion_window,
                window: WINDOW,
                total: i32::try_from(requests.len()).unwrap_or(i32::MAX),
                metadata: Some(&metadata),
            },
        )
        .await?;
    Ok(HttpResponse::Ok().json(BatchObject::from(row)))
}

/// Retrieve a batch.
#[utoipa::path(operation_id = "retrieve_batch", tag = "Batch",
    params(("batch_id" = String, Path, description = "The batch id")),
    responses((status = 200, body = BatchObject), (status = 404, body = ErrorResponse)))]
#[get("/v1/batches/{batch_id}")]
pub async fn retrieve_batch(
    state: web::Data<ApiState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    found(state.store.get_batch(&caller.0, &id).await?, &id)
}

/// The batch as the API shows it, or a 404 for `id`.
fn found(row: Option<BatchRow>, id: &str) -> Result<HttpResponse, ApiError> {
    let row = row.ok_or_else(|| ApiError::not_found("batch", id))?;
    Ok(HttpResponse::Ok().json(BatchObject::from(row)))
}

/// Cancel a batch: a running batch becomes `cancelling`, then `cancelled` once the lines
/// answered so far are written to its files.
#[utoipa::path(operation_id = "cancel_batch", tag = "Batch",
    params(("batch_id" = String, Path, description = "The batch id")),
    responses((status = 200, body = BatchObject), (status = 404, body = ErrorResponse)))]
#[post("/v1/batches/{batch_id}/cancel")]
pub async fn cancel_batch(
    state: web::Data<ApiState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    found(state.store.cancel_batch(&caller.0, &id).await?, &id)
}

/// List batches, newest first.
#[utoipa::path(operation_id = "list_batches", tag = "Batch", params(BatchListQuery),
    responses((status = 200, body = BatchList), (status = 400, body = ErrorResponse)))]
#[get("/v1/batches")]
pub async fn list_batches(
    state: web::Data<ApiState>,
    caller: Caller,
    query: web::Query<BatchListQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let page = PageRequest::parse(q.limit, q.after, None, 20, 100)?;
    let rows = state.store.list_batches(&caller.0, &page).await?;
    let data: Vec<BatchObject> = rows.items.into_iter().map(BatchObject::from).collect();
    Ok(HttpResponse::Ok().json(BatchList {
        object: "list",
        first_id: data.first().map(|b| b.id.clone()),
        last_id: data.last().map(|b| b.id.clone()),
        data,
        has_more: rows.has_more,
    }))
}
