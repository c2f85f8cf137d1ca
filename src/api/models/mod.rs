//! `/v1/models`: the base model, the caller's fine-tuned models and their checkpoints.
//! See <https://platform.openai.com/docs/api-reference/models>.

use actix_web::{HttpResponse, web};
use actix_web::{delete, get};
use serde::Serialize;

use crate::api::ApiState;
use crate::api::auth::Caller;
use crate::api::error::{ApiError, ErrorResponse};
use crate::api::objects::DeletedObject;
use crate::store::ensembles::EnsembleRow;
use crate::store::models::ModelRow;

pub mod adapters;
pub mod export;

/// A model (`object: "model"`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct OpenAIModel {
    /// The id clients pass as `model`.
    pub id: String,
    /// Always `model`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: i64,
    /// `ferrotune` for the base model, else the owning organization.
    pub owned_by: String,
}

/// `{object: "list", data}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ListModelsResponse {
    /// Always `list`.
    pub object: &'static str,
    /// The models.
    pub data: Vec<OpenAIModel>,
}

/// The model a path names; one that could never be stored (a NUL character) is a 404 before
/// any lookup.
fn model_id(raw: String) -> Result<String, ApiError> {
    if raw.contains('\0') {
        return Err(ApiError::not_found_model(&raw));
    }
    Ok(raw)
}

impl From<ModelRow> for OpenAIModel {
    fn from(m: ModelRow) -> Self {
        Self {
            id: m.id,
            object: "model",
            created: m.created_at.timestamp(),
            owned_by: m.organization_id,
        }
    }
}

/// An ensemble as the model clients name.
fn ensemble_model(e: EnsembleRow) -> OpenAIModel {
    OpenAIModel {
        id: e.id,
        object: "model",
        created: e.created_at.timestamp(),
        owned_by: e.organization_id,
    }
}

fn base(state: &ApiState) -> OpenAIModel {
    OpenAIModel {
        id: state.engine.base_name().to_owned(),
        object: "model",
        created: state.started_at,
        owned_by: "ferrotune".to_owned(),
    }
}

/// List the models the caller can use.
#[utoipa::path(operation_id = "list_models", tag = "Models",
    responses((status = 200, body = ListModelsResponse)))]
#[get("/v1/models")]
#[tracing::instrument(skip_all)]
pub async fn list_models(
    state: web::Data<ApiState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let mut data = vec![base(&state)];
    data.extend(
        state
            .store
            .list_models(&caller.0)
            .await?
            .into_iter()
            .map(OpenAIModel::from),
    );
    data.extend(
        state
            .store
            .list_ensembles(&caller.0)
            .await?
            .into_iter()
            .map(ensemble_model),
    );
    Ok(HttpResponse::Ok().json(ListModelsResponse {
        object: "list",
        data,
    }))
}

/// Retrieve a model.
#[utoipa::path(operation_id = "retrieve_model", tag = "Models",
    params(("model" = String, Path, description = "The model id")),
    responses((status = 200, body = OpenAIModel), (status = 404, body = ErrorResponse)))]
#[get("/v1/models/{model:.*}")]
#[tracing::instrument(skip_all, fields(model = %path.as_str()))]
pub async fn retrieve_model(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = model_id(path.into_inner())?;
    if id == state.engine.base_name() {
        return Ok(HttpResponse::Ok().json(base(&state)));
    }
    if let Some(e) = state.store.get_ensemble(&caller.0, &id).await? {
        return Ok(HttpResponse::Ok().json(ensemble_model(e)));
    }
    let m = state
        .store
        .get_model(&caller.0, &id)
        .await?
        .ok_or_else(|| ApiError::not_found_model(&id))?;
    Ok(HttpResponse::Ok().json(OpenAIModel::from(m)))
}

/// Delete a fine-tuned model (and stop serving it with its checkpoints), or an ensemble (with
/// the members its job trained).
#[utoipa::path(operation_id = "delete_model", tag = "Models",
    params(("model" = String, Path, description = "The model id")),
    responses((status = 200, body = DeletedObject), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse)))]
#[delete("/v1/models/{model:.*}")]
#[tracing::instrument(skip_all, fields(model = %path.as_str()))]
pub async fn delete_model(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = model_id(path.into_inner())?;
    if id == state.engine.base_name() {
        return Err(ApiError::invalid(
            "The base model cannot be deleted",
            Some("model"),
        ));
    }
    if let Some(e) = crate::api::ensembles::remove(&state, &caller, &id).await? {
        return Ok(HttpResponse::Ok().json(DeletedObject {
            id: e.id,
            object: "model",
            deleted: true,
        }));
    }
    let checkpoints: Vec<String> = state
        .store
        .list_models(&caller.0)
        .await?
        .into_iter()
        .map(|m| m.id)
        .filter(|m| m.starts_with(&format!("{id}:ckpt-step-")))
        .collect();
    if !state.store.delete_model(&caller.0, &id).await? {
        return match state.store.get_model(&caller.0, &id).await? {
            Some(_) => Err(ApiError::invalid(
                "Only fine-tuned models can be deleted, not checkpoints",
                Some("model"),
            )),
            None => Err(ApiError::not_found_model(&id)),
        };
    }
    state.engine.remove(&id).await;
    state.exports.remove_model(&id);
    for c in checkpoints {
        state.engine.remove(&c).await;
        state.exports.remove_model(&c);
    }
    Ok(HttpResponse::Ok().json(DeletedObject {
        id,
        object: "model",
        deleted: true,
    }))
}
