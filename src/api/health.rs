//! `GET /health`: the process is up and the database answers.

use actix_web::get;
use actix_web::{HttpResponse, web};
use serde_json::json;

use super::ApiState;

/// 200 `{"status":"ok"}` when the database answers, 503 otherwise.
#[utoipa::path(operation_id = "health", tag = "Health",
    responses((status = 200, description = "Healthy"), (status = 503, description = "Database unreachable")))]
#[get("/health")]
pub async fn health(state: web::Data<ApiState>) -> HttpResponse {
    if state.store.ping().await {
        HttpResponse::Ok().json(json!({"status": "ok", "database": "ok"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(json!({"status": "unavailable", "database": "unreachable"}))
    }
}
