//! `POST /v1/files`: a multipart upload streamed to disk, size-limited, and for `fine-tune`
//! validated line by line before anything is recorded. A rejected upload leaves nothing behind.

use actix_multipart::{Field, Multipart};
use actix_web::http::header::CONTENT_LENGTH;
use actix_web::post;
use actix_web::{HttpRequest, HttpResponse, web};
use futures_util::TryStreamExt;
use tokio::io::AsyncWriteExt;

use crate::api::ApiState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::api::objects::OpenAIFile;
use crate::domain::batch::read_requests;
use crate::domain::dataset::{ScanError, scan};
use crate::domain::ids::FileId;
use crate::store::NewFile;
use crate::store::blobs::TempBlob;

/// Purposes a client may upload with (`fine-tune-results` is ours to write).
pub const UPLOAD_PURPOSES: [&str; 6] = [
    "fine-tune",
    "batch",
    "assistants",
    "vision",
    "user_data",
    "evals",
];

/// The multipart form of `POST /v1/files` (documentation only; parsed by hand to stream).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct CreateFileRequest {
    /// The file (with a filename).
    #[schema(value_type = String, format = Binary)]
    file: Vec<u8>,
    /// fine-tune, batch, assistants, vision, user_data or evals.
    #[schema(value_type = UploadPurpose)]
    purpose: String,
    /// Optional: `created_at` (needs `expires_after[seconds]`).
    #[schema(
        rename = "expires_after[anchor]",
        value_type = ExpiresAfterAnchor,
        required = false
    )]
    expires_after_anchor: Option<String>,
    /// Optional: seconds after the anchor (3600–2592000).
    #[schema(rename = "expires_after[seconds]", minimum = 3600, maximum = 2592000)]
    expires_after_seconds: Option<i64>,
}

/// The purposes of [`UPLOAD_PURPOSES`], for the spec.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub enum UploadPurpose {
    /// A training or validation file.
    #[schema(rename = "fine-tune")]
    FineTune,
    /// Batch input.
    #[schema(rename = "batch")]
    Batch,
    /// Assistants files.
    #[schema(rename = "assistants")]
    Assistants,
    /// Images.
    #[schema(rename = "vision")]
    Vision,
    /// Anything else.
    #[schema(rename = "user_data")]
    UserData,
    /// Eval data.
    #[schema(rename = "evals")]
    Evals,
}

/// What an upload's expiry counts from.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub enum ExpiresAfterAnchor {
    /// The upload time.
    #[schema(rename = "created_at")]
    CreatedAt,
}

struct Upload {
    temp: TempBlob,
    filename: String,
    bytes: u64,
}

/// Upload a file.
#[utoipa::path(operation_id = "create_file", tag = "Files",
    request_body(content = CreateFileRequest, content_type = "multipart/form-data"),
    responses((status = 200, body = OpenAIFile), (status = 400, body = crate::api::error::ErrorResponse),
              (status = 408, body = crate::api::error::ErrorResponse),
              (status = 413, body = crate::api::error::ErrorResponse),
              (status = 507, body = crate::api::error::ErrorResponse)))]
