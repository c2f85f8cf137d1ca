//! The llama.cpp engine (the CPU default): the base served as GGUF, one copy of it, and every
//! fine-tune as a LoRA adapter attached per step — no merged copies. Requests are rendered with
//! our own chat templates and tokenized by llama.cpp; the engine thread ([`runner`]) batches
//! them continuously.
//!
//! An adapter trained with QLoRA over a dense base saw the base after a quantization round trip,
//! not the base itself: it is served over that derived base, written as GGUF and loaded once per
//! format ([`derived`]), beside the base and its other adapters.

mod base;
mod context;
mod derived;
mod lora;
mod runner;
mod sampling;
mod team;
mod text;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use llama_cpp_2::llama_backend::LlamaBackend;

use self::base::BaseEngine;
use self::derived::DerivedBases;
use super::{ChatParams, Generation, ServeError};
use crate::model_dir::gguf::ServedGguf;
use crate::model_dir::quant::Quantization;

/// How the llama.cpp engine runs.
#[derive(Debug, Clone)]
pub struct LlamaOptions {
    /// The base model as one GGUF file.
    pub base_gguf: PathBuf,
    /// The base model's directory (config, chat template).
    pub base_dir: PathBuf,
    /// The base model's public name.
    pub base_name: String,
    /// Where adapters converted to llama.cpp's LoRA GGUF are kept.
    pub adapter_cache: PathBuf,
    /// KV-cache cells shared by all sequences.
    pub kv_tokens: usize,
    /// Sequences decoded together.
    pub slots: usize,
    /// CPU threads.
    pub threads: usize,
    /// Keep the KV cache in f32 (an f32 model served exactly; otherwise f16, as llama.cpp does).
    pub kv_f32: bool,
    /// Writes the base as a quantization round trip leaves it, for adapters trained with QLoRA
    /// over a dense base; `None` refuses such adapters.
    pub derive_base: Option<DeriveBase>,
}

/// Writes (once) and names the GGUF of the base as a quantization round trip leaves it.
#[derive(Clone)]
pub struct DeriveBase(pub Arc<dyn Fn(Quantization) -> Result<ServedGguf, String> + Send + Sync>);

impl std::fmt::Debug for DeriveBase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeriveBase")
    }
}

/// The llama.cpp engine: the base with its adapters, and the derived bases with theirs.
pub struct LlamaEngine {
    base: Arc<BaseEngine>,
    derived: DerivedBases,
}

fn engine_err(e: impl std::fmt::Display) -> ServeError {
    ServeError::Engine(e.to_string())
}

/// A fresh OpenAI-style call id.
pub(crate) fn call_id() -> String {
    use rand::Rng;
    let tail: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("call_{tail}")
}

/// The llama.cpp backend, initialised once per process.
fn backend() -> Result<&'static LlamaBackend, ServeError> {
    static BACKEND: std::sync::OnceLock<Result<LlamaBackend, String>> = std::sync::OnceLock::new();
    BACKEND
        .get_or_init(|| {
            let mut b = LlamaBackend::init().map_err(|e| e.to_string())?;
            b.void_logs();
            Ok(b)
        })
        .as_ref()
        .map_err(|e| ServeError::Engine(format!("llama.cpp did not start: {e}")))
}

impl LlamaEngine {
    /// Load the base GGUF and start the engine thread.
    pub async fn start(options: LlamaOptions) -> Result<Self, ServeError> {
        let derived = DerivedBases::new(&options);
        let base = Arc::new(BaseEngine::start(options).await?);
        Ok(Self { base, derived })
    }

    /// Prompt plus completion tokens a sequence can hold.
    pub fn context_len(&self) -> usize {
        self.base.context_len()
    }

    /// The base model's public name.
    pub fn base_name(&self) -> &str {
        self.base.base_name()
    }

    /// The base model's directory.
    pub fn base_dir(&self) -> &Path {
        self.base.base_dir()
    }

    /// The base's engine and every derived base's.
    fn engines(&self) -> Vec<Arc<BaseEngine>> {
        let mut all = self.derived.engines();
        all.push(self.base.clone());
        all
    }

    /// Adapter loads so far.
    pub fn loads(&self) -> u64 {
        self.engines().iter().map(|e| e.loads()).sum()
    }

    /// The attached adapters' model names, sorted.
    pub fn resident(&self) -> Vec<String> {
        let mut names = self.base.resident();
        names.extend(self.derived.routed());
        names.sort();
        names
    }

    /// Generations in progress.
    pub fn active_generations(&self) -> usize {
        self.engines().iter().map(|e| e.active_generations()).sum()
    }

