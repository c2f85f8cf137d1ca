//! `GET /v1/models/{model}/export` (an extension): the model — the base, a fine-tuned model or
//! a checkpoint, its adapter merged in — as one GGUF file or a `.tar.gz` of a Hugging Face
//! directory, streamed.

use actix_web::{HttpRequest, HttpResponse, get, web};
use tokio_util::io::ReaderStream;

use super::model_id;
use crate::api::ApiState;
use crate::api::auth::Caller;
use crate::api::error::{ApiError, ErrorResponse};
use crate::export::cache::CacheError;
use crate::export::{ExportError, ExportFormat, ExportRequest, Quant};

/// The delay a client is asked to wait when the export builds are all busy.
const EXPORT_RETRY_SECONDS: u64 = 10;

/// A query value as the enum it names, or a 400 naming the parameter and the choices.
fn choice<T: clap::ValueEnum>(raw: Option<&str>, param: &str) -> Result<Option<T>, ApiError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    T::from_str(raw, false).map(Some).map_err(|_| {
        let names: Vec<String> = T::value_variants()
            .iter()
            .filter_map(|v| v.to_possible_value().map(|p| p.get_name().to_owned()))
            .collect();
        ApiError::invalid(
            format!("{param} must be one of {}", names.join(", ")),
            Some(param),
        )
    })
}

/// Export a model with its adapter merged in: `format=gguf` (default; `quant` f16 (default),
/// q8_0, q4_k or f32) streams one `.gguf` file, `format=hf` (`quant` bf16 (default), f16 or f32)
/// a `.tar.gz` of a Hugging Face directory. An extension of the OpenAI API. Each export is built
/// once and kept (until the model is deleted); concurrent requests for it share the build, and
/// a request that would start a build beyond `--max-concurrent-exports` gets a 429.
#[utoipa::path(operation_id = "export_model", tag = "Models",
    params(("model" = String, Path, description = "The model id"),
           ("format" = inline(Option<ExportFormat>), Query, description = "gguf (default) or hf"),
           ("quant" = inline(Option<Quant>), Query,
            description = "gguf: f16 (default), q8_0, q4_k, f32; hf: bf16 (default), f16, f32")),
    responses((status = 200, description = "The GGUF file or the directory's .tar.gz",
               content_type = "application/octet-stream"),
              (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
              (status = 429, body = ErrorResponse,
               description = "Other exports are being built; retry after `Retry-After` seconds")))]
#[get("/v1/models/{model:.*}/export")]
#[tracing::instrument(skip_all, fields(model = %path.as_str()))]
pub async fn export_model(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    let id = model_id(path.into_inner())?;
    // Pairs keep `format=` (present, empty: a 400) apart from an absent `format`.
    let q = web::Query::<Vec<(String, String)>>::from_query(req.query_string())
        .map_err(|e| ApiError::invalid(format!("Invalid query string: {e}"), None))?;
    let get = |key: &str| q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
    let format = choice::<ExportFormat>(get("format"), "format")?.unwrap_or(ExportFormat::Gguf);
    let quant = choice::<Quant>(get("quant"), "quant")?.unwrap_or(Quant::default_for(format));
    let adapter_dir = if id == state.engine.base_name() {
        None
    } else {
        let m = state
            .store
            .get_model(&caller.0, &id)
            .await?
            .ok_or_else(|| ApiError::not_found_model(&id))?;
        Some(state.blobs.local_dir(&m.path).await?)
    };
    let request = ExportRequest {
        base_dir: state.engine.base_dir().to_path_buf(),
        adapter_dir,
        format,
        quant,
        name: id.clone(),
    };
    let path = state.exports.get(request).await.map_err(|e| match e {
        CacheError::Busy(_) => ApiError::busy(
            format!(
                "The server is building other exports ({e}); retry after the Retry-After delay"
            ),
            EXPORT_RETRY_SECONDS,
        ),
        CacheError::Export(ExportError::Unsupported(m)) => ApiError::invalid(m, Some("quant")),
        CacheError::Export(ExportError::Write { source, .. })
            if source.kind() == std::io::ErrorKind::StorageFull =>
        {
            ApiError::storage_full()
        }
        CacheError::Export(other) => ApiError::internal(other),
    })?;
    // A model deleted while its export streams: the open file streams on.
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(ApiError::internal)?;
    let bytes = file.metadata().await.map_err(ApiError::internal)?.len();
    let stem: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    let name = match format {
        ExportFormat::Gguf => format!("{stem}.gguf"),
        ExportFormat::Hf => format!("{stem}.tar.gz"),
    };
    Ok(HttpResponse::Ok()
        .content_type("application/octet-stream")
        .insert_header((
            "Content-Disposition",
            format!("attachment; filename=\"{name}\""),
        ))
        .no_chunking(bytes)
        .streaming(ReaderStream::new(file)))
}
