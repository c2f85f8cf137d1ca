//! `GET /metrics`: Prometheus's text format ([`crate::metrics`]). With API keys configured it
//! needs one, like `/v1`; the figures are operator-wide (every organization's jobs).

use actix_web::{HttpResponse, get, web};

use super::ApiState;
use super::auth::Caller;

/// The metrics in Prometheus's text exposition format (version 0.0.4).
#[utoipa::path(operation_id = "metrics", tag = "Metrics",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4", body = String),
        (status = 401, description = "API keys are configured and none (or a wrong one) was sent", body = super::error::ErrorResponse)))]
#[get("/metrics")]
pub async fn metrics(state: web::Data<ApiState>, _caller: Caller) -> HttpResponse {
    let text = crate::metrics::global().render(&state.store).await;
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(text)
}
