//! `POST /v1/load_lora_adapter` and `/v1/unload_lora_adapter` (vLLM's contract) for externally
//! trained PEFT adapters, confined to `--adapter-root`.

use actix_web::post;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};

use crate::api::ApiState;
use crate::api::auth::Caller;
use crate::api::error::{ApiError, ErrorResponse};
use crate::api::json_body::JsonBody;
use crate::serve::adapters::check_adapter;
use crate::store::models::AdapterInsert;

/// `{"lora_name", "lora_path"}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct LoadLoraAdapterRequest {
    /// The model name clients will use: 1–128 letters, digits, `.`, `_`, `-`, `/`.
    #[schema(pattern = r"^[A-Za-z0-9._/-]{1,128}$")]
    pub lora_name: String,
    /// A PEFT directory inside the adapter root (absolute, or relative to the root).
    #[schema(min_length = 1)]
    pub lora_path: String,
}

/// `{"lora_name"}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct UnloadLoraAdapterRequest {
    /// The adapter's name.
    #[schema(pattern = r"^[A-Za-z0-9._/-]{1,128}$")]
    pub lora_name: String,
}

/// The adapter after a load or unload.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct LoraAdapterStatus {
    /// Always `lora_adapter`.
    pub object: &'static str,
    /// Its name.
    pub lora_name: String,
    /// `loaded` or `unloaded`.
    pub status: &'static str,
}

fn check_name(name: &str, base: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
        && name != base;
    if !ok {
        return Err(ApiError::invalid(
            "lora_name must be 1–128 characters of letters, digits, '.', '_', '-', '/', and not the base model's name",
            Some("lora_name"),
        ));
    }
    Ok(())
}

/// The configured adapter root, or the 400 saying the endpoints are disabled.
fn adapter_root(state: &ApiState) -> Result<std::path::PathBuf, ApiError> {
    state.adapter_root.clone().ok_or_else(|| {
        ApiError::invalid(
            "Runtime LoRA adapters are disabled; start the server with --adapter-root DIR",
            None,
        )
        .with_code("adapters_disabled")
    })
}

/// Load a PEFT adapter from the adapter root and serve it as `lora_name`.
#[utoipa::path(operation_id = "load_lora_adapter", tag = "Models",
    request_body = LoadLoraAdapterRequest,
    responses((status = 200, body = LoraAdapterStatus), (status = 400, body = ErrorResponse),
              (status = 409, body = ErrorResponse)))]
#[post("/v1/load_lora_adapter")]
#[tracing::instrument(skip_all)]
pub async fn load_lora_adapter(
    state: web::Data<ApiState>,
    caller: Caller,
    body: JsonBody<LoadLoraAdapterRequest>,
) -> Result<HttpResponse, ApiError> {
    let req = body.into_inner();
    let root = adapter_root(&state)?;
    let engine = state.engine.clone();
    check_name(&req.lora_name, engine.base_name())?;
    let (base_dir, base_name, path) = (
        engine.base_dir().to_owned(),
        engine.base_name().to_owned(),
        req.lora_path.clone(),
    );
    let checked =
        tokio::task::spawn_blocking(move || check_adapter(&root, &path, &base_dir, &base_name))
            .await
            .map_err(ApiError::internal)?
            .map_err(|reason| ApiError::invalid(reason.to_string(), Some("lora_path")))?;
    if state
        .store
        .get_model(&caller.0, &req.lora_name)
        .await?
        .is_some()
    {
        return Err(ApiError::conflict(format!(
            "A model named '{}' already exists",
            req.lora_name
        )));
    }
    engine
        .ensure_loaded(&req.lora_name, &checked.dir)
        .await
        .map_err(|e| ApiError::invalid(e.to_string(), Some("lora_path")))?;
    let path = checked.dir.to_string_lossy();
    if state
        .store
        .insert_adapter(&caller.0, &req.lora_name, engine.base_name(), &path)
        .await?
        == AdapterInsert::NameTaken
    {
        engine.remove(&req.lora_name).await;
        return Err(ApiError::conflict(format!(
            "A model named '{}' already exists",
            req.lora_name
        )));
    }
    Ok(HttpResponse::Ok().json(LoraAdapterStatus {
        object: "lora_adapter",
        lora_name: req.lora_name,
        status: "loaded",
    }))
}

/// Stop serving a runtime adapter.
#[utoipa::path(operation_id = "unload_lora_adapter", tag = "Models",
    request_body = UnloadLoraAdapterRequest,
    responses((status = 200, body = LoraAdapterStatus), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse)))]
#[post("/v1/unload_lora_adapter")]
#[tracing::instrument(skip_all)]
pub async fn unload_lora_adapter(
    state: web::Data<ApiState>,
    caller: Caller,
    body: JsonBody<UnloadLoraAdapterRequest>,
) -> Result<HttpResponse, ApiError> {
    let req = body.into_inner();
    adapter_root(&state)?;
    if !state
        .store
        .delete_adapter(&caller.0, &req.lora_name)
        .await?
    {
        return Err(ApiError::not_found_model(&req.lora_name));
    }
    state.engine.remove(&req.lora_name).await;
    Ok(HttpResponse::Ok().json(LoraAdapterStatus {
        object: "lora_adapter",
        lora_name: req.lora_name,
        status: "unloaded",
    }))
}
