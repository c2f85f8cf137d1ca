//! Serving: one engine interface ([`Engine`], its [`Generation`]s and their [`events`]) over
//! mistral.rs (the GPU engine; fine-tunes merged at load) and llama.cpp (the CPU engine;
//! fine-tunes as adapters over one shared base). Knows nothing of HTTP or SQL.

pub mod adapters;
mod engine;
pub mod events;
mod generation;
mod llama;
pub mod measure;
mod mistral;
mod observe;
pub mod paged;
mod request;

pub use engine::{Engine, EngineOptions};
pub use generation::Generation;
pub use llama::{DeriveBase, LlamaOptions};
pub use mistral::MistralOptions;
pub use request::{ChatParams, ChatTurn, ToolUse};

/// A serving failure.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The engine could not start or load a model.
    #[error("loading model '{model}' failed: {reason}")]
    Load {
        /// Model name.
        model: String,
        /// Why.
        reason: String,
    },
    /// The request was refused by the engine (bad parameters for this model).
    #[error("{0}")]
    Invalid(String),
    /// Generation failed inside the engine.
    #[error("the engine failed: {0}")]
    Engine(String),
    /// The generation ended without its answer (the engine stopped or restarted).
    #[error("the model stopped before answering; try again")]
    Stopped,
}
