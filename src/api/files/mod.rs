//! `/v1/files`: list, retrieve, delete, download; upload is in [`upload`].
//! See <https://platform.openai.com/docs/api-reference/files>.

use actix_web::{HttpResponse, web};
use actix_web::{delete, get};
use serde::Deserialize;
use tokio_util::io::ReaderStream;

use crate::api::ApiState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::objects::{DeletedObject, ListResponse, OpenAIFile};
use crate::domain::ids::FileId;
use crate::domain::pagination::PageRequest;

pub mod upload;

/// The file a path names, or a 404 (an id that cannot parse never reaches the database).
fn file_id(raw: &str) -> Result<FileId, ApiError> {
    FileId::parse(raw).ok_or_else(|| ApiError::not_found("File", raw))
}

/// Sort direction by creation time, for the spec.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub enum SortOrder {
    /// Oldest first.
    #[schema(rename = "asc")]
    Asc,
    /// Newest first.
    #[schema(rename = "desc")]
    Desc,
}

/// Query of `GET /v1/files`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
pub struct ListFilesQuery {
    /// Only files with this purpose.
    pub purpose: Option<String>,
    /// 1–10000, default 10000.
    #[param(minimum = 1, maximum = 10000)]
    pub limit: Option<i64>,
    /// `asc` or `desc` (default) by creation time.
    #[param(value_type = Option<SortOrder>)]
    pub order: Option<String>,
    /// A file id to list after.
    #[param(pattern = r"^(file-[A-Za-z0-9_-]{1,64})?$")]
    pub after: Option<String>,
}

/// List the caller's files.
#[utoipa::path(operation_id = "list_files", tag = "Files",
    params(ListFilesQuery),
    responses((status = 200, body = ListResponse<OpenAIFile>), (status = 400, body = crate::api::error::ErrorResponse)))]
#[get("/v1/files")]
#[tracing::instrument(skip_all)]
pub async fn list_files(
    state: web::Data<ApiState>,
    caller: Caller,
    query: web::Query<ListFilesQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    if let Some(p) = &q.purpose {
        crate::domain::text::storable("purpose", p)?;
    }
    let page = PageRequest::parse(q.limit, q.after, q.order.as_deref(), 10_000, 10_000)?;
    let rows = state
        .store
        .list_files(&caller.0, q.purpose.as_deref(), &page)
        .await?;
    let list: ListResponse<OpenAIFile> = ListResponse::with_ids(rows, |f: &OpenAIFile| &f.id);
    Ok(HttpResponse::Ok().json(list))
}

/// Retrieve one file's metadata.
#[utoipa::path(operation_id = "retrieve_file", tag = "Files",
    params(("file_id" = String, Path, description = "The file id")),
    responses((status = 200, body = OpenAIFile), (status = 404, body = crate::api::error::ErrorResponse)))]
#[get("/v1/files/{file_id}")]
#[tracing::instrument(skip_all, fields(file_id = %path.as_str()))]
pub async fn retrieve_file(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = file_id(&path.into_inner())?;
    let file = state
        .store
        .get_file(&caller.0, &id)
        .await?
        .ok_or_else(|| ApiError::not_found("File", id.as_str()))?;
    Ok(HttpResponse::Ok().json(OpenAIFile::from(file)))
}

/// Delete a file and its bytes. Bytes the object store cannot remove now (it is down) are swept
/// later; the file is gone either way.
#[utoipa::path(operation_id = "delete_file", tag = "Files",
    params(("file_id" = String, Path, description = "The file id")),
    responses((status = 200, body = DeletedObject), (status = 404, body = crate::api::error::ErrorResponse)))]
#[delete("/v1/files/{file_id}")]
#[tracing::instrument(skip_all, fields(file_id = %path.as_str()))]
pub async fn delete_file(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = file_id(&path.into_inner())?;
    if !state.store.delete_file(&caller.0, &id).await? {
        return Err(ApiError::not_found("File", id.as_str()));
    }
    if let Err(e) = state.blobs.remove(&id).await {
        tracing::warn!(file_id = %id, error = ?e, "a deleted file's bytes stay until the orphan sweep");
    }
    Ok(HttpResponse::Ok().json(DeletedObject {
        id: id.into_string(),
        object: "file",
        deleted: true,
    }))
}

/// Stream a file's bytes.
#[utoipa::path(operation_id = "download_file", tag = "Files",
    params(("file_id" = String, Path, description = "The file id")),
    responses((status = 200, description = "The file's bytes", content_type = "application/octet-stream"),
              (status = 404, body = crate::api::error::ErrorResponse)))]
#[get("/v1/files/{file_id}/content")]
#[tracing::instrument(skip_all, fields(file_id = %path.as_str()))]
pub async fn download_file(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = file_id(&path.into_inner())?;
    let Some(row) = state.store.get_file(&caller.0, &id).await? else {
        return Err(ApiError::not_found("File", id.as_str()));
    };
    let file = tokio::fs::File::open(state.blobs.local(&id).await?)
        .await
        .map_err(ApiError::internal)?;
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .no_chunking(u64::try_from(row.bytes).unwrap_or(0))
        .streaming(ReaderStream::new(file)))
}
