//! `/v1/ensembles` (a ferrotune extension): define, list, read and remove ensembles — one model
//! name answered by several fine-tuned models of the same base (`vote`, `best_logprob`,
//! `consensus`) or by a domain model that hands questions it is unsure of to a fallback
//! (`layered`). Chat requests name an ensemble like any model; see [`crate::api::chat::ensemble`].

use actix_web::{HttpResponse, delete, get, post, web};
use serde::{Deserialize, Serialize};

use crate::api::ApiState;
use crate::api::auth::Caller;
use crate::api::error::{ApiError, ErrorResponse};
use crate::api::json_body::JsonBody;
use crate::api::objects::DeletedObject;
use crate::domain::ensemble::{EnsembleSpec, Strategy};
use crate::store::ensembles::EnsembleRow;

/// `POST /v1/ensembles` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct CreateEnsembleRequest {
    /// The model name clients will use: 1–128 letters, digits, `.`, `_`, `-`, `/`, `:`, not
    /// starting with `ft:`.
    #[schema(pattern = r"^[A-Za-z0-9._/:-]{1,128}$")]
    pub name: String,
    /// Model ids of the caller's organization (fine-tuned models, checkpoints, or the base), all
    /// of one base: 2–8 for `vote`, `best_logprob`, `consensus`; exactly one (the domain model)
    /// for `layered`.
    #[schema(schema_with = members_schema)]
    pub members: Vec<String>,
    /// How the answer is chosen (default `vote`).
    #[serde(default)]
    pub strategy: Option<Strategy>,
    /// `layered` only: the model that answers when the member is unsure (often the base).
    #[serde(default)]
    pub fallback: Option<String>,
    /// `layered` only: the lowest mean token log-probability (−100 to 0) at which the member's
    /// answer is still returned, or `"auto"`: calibrated on the validation file of the job that
    /// trained the member, as the highest value that keeps ≥ 95 % of its answers there.
    #[serde(default)]
    pub threshold: Option<ThresholdSpec>,
}

/// A `layered` ensemble's threshold as given.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ThresholdSpec {
    /// A mean token log-probability, −100 to 0.
    Value(f64),
    /// Calibrated on the member's validation set.
    Auto(Auto),
}

/// The word `auto`.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Auto {
    /// Calibrate.
    Auto,
}

/// An ensemble (`object: "ensemble"`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Ensemble {
    /// Its model name.
    pub id: String,
    /// Always `ensemble`.
    pub object: &'static str,
    /// Unix seconds.
    pub created_at: i64,
    /// How the answer is chosen.
    pub strategy: String,
    /// Member model ids.
    pub members: Vec<String>,
    /// `layered`: the fallback model.
    pub fallback: Option<String>,
    /// `layered`: the confidence threshold.
    pub threshold: Option<f64>,
    /// The fine-tuning job that trained the members, if one did.
    pub fine_tuning_job_id: Option<String>,
}

impl From<EnsembleRow> for Ensemble {
    fn from(r: EnsembleRow) -> Self {
        Self {
            id: r.id,
            object: "ensemble",
            created_at: r.created_at.timestamp(),
            strategy: r.strategy,
            members: r.members,
            fallback: r.fallback,
            threshold: r.threshold,
            fine_tuning_job_id: r.job_id,
        }
    }
}

/// `{object: "list", data}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ListEnsemblesResponse {
    /// Always `list`.
    pub object: &'static str,
    /// The ensembles, oldest first.
    pub data: Vec<Ensemble>,
}

/// The base model of `model` for the caller, or the 400 naming `param`.
async fn base_of(
    state: &ApiState,
    caller: &Caller,
    model: &str,
    param: &str,
) -> Result<String, ApiError> {
    let base = state.engine.base_name();
    if model == base {
        return Ok(base.to_owned());
    }
    match state.store.get_model(&caller.0, model).await? {
        Some(row) => Ok(row.base_model),
        None => Err(ApiError::invalid(
            format!("'{model}' is not a model of yours (ensembles cannot be members)"),
            Some(param),
        )
        .with_code("model_not_found")),
    }
}

/// Define an ensemble.
#[utoipa::path(operation_id = "create_ensemble", tag = "Ensembles",
    request_body = CreateEnsembleRequest,
    responses((status = 200, body = Ensemble), (status = 400, body = ErrorResponse),
              (status = 409, body = ErrorResponse)))]
