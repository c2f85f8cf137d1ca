//! Derived bases: an adapter trained with QLoRA over a dense base learned against the base after
//! a quantization round trip (nf4, q4_0 …), so it is served over those weights — the base as
//! that round trip left it, written as GGUF by [`super::DeriveBase`] and loaded once per format,
//! with its own engine thread — not over the dense base it would drift on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::base::BaseEngine;
use super::{LlamaOptions, engine_err};
use crate::model_dir::quant::Quantization;
use crate::serve::ServeError;

/// The derived bases started so far and which model names each serves.
pub(super) struct DerivedBases {
    /// The base engine's options, which derived engines share but for the GGUF.
    options: LlamaOptions,
    /// Started engines by format label.
    started: Mutex<HashMap<String, Arc<BaseEngine>>>,
    /// One start at a time: a format's base is derived and loaded once.
    starting: tokio::sync::Mutex<()>,
    /// Model name → the derived engine serving it.
    routes: Mutex<HashMap<String, Arc<BaseEngine>>>,
}

impl DerivedBases {
    /// None started yet.
    pub fn new(options: &LlamaOptions) -> Self {
        Self {
            options: options.clone(),
            started: Mutex::new(HashMap::new()),
            starting: tokio::sync::Mutex::new(()),
            routes: Mutex::new(HashMap::new()),
        }
    }

    /// The engines started so far.
    pub fn engines(&self) -> Vec<Arc<BaseEngine>> {
        self.started
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default()
    }

    fn started(&self, label: &str) -> Option<Arc<BaseEngine>> {
        self.started.lock().ok()?.get(label).cloned()
    }

    /// The engine over the base as `how` leaves it, started (and its base written) on first use
    /// by `name`.
    pub async fn engine(
        &self,
        name: &str,
        how: Quantization,
    ) -> Result<Arc<BaseEngine>, ServeError> {
        let label = how.label();
        if let Some(e) = self.started(&label) {
            return Ok(e);
        }
        let _one = self.starting.lock().await;
        if let Some(e) = self.started(&label) {
            return Ok(e);
        }
        let refused = |reason: String| ServeError::Load {
            model: name.to_owned(),
            reason,
        };
        let Some(derive) = self.options.derive_base.clone() else {
            return Err(refused(format!(
                "it trained over the base as a {label} round trip leaves it, and this server \
                 cannot derive that base"
            )));
        };
        let gguf = tokio::task::spawn_blocking(move || (derive.0)(how))
            .await
            .map_err(engine_err)?
            .map_err(|e| refused(format!("deriving the {label} base it trained on: {e}")))?;
        let options = LlamaOptions {
            base_gguf: gguf.path.clone(),
            kv_f32: gguf.f32,
            // Room for one sequence of the whole context; the cache grows no further.
            kv_tokens: 0,
            derive_base: None,
            ..self.options.clone()
        };
        let engine = Arc::new(BaseEngine::start(options).await?);
        tracing::info!(
            format = %label,
            gguf = %gguf.path.display(),
            "derived base loaded once, for the adapters trained on it"
        );
        self.started
            .lock()
            .map_err(engine_err)?
            .insert(label, engine.clone());
        Ok(engine)
    }

    /// Serve `name` from `engine` (detaching it from another derived base it was on); whether
    /// that is new.
    pub async fn route(&self, name: &str, engine: &Arc<BaseEngine>) -> bool {
        let old = match self.routes.lock() {
            Ok(mut routes) => routes.insert(name.to_owned(), engine.clone()),
            Err(_) => return false,
        };
        match old {
            Some(o) if Arc::ptr_eq(&o, engine) => false,
            Some(o) => {
                o.remove(name).await;
                true
            }
            None => true,
        }
    }

    /// Stop serving `name` from a derived base (and detach it there).
    pub async fn unroute(&self, name: &str) {
        let old = self.routes.lock().ok().and_then(|mut r| r.remove(name));
        if let Some(engine) = old {
            engine.remove(name).await;
        }
    }

    /// The derived engine serving `name`, if one does.
    pub fn serving(&self, name: &str) -> Option<Arc<BaseEngine>> {
        self.routes.lock().ok()?.get(name).cloned()
    }

    /// The model names served from derived bases.
    pub fn routed(&self) -> Vec<String> {
        self.routes
            .lock()
            .map(|r| r.keys().cloned().collect())
            .unwrap_or_default()
    }
}
