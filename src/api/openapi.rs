//! The OpenAPI document, derived by utoipa from the handlers and objects; committed as
//! `openapi/openapi.json` and served at `/openapi.json`.

use actix_web::HttpResponse;
use utoipa::OpenApi;

use super::{adapters, chat, file_upload, files, health, job_actions, job_events, jobs, models};

/// The API's OpenAPI description.
#[derive(OpenApi)]
#[openapi(
    info(title = "ferrotune", description = "OpenAI-compatible fine-tune-and-serve service"),
    paths(
        health::health,
        file_upload::create_file,
        files::list_files,
        files::retrieve_file,
        files::delete_file,
        files::download_file,
        jobs::create_fine_tuning_job,
        jobs::list_paginated_fine_tuning_jobs,
        jobs::retrieve_fine_tuning_job,
        job_actions::cancel_fine_tuning_job,
        job_actions::pause_fine_tuning_job,
        job_actions::resume_fine_tuning_job,
        job_events::list_fine_tuning_events,
        job_events::list_fine_tuning_job_checkpoints,
        chat::create_chat_completion,
        models::list_models,
        models::retrieve_model,
        models::delete_model,
        adapters::load_lora_adapter,
        adapters::unload_lora_adapter,
    ),
    tags((name = "Chat"), (name = "Files"), (name = "Fine-tuning"), (name = "Models"), (name = "Health"))
)]
pub struct ApiDoc;

/// The spec as pretty JSON, exactly as committed.
pub fn spec_json() -> String {
    let mut text = ApiDoc::openapi()
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
