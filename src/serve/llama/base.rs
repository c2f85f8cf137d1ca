//! One base model served by llama.cpp: its GGUF loaded once, fine-tunes attached to it as LoRA
//! adapters, and the engine thread ([`super::runner`]) that batches requests continuously.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use llama_cpp_2::context::params::KvCacheType;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use tokio::sync::{mpsc, oneshot};

use super::context::{Context, Params};
use super::runner::{Command, Job, Runner, SPARE, Sizing};
use super::{LlamaOptions, backend, engine_err};
use crate::model_dir::template::ChatTemplate;
use crate::serve::generation::{Active, Shape};
use crate::serve::{ChatParams, Generation, ServeError};

/// A model name's adapter: where it was loaded from and the LoRA GGUF the engine thread holds.
#[derive(Debug, Clone, PartialEq)]
struct Attached {
    dir: PathBuf,
    gguf: PathBuf,
}

impl Attached {
    /// The engine thread's key for the adapter.
    fn key(&self) -> String {
        self.gguf.display().to_string()
    }
}

/// One base model and the adapters attached to it.
pub struct BaseEngine {
    commands: std::sync::mpsc::Sender<Command>,
    options: LlamaOptions,
    template: ChatTemplate,
    context_len: usize,
    /// Attached adapters by model name.
    adapters: Mutex<HashMap<String, Attached>>,
    /// One lock per model name, so an adapter loads once however many requests want it.
    loading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    loads: AtomicU64,
    active: Active,
}