    /// Attach the adapter in `adapter_dir` as `name`, converting it to a LoRA GGUF once: over
    /// the base, or over the derived base its training saw (a QLoRA adapter over a dense base).
    pub async fn ensure_loaded(&self, name: &str, adapter_dir: &Path) -> Result<(), ServeError> {
        // Every request passes here: an attached model answers without reading its directory.
        if name == self.base.base_name() || self.serving(name).is_loaded(name, adapter_dir) {
            return Ok(());
        }
        let frozen =
            crate::model_dir::quant::record::read(adapter_dir).map_err(|e| ServeError::Load {
                model: name.to_owned(),
                reason: e.to_string(),
            })?;
        match frozen {
            None => {
                self.derived.unroute(name).await;
                self.base.ensure_loaded(name, adapter_dir).await
            }
            Some(how) => {
                let engine = self.derived.engine(name, how).await?;
                engine.ensure_loaded(name, adapter_dir).await?;
                if self.derived.route(name, &engine).await {
                    self.base.remove(name).await;
                    tracing::info!(
                        model = name,
                        base = %how.label(),
                        "adapter attached over the derived base it trained on (the base after \
                         a quantization round trip)"
                    );
                }
                Ok(())
            }
        }
    }

    /// Attach `name` now (a job is about to succeed): adapters are small, there is always room.
    /// Then decode the chat template's head (the system line, the user turn's opening) under the
    /// adapter once, so the first request to the new model decodes only its own words.
    pub async fn preload(&self, name: &str, adapter_dir: &Path) {
        if let Err(e) = self.ensure_loaded(name, adapter_dir).await {
            tracing::warn!(model = name, error = %e, "preloading a fine-tuned model failed");
            return;
        }
        let params = ChatParams {
            messages: vec![super::ChatTurn::new("user", "")],
            max_tokens: Some(1),
            n: 1,
            ..ChatParams::default()
        };
        match self.chat(name, params, false).await {
            Ok(mut warm) => {
                if let Err(e) = warm.finish().await {
                    tracing::debug!(model = name, error = %e, "warming the prompt cache failed");
                }
            }
            Err(e) => tracing::debug!(model = name, error = %e, "warming the prompt cache failed"),
        }
    }

    /// Detach `name` (its memory returns when no sequence uses it).
    pub async fn remove(&self, name: &str) {
        self.derived.unroute(name).await;
        self.base.remove(name).await;
    }

    /// The engine serving `name`.
    fn serving(&self, name: &str) -> Arc<BaseEngine> {
        self.derived
            .serving(name)
            .unwrap_or_else(|| self.base.clone())
    }

    /// Start a chat generation. Dropping the [`Generation`] cancels it.
    pub async fn chat(
        &self,
        name: &str,
        params: ChatParams,
        stream: bool,
    ) -> Result<Generation, ServeError> {
        self.serving(name).chat(name, params, stream).await
    }

    /// Start a legacy completion of `prompt`.
    pub async fn complete(
        &self,
        name: &str,
        prompt: String,
        params: ChatParams,
        stream: bool,
    ) -> Result<Generation, ServeError> {
        self.serving(name)
            .complete(name, prompt, params, stream)
            .await
    }

    /// Prompt tokens of a chat request, rendered as [`LlamaEngine::chat`] renders it.
    pub async fn prompt_tokens(&self, name: &str, params: &ChatParams) -> Option<usize> {
        self.base.prompt_tokens(name, params).await
    }

    /// Tokens of a legacy completion prompt.
    pub async fn text_tokens(&self, name: &str, prompt: &str) -> Option<usize> {
        self.base.text_tokens(name, prompt).await
    }

    /// The last position's logits of each row's tokens on its model, the rows decoded together
    /// in one batch (parity checks against the trainer's forward). The rows' models share one
    /// base.
    pub async fn logits(&self, rows: Vec<(String, Vec<u32>)>) -> Result<Vec<Vec<f32>>, ServeError> {
        let Some((first, _)) = rows.first() else {
            return Err(ServeError::Invalid("no rows".to_owned()));
        };
        let engine = self.serving(first);
        if rows
            .iter()
            .any(|(name, _)| !Arc::ptr_eq(&self.serving(name), &engine))
        {
            return Err(ServeError::Invalid(
                "rows decoded together must share a base".to_owned(),
            ));
        }
        engine.logits(rows).await
    }

    /// Fault injection for tests: drop every generation in flight.
    pub async fn stop_engine_thread(&self, name: &str) -> Result<(), ServeError> {
        self.serving(name).stop_engine_thread(name).await
    }
}
