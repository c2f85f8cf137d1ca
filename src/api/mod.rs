//! HTTP only: parse the request, call the store, render the OpenAI object. No SQL, no tensors.
//!
//! Routes follow OpenAI's API reference; handler names are OpenAI's operation ids.

mod adapters;
pub mod auth;
mod chat;
mod chat_render;
pub mod chat_types;
mod chat_validate;
pub mod error;
mod file_upload;
mod files;
mod health;
mod job_actions;
mod job_events;
mod jobs;
mod models;
pub mod objects;
pub mod openapi;

use actix_web::middleware::ErrorHandlers;
use actix_web::web;

use crate::serve::Engine;
use crate::store::Store;
use crate::store::blobs::BlobStore;
use auth::Auth;

/// What every handler can reach.
#[derive(Clone)]
pub struct ApiState {
    /// Database.
    pub store: Store,
    /// File bytes.
    pub blobs: BlobStore,
    /// Who may call.
    pub auth: Auth,
    /// Largest accepted upload, in bytes.
    pub max_upload_bytes: u64,
    /// Base model names jobs may fine-tune.
    pub base_models: Vec<String>,
    /// The serving engine.
    pub engine: std::sync::Arc<Engine>,
    /// Server start (Unix seconds), shown as the base model's `created`.
    pub started_at: i64,
    /// Where runtime adapters may be loaded from (`None`: the endpoints are disabled).
    pub adapter_root: Option<std::path::PathBuf>,
}

/// Register every route and the error envelopes for actix's own rejections.
pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.app_data(web::JsonConfig::default().error_handler(error::json_rejection))
        .app_data(web::QueryConfig::default().error_handler(error::query_rejection))
        .app_data(web::PathConfig::default().error_handler(error::path_rejection))
        .service(web::resource("/health").get(health::health))
        .service(web::resource("/openapi.json").get(openapi::serve_openapi))
        .service(
            web::resource("/v1/files")
                .get(files::list_files)
                .post(file_upload::create_file),
        )
        .service(
            web::resource("/v1/files/{file_id}")
                .get(files::retrieve_file)
                .delete(files::delete_file),
        )
        .service(web::resource("/v1/files/{file_id}/content").get(files::download_file))
        .service(
            web::resource("/v1/fine_tuning/jobs")
                .get(jobs::list_paginated_fine_tuning_jobs)
                .post(jobs::create_fine_tuning_job),
        )
        .service(web::resource("/v1/fine_tuning/jobs/{job_id}").get(jobs::retrieve_fine_tuning_job))
        .service(
            web::resource("/v1/fine_tuning/jobs/{job_id}/cancel")
                .post(job_actions::cancel_fine_tuning_job),
        )
        .service(
            web::resource("/v1/fine_tuning/jobs/{job_id}/pause")
                .post(job_actions::pause_fine_tuning_job),
        )
        .service(
            web::resource("/v1/fine_tuning/jobs/{job_id}/resume")
                .post(job_actions::resume_fine_tuning_job),
        )
        .service(
            web::resource("/v1/fine_tuning/jobs/{job_id}/events")
                .get(job_events::list_fine_tuning_events),
        )
        .service(
            web::resource("/v1/fine_tuning/jobs/{job_id}/checkpoints")
                .get(job_events::list_fine_tuning_job_checkpoints),
        )
        .service(web::resource("/v1/chat/completions").post(chat::create_chat_completion))
        .service(web::resource("/v1/models").get(models::list_models))
        .service(web::resource("/v1/load_lora_adapter").post(adapters::load_lora_adapter))
        .service(web::resource("/v1/unload_lora_adapter").post(adapters::unload_lora_adapter))
        .service(
            web::resource("/v1/models/{model:.*}")
                .get(models::retrieve_model)
                .delete(models::delete_model),
        );
}

/// Middleware that turns actix's plain-text error responses into the OpenAI envelope.
pub fn error_envelopes<B: 'static>() -> ErrorHandlers<B> {
    ErrorHandlers::new().default_handler(error::envelope_plain_errors)
}