impl BaseEngine {
    /// Load the base GGUF and start the engine thread.
    pub async fn start(options: LlamaOptions) -> Result<Self, ServeError> {
        let load_err = |reason: String| ServeError::Load {
            model: options.base_name.clone(),
            reason,
        };
        let config = crate::model_dir::Config::load(&options.base_dir)
            .map_err(|e| load_err(e.to_string()))?;
        let template =
            ChatTemplate::from_model_dir(&options.base_dir).map_err(|e| load_err(e.to_string()))?;
        let context_len = config.max_position_embeddings;
        let sizing = Sizing {
            kv_tokens: kv_tokens(&options, context_len),
            slots: options.slots.max(1),
            batch: 512,
            context_len,
        };
        let (ready_tx, ready_rx) = oneshot::channel();
        let (commands, rx) = std::sync::mpsc::channel();
        let (path, threads) = (options.base_gguf.clone(), options.threads.max(1));
        // An f32 model is served exactly: f32 KV cache and plain attention (llama.cpp's flash
        // attention on the CPU rounds the query to f16).
        let (kv_type, flash) = if options.kv_f32 {
            (
                KvCacheType::F32,
                llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_DISABLED,
            )
        } else {
            (
                KvCacheType::F16,
                llama_cpp_sys_2::LLAMA_FLASH_ATTN_TYPE_AUTO,
            )
        };
        std::thread::Builder::new()
            .name("llama.cpp".into())
            .spawn(move || {
                let started = (|| {
                    let backend = backend()?;
                    let model =
                        LlamaModel::load_from_file(backend, &path, &LlamaModelParams::default())
                            .map_err(|e| ServeError::Invalid(format!("{}: {e}", path.display())))?;
                    let model = Box::into_raw(Box::new(model));
                    let params = Params {
                        kv_tokens: sizing.kv_tokens,
                        batch: sizing.batch,
                        sequences: sizing.slots + SPARE,
                        kv_type,
                        flash_attention: flash,
                        threads,
                    };
                    // SAFETY: `model` was just leaked from a box; it is freed by the runner,
                    // after the context (see `Runner::new`).
                    let ctx = Context::new(unsafe { &*model }, &params);
                    match ctx {
                        // SAFETY: as above; the runner owns both from here.
                        Ok(ctx) => Ok(unsafe { Runner::new(model, ctx, sizing) }),
                        Err(e) => {
                            // SAFETY: nothing borrows the model; it is freed once.
                            drop(unsafe { Box::from_raw(model) });
                            Err(ServeError::Engine(format!("llama.cpp context: {e}")))
                        }
                    }
                })();
                match started {
                    Ok(runner) => {
                        let _ = ready_tx.send(Ok(()));
                        runner.run(rx);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .map_err(engine_err)?;
        ready_rx
            .await
            .map_err(|_| load_err("the engine thread ended while loading".to_owned()))?
            .map_err(|e| load_err(e.to_string()))?;
        tracing::info!(
            gguf = %options.base_gguf.display(),
            kv_tokens = kv_tokens(&options, context_len),
            "llama.cpp engine started"
        );
        Ok(Self {
            commands,
            options,
            template,
            context_len,
            adapters: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            loads: AtomicU64::new(0),
            active: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// Prompt plus completion tokens a model can hold.
    pub fn context_len(&self) -> usize {
        self.context_len
    }

    /// The base model's public name.
    pub fn base_name(&self) -> &str {
        &self.options.base_name
    }

    /// The base model's directory.
    pub fn base_dir(&self) -> &Path {
        &self.options.base_dir
    }

    /// Adapter loads so far.
    pub fn loads(&self) -> u64 {
        self.loads.load(Ordering::Relaxed)
    }

    /// The attached adapters' model names, sorted.
    pub fn resident(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .adapters
            .lock()
            .map(|a| a.keys().cloned().collect())
            .unwrap_or_default();
        names.sort();
        names
    }

    /// Generations in progress.
    pub fn active_generations(&self) -> usize {
        self.active.lock().map(|m| m.values().sum()).unwrap_or(0)
    }

    fn send(&self, command: Command) -> Result<(), ServeError> {
        self.commands
            .send(command)
            .map_err(|_| ServeError::Engine("the llama.cpp engine thread stopped".to_owned()))
    }

    /// Attach the adapter in `adapter_dir` as `name`, converting it to a LoRA GGUF once.
    /// A name attached from another directory (a job published by another worker after this
    /// one prepared it, a runtime adapter reloaded from elsewhere) is loaded again from
    /// `adapter_dir`.
    pub async fn ensure_loaded(&self, name: &str, adapter_dir: &Path) -> Result<(), ServeError> {
        if name == self.options.base_name || self.is_loaded(name, adapter_dir) {
            return Ok(());
        }
        let lock = {
            let mut map = self.loading.lock().map_err(engine_err)?;
            map.entry(name.to_owned()).or_default().clone()
        };
        let _guard = lock.lock().await;
        if self.is_loaded(name, adapter_dir) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let loading = crate::metrics::LoadingGuard::start();
        let loaded = self.load(name, adapter_dir).await;
        drop(loading);
        let outcome = if loaded.is_ok() { "loaded" } else { "failed" };
        crate::metrics::global()
            .adapter_load
            .with_label_values(&[outcome])
            .observe(started.elapsed().as_secs_f64());
        let attached = Attached {
            dir: adapter_dir.to_owned(),
            gguf: loaded?,
        };
        self.loads.fetch_add(1, Ordering::Relaxed);
        let replaced = {
            let mut a = self.adapters.lock().map_err(engine_err)?;
            let replaced = a.insert(name.to_owned(), attached);
            crate::metrics::global().models_resident.set(a.len() as i64);
            replaced
        };
        if let Some(old) = replaced {
            self.release(&old);
        }
        tracing::info!(
            model = name,
            ms = started.elapsed().as_millis() as u64,
            "adapter attached to the shared base"
        );
        Ok(())
    }

    /// `name` is attached, from `dir`.
    pub(super) fn is_loaded(&self, name: &str, dir: &Path) -> bool {
        self.adapters
            .lock()
            .map(|a| a.get(name).is_some_and(|x| x.dir == dir))
            .unwrap_or(false)
    }

    /// Tell the engine thread to free `old`'s adapter unless another name still serves it.
    fn release(&self, old: &Attached) {
        let shared = self
            .adapters
            .lock()
            .map(|a| a.values().any(|x| x.gguf == old.gguf))
            .unwrap_or(true);
        if !shared {
            let _ = self.send(Command::Remove { key: old.key() });
        }
    }

    /// Convert (once, cached by the adapter's content stamp) and attach.
    async fn load(&self, name: &str, adapter_dir: &Path) -> Result<PathBuf, ServeError> {
        let (dir, base, cache) = (
            adapter_dir.to_owned(),
            self.options.base_dir.clone(),
            self.options.adapter_cache.clone(),
        );
        let model = name.to_owned();
        let gguf = tokio::task::spawn_blocking(move || adapter_gguf(&dir, &base, &cache))
            .await
            .map_err(engine_err)?
            .map_err(|reason| ServeError::Load { model, reason })?;
        let (reply, answer) = oneshot::channel();
        self.send(Command::Load {
            name: name.to_owned(),
            key: gguf.display().to_string(),
            path: gguf.clone(),
            reply,
        })?;
        answer.await.map_err(engine_err)??;
        Ok(gguf)
    }

    /// Detach `name` (its memory returns when no sequence uses it).
    pub async fn remove(&self, name: &str) {
        let removed = self
            .adapters
            .lock()
            .map(|mut a| {
                let removed = a.remove(name);
                crate::metrics::global().models_resident.set(a.len() as i64);
                removed
            })
            .unwrap_or(None);
        if let Some(old) = removed {
            self.release(&old);
            tracing::info!(model = name, "adapter detached");
        }
    }

    fn adapter_of(&self, name: &str) -> Result<Option<String>, ServeError> {
        if name == self.options.base_name {
            return Ok(None);
        }
        let attached = self.adapters.lock().map_err(engine_err)?.get(name).cloned();
        if let Some(a) = attached {
            return Ok(Some(a.key()));
        }
        Err(ServeError::Load {
            model: name.to_owned(),
            reason: "it is not loaded".to_owned(),
        })
    }

    /// The chat prompt of `params` as the model sees it.
    fn render(&self, params: &ChatParams) -> Result<String, ServeError> {
        let turns = params.template_turns();
        let offered = params
            .tools
            .as_ref()
            .map(|t| (t.tools.as_slice(), t.parallel));
        self.template
            .render_conversation(&turns, offered, true)
            .map_err(|e| ServeError::Invalid(e.to_string()))
    }

    /// Start a chat generation. Dropping the [`Generation`] cancels it.
    pub async fn chat(
        &self,
        name: &str,
        params: ChatParams,
        stream: bool,
    ) -> Result<Generation, ServeError> {
        let prompt = self.render(&params)?;
        let forced = params.tools.is_some() && params.output_schema().is_some();
        let read_calls = params.tools.is_some() && !forced;
        let shape = Shape::of(&params, stream, false);
        self.submit(name, prompt, params, shape, read_calls, forced)
    }

    /// Start a legacy completion of `prompt`.
    pub async fn complete(
        &self,
        name: &str,
        prompt: String,
        params: ChatParams,
        stream: bool,
    ) -> Result<Generation, ServeError> {
        let shape = Shape::of(&params, stream, true);
        self.submit(name, prompt, params, shape, false, false)
    }

    fn submit(
        &self,
        name: &str,
        prompt: String,
        params: ChatParams,
        shape: Shape,
        read_calls: bool,
        forced_calls: bool,
    ) -> Result<Generation, ServeError> {
        let adapter = self.adapter_of(name)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let seed = params.seed.unwrap_or_else(rand::random) as u32;
        self.send(Command::Generate(Box::new(Job {
            adapter,
            prompt,
            params,
            read_calls,
            forced_calls,
            tx,
            seed,
        })))?;
        Generation::new(rx, name, self.active.clone(), shape)
    }

    async fn count(&self, text: String) -> Option<usize> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Tokenize { text, reply }).ok()?;
        answer.await.ok()
    }

    /// Prompt tokens of a chat request, rendered as [`BaseEngine::chat`] renders it.
    pub async fn prompt_tokens(&self, _name: &str, params: &ChatParams) -> Option<usize> {
        let prompt = self.render(params).ok()?;
        self.count(prompt).await
    }

    /// Tokens of a legacy completion prompt.
    pub async fn text_tokens(&self, _name: &str, prompt: &str) -> Option<usize> {
        self.count(prompt.to_owned()).await
    }

    /// The last position's logits of each row's tokens on its model, the rows decoded together
    /// in one batch (parity checks against the trainer's forward).
    pub async fn logits(&self, rows: Vec<(String, Vec<u32>)>) -> Result<Vec<Vec<f32>>, ServeError> {
        let mut named = Vec::with_capacity(rows.len());
        for (name, tokens) in rows {
            named.push((self.adapter_of(&name)?, tokens));
        }
        let (reply, answer) = oneshot::channel();
        self.send(Command::Logits { rows: named, reply })?;
        answer.await.map_err(engine_err)?
    }

    /// Fault injection for tests: drop every generation in flight.
    pub async fn stop_engine_thread(&self, _name: &str) -> Result<(), ServeError> {
        self.send(Command::DropAll)
    }
}

/// KV cells: as asked, but always room for one sequence of the whole context (up to 32k).
fn kv_tokens(options: &LlamaOptions, context_len: usize) -> usize {
    options.kv_tokens.max(context_len.min(32_768))
}

/// The LoRA GGUF of the adapter in `dir`, written once into `cache` (keyed by the adapter
/// weights' content stamp).
fn adapter_gguf(dir: &Path, base: &Path, cache: &Path) -> Result<PathBuf, String> {
    let weights = dir.join(crate::model_dir::adapter::WEIGHTS_FILE);
    let stamp = crate::model_dir::file_stamp(&weights)
        .map_err(|e| format!("{}: {e}", weights.display()))?;
    let key = {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(dir.display().to_string().as_bytes());
        h.update(stamp.as_bytes());
        format!("{:x}", h.finalize())
    };
    let out = cache.join(format!("{}.gguf", &key[..24]));
    if out.exists() {
        return Ok(out);
    }
    std::fs::create_dir_all(cache).map_err(|e| format!("{}: {e}", cache.display()))?;
    crate::model_dir::lora_gguf::write(dir, base, &out).map_err(|e| e.to_string())?;
    Ok(out)
}