#[post("/v1/files")]
#[tracing::instrument(skip_all)]
pub async fn create_file(
    state: web::Data<ApiState>,
    caller: Caller,
    req: HttpRequest,
    mut form: Multipart,
) -> Result<HttpResponse, ApiError> {
    let max = state.max_upload_bytes;
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // Multipart framing adds a little; anything far beyond the limit is refused unread.
    if declared.is_some_and(|len| len > max.saturating_add(64 * 1024)) {
        return Err(too_large(max));
    }
    let mut upload: Option<Upload> = None;
    let mut purpose = None;
    let mut anchor = None;
    let mut seconds = None;
    while let Some(mut field) = form.try_next().await.map_err(multipart_error)? {
        let name = field.name().unwrap_or_default().to_owned();
        match name.as_str() {
            "file" => {
                if upload.is_some() {
                    return Err(ApiError::invalid(
                        "Only one `file` field is allowed",
                        Some("file"),
                    ));
                }
                upload = Some(receive_file(&state, &mut field, max).await?);
            }
            "purpose" => purpose = Some(text_field(&mut field, &name).await?),
            "expires_after[anchor]" => anchor = Some(text_field(&mut field, &name).await?),
            "expires_after[seconds]" => seconds = Some(text_field(&mut field, &name).await?),
            _ => while field.try_next().await.map_err(multipart_error)?.is_some() {},
        }
    }
    let purpose = purpose.ok_or_else(|| {
        ApiError::invalid("Missing required parameter: 'purpose'", Some("purpose"))
    })?;
    if !UPLOAD_PURPOSES.contains(&purpose.as_str()) {
        return Err(ApiError::invalid(
            format!(
                "Invalid purpose '{purpose}': expected one of {}",
                UPLOAD_PURPOSES.join(", ")
            ),
            Some("purpose"),
        ));
    }
    let upload = upload
        .ok_or_else(|| ApiError::invalid("Missing required parameter: 'file'", Some("file")))?;
    let expires_after_seconds = match (anchor.as_deref(), seconds.as_deref()) {
        (None, None) => None,
        (Some("created_at") | None, Some(s)) => {
            let secs: i64 = s
                .parse()
                .ok()
                .filter(|v| (3600..=2_592_000).contains(v))
                .ok_or_else(|| {
                    ApiError::invalid(
                        "expires_after[seconds] must be an integer between 3600 and 2592000",
                        Some("expires_after[seconds]"),
                    )
                })?;
            Some(secs)
        }
        _ => {
            return Err(ApiError::invalid(
                "expires_after needs anchor 'created_at' and seconds",
                Some("expires_after"),
            ));
        }
    };
    let path = upload.temp.path().to_owned();
    let (dataset_format, example_count) = match purpose.as_str() {
        "fine-tune" => {
            let summary = check_lines(path, "fine-tuning", |r| scan(r, |_, _| {})).await?;
            (
                Some(summary.format.as_str().to_owned()),
                Some(i32::try_from(summary.examples).unwrap_or(i32::MAX)),
            )
        }
        "batch" => {
            let requests = check_lines(path, "Batch API", read_requests).await?;
            (
                None,
                Some(i32::try_from(requests.len()).unwrap_or(i32::MAX)),
            )
        }
        _ => (None, None),
    };
    let id = FileId::generate();
    state.blobs.commit(upload.temp, &id).await?;
    let new = NewFile {
        id: id.clone(),
        organization_id: caller.0,
        bytes: i64::try_from(upload.bytes).unwrap_or(i64::MAX),
        filename: upload.filename,
        purpose,
        dataset_format,
        example_count,
        expires_after_seconds,
    };
    match state.store.insert_file(&new).await {
        Ok(row) => Ok(HttpResponse::Ok().json(OpenAIFile::from(row))),
        Err(e) => {
            let _ = state.blobs.remove(&id).await;
            Err(e.into())
        }
    }
}

/// Read the uploaded file at `path` with `read` (off the async threads); a bad line is a 400
/// `invalid_file_format` saying it is not a file for `what`.
async fn check_lines<T: Send + 'static>(
    path: std::path::PathBuf,
    what: &'static str,
    read: fn(std::io::BufReader<std::fs::File>) -> Result<T, ScanError>,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || {
        let file = std::fs::File::open(path)?;
        Ok::<_, std::io::Error>(read(std::io::BufReader::new(file)))
    })
    .await
    .map_err(ApiError::internal)?
    .map_err(ApiError::internal)?
    .map_err(|e| match e {
        ScanError::Invalid { .. } => {
            ApiError::invalid(format!("Invalid file format for {what}: {e}"), Some("file"))
                .with_code("invalid_file_format")
        }
        ScanError::Io(_) => ApiError::internal(e),
    })
}

fn too_large(max: u64) -> ApiError {
    ApiError::too_large(format!(
        "File is too large: the maximum upload size is {max} bytes"
    ))
    .with_param("file")
}

fn multipart_error(e: actix_multipart::MultipartError) -> ApiError {
    if crate::api::body_timeout::timed_out(&e) {
        return crate::api::body_timeout::error();
    }
    ApiError::invalid(format!("Invalid multipart/form-data body: {e}"), None)
}

/// A failed write of the upload's bytes: 507 when the disk is full, else a 500.
fn disk_error(e: std::io::Error) -> ApiError {
    if e.kind() == std::io::ErrorKind::StorageFull {
        ApiError::storage_full()
    } else {
        ApiError::internal(e)
    }
}

async fn receive_file(state: &ApiState, field: &mut Field, max: u64) -> Result<Upload, ApiError> {
    let filename = field
        .content_disposition()
        .and_then(|cd| cd.get_filename())
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| ApiError::invalid("The `file` field must carry a filename", Some("file")))?;
    crate::domain::text::storable("file", &filename)?;
    let temp = state.blobs.temp();
    let mut out = tokio::fs::File::create(temp.path())
        .await
        .map_err(disk_error)?;
    let mut bytes: u64 = 0;
    while let Some(chunk) = field.try_next().await.map_err(multipart_error)? {
        bytes += chunk.len() as u64;
        if bytes > max {
            return Err(too_large(max));
        }
        out.write_all(&chunk).await.map_err(disk_error)?;
    }
    out.flush().await.map_err(disk_error)?;
    Ok(Upload {
        temp,
        filename,
        bytes,
    })
}

async fn text_field(field: &mut Field, name: &str) -> Result<String, ApiError> {
    let mut buf = Vec::new();
    while let Some(chunk) = field.try_next().await.map_err(multipart_error)? {
        buf.extend_from_slice(&chunk);
        if buf.len() > 4096 {
            return Err(ApiError::invalid(
                format!("`{name}` is too long"),
                Some(name),
            ));
        }
    }
    String::from_utf8(buf)
        .map(|s| s.trim().to_owned())
        .map_err(|_| ApiError::invalid(format!("`{name}` must be UTF-8 text"), Some(name)))
}
