//! Serving with mistral.rs: one engine runner on its own multi-threaded tokio runtime, the base
//! model plus fine-tuned models (LoRA merged at load) added and removed as resident models, an
//! LRU bound on how many stay loaded. Knows nothing of HTTP or SQL.

pub mod adapters;
mod engine;
mod fan_in;
mod finish;
mod loader;
pub mod measure;
pub mod paged;
mod request;

pub use engine::{Engine, EngineOptions, Generation};
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
