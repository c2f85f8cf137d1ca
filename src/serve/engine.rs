//! The engine the API serves through, whichever runs underneath: every method answers in
//! ferrotune's own types ([`Generation`] and its [`crate::serve::events::Event`]s).

use std::path::Path;
use std::sync::Arc;

use super::llama::{LlamaEngine, LlamaOptions};
use super::mistral::{MistralEngine, MistralOptions};
use super::{ChatParams, Generation, ServeError};

/// How the engine runs.
#[derive(Debug, Clone)]
pub enum EngineOptions {
    /// mistral.rs.
    Mistral(MistralOptions),
    /// llama.cpp.
    Llama(LlamaOptions),
}

/// The serving engine.
pub struct Engine {
    backend: Backend,
}

enum Backend {
    Mistral(MistralEngine),
    Llama(LlamaEngine),
}

/// Calls the same method on whichever engine runs.
macro_rules! dispatch {
    ($self:ident, $e:ident => $call:expr) => {
        match &$self.backend {
            Backend::Mistral($e) => $call,
            Backend::Llama($e) => $call,
        }
    };
}

impl Engine {
    /// Start the engine with the base model loaded.
    pub async fn start(options: EngineOptions) -> Result<Arc<Self>, ServeError> {
        let backend = match options {
            EngineOptions::Mistral(o) => Backend::Mistral(MistralEngine::start(o).await?),
            EngineOptions::Llama(o) => Backend::Llama(LlamaEngine::start(o).await?),
        };
        Ok(Arc::new(Self { backend }))
    }

    /// Which engine runs (`mistralrs` or `llamacpp`).
    pub fn kind(&self) -> &'static str {
        match &self.backend {
            Backend::Mistral(_) => "mistralrs",
            Backend::Llama(_) => "llamacpp",
        }
    }

    /// Prompt plus completion tokens a model can hold.
    pub fn context_len(&self) -> usize {
        dispatch!(self, e => e.context_len())
    }

    /// The base model's public name.
    pub fn base_name(&self) -> &str {
        dispatch!(self, e => e.base_name())
    }

    /// The base model's directory.
    pub fn base_dir(&self) -> &Path {
        dispatch!(self, e => e.base_dir())
    }

    /// How many fine-tuned models were loaded since start.
    pub fn loads(&self) -> u64 {
        dispatch!(self, e => e.loads())
    }

    /// Names of the loaded fine-tuned models, least recently used first.
    pub fn resident(&self) -> Vec<String> {
        dispatch!(self, e => e.resident())
    }

    /// Generations in progress.
    pub fn active_generations(&self) -> usize {
        dispatch!(self, e => e.active_generations())
    }

    /// Make `name` (the base with the adapter in `adapter_dir`) servable, loading it once.
    pub async fn ensure_loaded(&self, name: &str, adapter_dir: &Path) -> Result<(), ServeError> {
        dispatch!(self, e => e.ensure_loaded(name, adapter_dir).await)
    }

    /// Load `name` now if there is room (a job just succeeded); otherwise on first request.
    pub async fn preload(&self, name: &str, adapter_dir: &Path) {
        dispatch!(self, e => e.preload(name, adapter_dir).await)
    }

    /// Unload `name` if loaded.
    pub async fn remove(&self, name: &str) {
        dispatch!(self, e => e.remove(name).await)
    }

    /// Start a chat generation on a loaded model. Dropping the [`Generation`] cancels it.
    pub async fn chat(
        &self,
        name: &str,
        params: ChatParams,
        stream: bool,
    ) -> Result<Generation, ServeError> {
        dispatch!(self, e => e.chat(name, params, stream).await)
    }

    /// Start a legacy completion of `prompt` on a loaded model (sampling from `params`).
    pub async fn complete(
        &self,
        name: &str,
        prompt: String,
        params: ChatParams,
        stream: bool,
    ) -> Result<Generation, ServeError> {
        dispatch!(self, e => e.complete(name, prompt, params, stream).await)
    }

    /// Prompt tokens of a chat request on model `name`, rendered as [`Engine::chat`] sends it.
    pub async fn prompt_tokens(&self, name: &str, params: &ChatParams) -> Option<usize> {
        dispatch!(self, e => e.prompt_tokens(name, params).await)
    }

    /// Tokens of a legacy completion prompt on model `name`.
    pub async fn text_tokens(&self, name: &str, prompt: &str) -> Option<usize> {
        dispatch!(self, e => e.text_tokens(name, prompt).await)
    }

    /// The last position's logits of `tokens` on model `name`, for parity checks (llama.cpp only).
    #[doc(hidden)]
    pub async fn logits(&self, name: &str, tokens: Vec<u32>) -> Result<Vec<f32>, ServeError> {
        let mut rows = self
            .logits_together(vec![(name.to_owned(), tokens)])
            .await?;
        rows.pop()
            .ok_or_else(|| ServeError::Engine("no logits came back".to_owned()))
    }

    /// The last position's logits of each row's tokens on its model, all rows decoded together
    /// in one batch (up to 4 rows; models of one base), for parity checks (llama.cpp only).
    #[doc(hidden)]
    pub async fn logits_together(
        &self,
        rows: Vec<(String, Vec<u32>)>,
    ) -> Result<Vec<Vec<f32>>, ServeError> {
        match &self.backend {
            Backend::Llama(e) => e.logits(rows).await,
            Backend::Mistral(_) => Err(ServeError::Invalid(
                "logits are read from the llama.cpp engine only".to_owned(),
            )),
        }
    }

    /// Fault injection for tests: stop `name`'s engine thread, dropping its generations.
    #[doc(hidden)]
    pub async fn stop_engine_thread(&self, name: &str) -> Result<(), ServeError> {
        dispatch!(self, e => e.stop_engine_thread(name).await)
    }
}