#[post("/v1/ensembles")]
#[tracing::instrument(skip_all)]
pub async fn create_ensemble(
    state: web::Data<ApiState>,
    caller: Caller,
    body: JsonBody<CreateEnsembleRequest>,
) -> Result<HttpResponse, ApiError> {
    let req = body.into_inner();
    let auto = matches!(req.threshold, Some(ThresholdSpec::Auto(_)));
    let threshold = req.threshold.map(|t| match t {
        ThresholdSpec::Value(v) => v,
        // Stands in (a valid value) until the members are checked and it is calibrated.
        ThresholdSpec::Auto(_) => 0.0,
    });
    let mut spec = EnsembleSpec::parse(
        req.name,
        req.members,
        req.strategy,
        req.fallback,
        threshold,
        state.engine.base_name(),
    )?;
    let mut named: Vec<(String, &str)> = spec
        .members
        .iter()
        .enumerate()
        .map(|(i, m)| (format!("members[{i}]"), m.as_str()))
        .collect();
    named.extend(spec.fallback.as_deref().map(|f| ("fallback".to_owned(), f)));
    let mut first_base = None;
    for (param, model) in named {
        let base = base_of(&state, &caller, model, &param).await?;
        let first = first_base.get_or_insert_with(|| base.clone());
        if *first != base {
            return Err(ApiError::invalid(
                format!(
                    "Every model of an ensemble must share one base: '{model}' is of '{base}', \
                     the first member of '{first}'"
                ),
                Some(&param),
            ));
        }
    }
    if auto {
        let member = spec.members[0].clone();
        let threshold = state
            .models()
            .calibrate_threshold(&caller.0, &member)
            .await?;
        spec.threshold = Some(threshold);
    }
    let row = state
        .store
        .insert_ensemble(&caller.0, &spec)
        .await?
        .ok_or_else(|| {
            ApiError::conflict(format!("A model named '{}' already exists", spec.name))
        })?;
    Ok(HttpResponse::Ok().json(Ensemble::from(row)))
}

/// List the caller's ensembles.
#[utoipa::path(operation_id = "list_ensembles", tag = "Ensembles",
    responses((status = 200, body = ListEnsemblesResponse)))]
#[get("/v1/ensembles")]
#[tracing::instrument(skip_all)]
pub async fn list_ensembles(
    state: web::Data<ApiState>,
    caller: Caller,
) -> Result<HttpResponse, ApiError> {
    let data = state
        .store
        .list_ensembles(&caller.0)
        .await?
        .into_iter()
        .map(Ensemble::from)
        .collect();
    Ok(HttpResponse::Ok().json(ListEnsemblesResponse {
        object: "list",
        data,
    }))
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("ensemble", id)
}

/// The ensemble a path names; one that could never be stored (a NUL character) is a 404 before
/// any lookup.
fn ensemble_id(raw: String) -> Result<String, ApiError> {
    if raw.contains('\0') {
        return Err(not_found(&raw.replace('\0', "")));
    }
    Ok(raw)
}

/// Retrieve an ensemble.
#[utoipa::path(operation_id = "retrieve_ensemble", tag = "Ensembles",
    params(("ensemble" = String, Path, description = "The ensemble's name")),
    responses((status = 200, body = Ensemble), (status = 404, body = ErrorResponse)))]
#[get("/v1/ensembles/{ensemble:.*}")]
#[tracing::instrument(skip_all, fields(ensemble = %path.as_str()))]
pub async fn retrieve_ensemble(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = ensemble_id(path.into_inner())?;
    let row = state
        .store
        .get_ensemble(&caller.0, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(HttpResponse::Ok().json(Ensemble::from(row)))
}

/// Remove an ensemble (and, for one a job trained, its member models).
#[utoipa::path(operation_id = "delete_ensemble", tag = "Ensembles",
    params(("ensemble" = String, Path, description = "The ensemble's name")),
    responses((status = 200, body = DeletedObject), (status = 404, body = ErrorResponse)))]
#[delete("/v1/ensembles/{ensemble:.*}")]
#[tracing::instrument(skip_all, fields(ensemble = %path.as_str()))]
pub async fn delete_ensemble(
    state: web::Data<ApiState>,
    caller: Caller,
    path: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = ensemble_id(path.into_inner())?;
    let row = remove(&state, &caller, &id)
        .await?
        .ok_or_else(|| not_found(&id))?;
    Ok(HttpResponse::Ok().json(DeletedObject {
        id: row.id,
        object: "ensemble",
        deleted: true,
    }))
}

/// Remove ensemble `id` of the caller and evict the members its job trained; the row removed.
pub async fn remove(
    state: &ApiState,
    caller: &Caller,
    id: &str,
) -> Result<Option<EnsembleRow>, ApiError> {
    let row = state.store.delete_ensemble(&caller.0, id).await?;
    if let Some(r) = row.as_ref().filter(|r| r.job_id.is_some()) {
        for m in &r.members {
            state.engine.remove(m).await;
        }
    }
    Ok(row)
}

/// `members`' schema: 1–8 model ids, none empty.
fn members_schema() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1)),
        )
        .min_items(Some(1))
        .max_items(Some(8))
        .description(Some(
            "Model ids of the caller's organization (fine-tuned models, checkpoints, or the \
             base), all of one base: 2–8 for `vote`, `best_logprob`, `consensus`; exactly one \
             (the domain model) for `layered`.",
        ))
        .build()
}
