//! The OpenAPI document, derived by utoipa from the handlers and objects as the route table
//! registers them; committed as `openapi/openapi.json` and served at `/openapi.json`.

use actix_web::HttpResponse;
use utoipa::OpenApi;

/// The document's frame: title and tags. The paths and their schemas are added by the route
/// table ([`super::routes::spec`]).
#[derive(OpenApi)]
#[openapi(
    info(title = "ferrotune", description = "OpenAI-compatible fine-tune-and-serve service"),
    components(schemas(super::files::SortOrder)),
    tags((name = "Chat"), (name = "Completions"), (name = "Responses"), (name = "Batch"), (name = "Files"), (name = "Fine-tuning"), (name = "Models"), (name = "Ensembles", description = "A ferrotune extension: several models answering as one model name"), (name = "Health"), (name = "Metrics", description = "Prometheus metrics; operator-wide, behind an API key when keys are configured"))
)]
pub struct ApiDoc;

/// The spec as pretty JSON, exactly as committed.
pub fn spec_json() -> String {
    let mut text = super::routes::spec()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

/// `GET /openapi.json`.
pub async fn serve_openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(spec_json())
}
