//! HTTP only: parse the request, call the store, render the OpenAI object. No SQL, no tensors.
//!
//! Routes follow OpenAI's API reference; handler names are OpenAI's operation ids. Handlers are
//! grouped by OpenAI resource (`files/`, `fine_tuning/`, `chat`, `models/`) and registered once in
//! [`routes`].

pub mod auth;
pub mod batches;
pub mod body_timeout;
pub mod charts;
pub mod chat;
pub mod completions;
pub mod ensembles;
pub mod error;
pub mod files;
pub mod fine_tuning;
mod health;
pub mod json_body;
pub mod metadata;
pub mod metrics;
pub mod models;
pub mod objects;
pub mod openapi;
pub mod rejections;
pub mod request_span;
pub mod responses;
pub mod routes;
pub mod sampling;

use actix_web::middleware::ErrorHandlers;

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
    /// Model exports built and kept on this node.
    pub exports: std::sync::Arc<crate::export::cache::ExportCache>,
}

impl ApiState {
    /// The store, blobs and engine, as the use cases in [`crate::answers`] take them.
    pub fn models(&self) -> crate::answers::Models<'_> {
        crate::answers::Models {
            store: &self.store,
            blobs: &self.blobs,
            engine: &self.engine,
        }
    }
}

/// Middleware that turns actix's plain-text error responses into the OpenAI envelope.
pub fn error_envelopes<B: 'static>() -> ErrorHandlers<B> {
    ErrorHandlers::new().default_handler(rejections::envelope_plain_errors)
}
