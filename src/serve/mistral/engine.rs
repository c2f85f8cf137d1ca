//! The mistral.rs engine: a runner on its own multi-threaded runtime (actix workers are
//! single-threaded), the base model always resident, other models added on demand and evicted
//! least-recently-used first. One load per model at a time; concurrent requests wait for it.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mistralrs::core::{
    AddModelConfig, EngineConfig, MessageContent, Request, Response, TokenSource,
};
use mistralrs::{Model, ModelDType, TextModelBuilder};
use tokio::sync::mpsc;

use super::fan_in::fan_in;
use super::loader::{LoadOptions, load_with_adapter};
use super::request::{completion_request, engine_messages, engine_tools, normal_request};
use super::translate::translate;
use crate::serve::generation::{Active, Shape};
use crate::serve::{ChatParams, Generation, ServeError};

/// How the mistral.rs engine runs.
#[derive(Debug, Clone)]
pub struct MistralOptions {
    /// The base model directory.
    pub base_dir: PathBuf,
    /// The base model's public name.
    pub base_name: String,
    /// Most non-base models kept loaded at once.
    pub max_resident: usize,
    /// Sequences batched together per model.
    pub max_num_seqs: usize,
    /// Weights dtype (`f32` on CPU).
    pub dtype: ModelDType,
    /// Run on the CPU even when a GPU is available.
    pub force_cpu: bool,
    /// Quantize every served model after loading (`--serve-quant`).
    pub isq: Option<mistralrs::IsqType>,
    /// Paged attention with this many KV-cache tokens per resident model (`None`: off).
    pub paged_kv_tokens: Option<usize>,
    /// Keep mistral.rs's prefix cache (finished sequences' KV caches, reused by a prompt that
    /// extends one; 16 per model). Only on a GPU: mistral.rs 0.8.1 evicts only caches held on a
    /// GPU, so on the CPU it keeps every finished sequence's KV cache and memory grows with
    /// every request (BENCHMARKS.md, "Prefix cache on the CPU").
    pub prefix_cache: bool,
}

/// The mistral.rs engine.
pub struct MistralEngine {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    model: Arc<Model>,
    options: MistralOptions,
    /// Loaded non-base models, least recently used first.
    resident: Mutex<Vec<String>>,
    /// The adapter directory each resident model was loaded from.
    dirs: Mutex<HashMap<String, PathBuf>>,
    /// One lock per model name, so a model loads once however many requests want it.
    loading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Adapter loads so far.
    loads: std::sync::atomic::AtomicU64,
    /// Generations whose receiver is still held, per model: a model in use is not evicted.
    active: Active,
    /// Tokens of prompt plus completion the base model (and so each fine-tune) can attend to.
    context_len: usize,
    /// Whether the base model's chat template renders `tools` itself.
    template_tools: bool,
}

impl Drop for MistralEngine {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn engine_err(e: impl std::fmt::Display) -> ServeError {
    ServeError::Engine(e.to_string())
}

impl MistralEngine {
    /// Start the runner with the base model loaded.
    pub async fn start(options: MistralOptions) -> Result<Self, ServeError> {
        let context_len = crate::model_dir::Config::load(&options.base_dir)
            .map_err(|e| ServeError::Load {
                model: options.base_name.clone(),
                reason: e.to_string(),
            })?
            .max_position_embeddings;
        // Fine-tunes share the base's template, so one answer serves every model.
        let template_tools =
            crate::model_dir::template::ChatTemplate::from_model_dir(&options.base_dir)
                .is_ok_and(|t| t.handles_tools());
        let paged = options
            .paged_kv_tokens
            .map(crate::serve::paged::config)
            .transpose()?;
        if let Some(tokens) = options.paged_kv_tokens {
            let mib = crate::serve::paged::kv_cache_mib(&options.base_dir, options.dtype, tokens);
            tracing::info!(
                tokens,
                mib,
                "paged attention: KV cache reserved per resident model"
            );
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("mistralrs")
            .enable_all()
            .build()
            .map_err(engine_err)?;
        let handle = runtime.handle().clone();
        let dir = options.base_dir.display().to_string();
        let (max_seqs, dtype, force_cpu) = (options.max_num_seqs, options.dtype, options.force_cpu);
        let prefix_cache = options.prefix_cache;
        let isq = options.isq;
        // On failure the runtime must not be dropped in this async context (tokio panics).
        let fail = |runtime: tokio::runtime::Runtime, e: ServeError| {
            runtime.shutdown_background();
            Err(e)
        };
        let model = handle
            .spawn(async move {
                let mut builder = TextModelBuilder::new(dir)
                    .with_token_source(TokenSource::None)
                    .with_dtype(dtype)
                    .with_max_num_seqs(max_seqs);
                if force_cpu {
                    builder = builder.with_force_cpu();
                }
                if !prefix_cache {
                    builder = builder.with_prefix_cache_n(None);
                }
                if let Some(isq) = isq {
                    builder = builder.with_isq(isq);
                }
                if let Some(paged) = paged {
                    builder = builder.with_paged_attn(paged);
                }
                builder.build().await
            })
            .await;
        let model = match model {
            Ok(Ok(model)) => model,
            Ok(Err(e)) => {
                let reason = format!("{e:#}");
                let model = options.base_name.clone();
                return fail(runtime, ServeError::Load { model, reason });
            }
            Err(e) => return fail(runtime, engine_err(e)),
        };
        let base_id = match model.get_default_model_id() {
            Ok(Some(id)) => id,
            Ok(None) => return fail(runtime, engine_err("the engine has no default model")),
            Err(e) => return fail(runtime, engine_err(e)),
        };
        if base_id != options.base_name
            && let Err(e) = model
                .inner()
                .register_model_alias(options.base_name.clone(), &base_id)
        {
            return fail(runtime, engine_err(e));
        }
        Ok(Self {
            runtime: Some(runtime),
            handle,
            model: Arc::new(model),
            options,
            resident: Mutex::new(Vec::new()),
            dirs: Mutex::new(HashMap::new()),
            loading: Mutex::new(HashMap::new()),
            loads: std::sync::atomic::AtomicU64::new(0),
            active: Arc::new(Mutex::new(HashMap::new())),
            context_len,
            template_tools,
        })
    }

    /// Prompt plus completion tokens a model can hold (`max_position_embeddings`).
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

    /// How many adapter models were loaded since start.
    pub fn loads(&self) -> u64 {
        self.loads.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Names of the loaded non-base models, least recently used first.
    pub fn resident(&self) -> Vec<String> {
        self.resident.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// `name` is resident, loaded from `dir` (and now the most recently used).
    fn resident_from(&self, name: &str, dir: &Path) -> bool {
        let same = self
            .dirs
            .lock()
            .map(|d| d.get(name).is_some_and(|p| p == dir))
            .unwrap_or(false);
        same && self.touch(name)
    }

    fn touch(&self, name: &str) -> bool {
        let Ok(mut r) = self.resident.lock() else {
            return false;
        };
        match r.iter().position(|n| n == name) {
            Some(i) => {
                let n = r.remove(i);
                r.push(n);
                true
            }
            None => false,
        }
    }

    /// Make `name` (the base with `adapter_dir` merged) resident, loading it once if needed and
    /// evicting the least recently used model beyond the budget.
    /// A model resident from another directory (a job published by another worker after a
    /// fenced one prepared it) is loaded again from `adapter_dir`.
    pub async fn ensure_loaded(&self, name: &str, adapter_dir: &Path) -> Result<(), ServeError> {
        if name == self.options.base_name || self.resident_from(name, adapter_dir) {
            return Ok(());
        }
        let lock = {
            let mut map = self.loading.lock().map_err(engine_err)?;
            map.entry(name.to_owned()).or_default().clone()
        };
        let _guard = lock.lock().await;
        if self.resident_from(name, adapter_dir) {
            return Ok(());
        }
        if self.resident().iter().any(|n| n == name) {
            self.remove(name).await;
        }
        let started = std::time::Instant::now();
        let metrics = crate::metrics::global();
        let loading = crate::metrics::LoadingGuard::start();
        let loaded = self.load(name, adapter_dir).await;
        drop(loading);
        let outcome = if loaded.is_ok() { "loaded" } else { "failed" };
        metrics
            .adapter_load
            .with_label_values(&[outcome])
            .observe(started.elapsed().as_secs_f64());
        loaded?;
        if let Ok(mut dirs) = self.dirs.lock() {
            dirs.insert(name.to_owned(), adapter_dir.to_owned());
        }
        self.loads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(
            model = name,
            ms = started.elapsed().as_millis() as u64,
            "model loaded"
        );
        let evict = {
            let mut r = self.resident.lock().map_err(engine_err)?;
            r.push(name.to_owned());
            metrics.models_resident.set(r.len() as i64);
            let busy = self.active.lock().map_err(engine_err)?;
            let mut excess = r.len().saturating_sub(self.options.max_resident.max(1));
            // Least recently used first, skipping models with generations in flight (the budget
            // is exceeded briefly rather than cutting a stream off).
            let mut evict = Vec::new();
            for candidate in r.iter().filter(|n| n.as_str() != name) {
                if excess == 0 {
                    break;
                }
                if busy.get(candidate).copied().unwrap_or(0) == 0 {
                    evict.push(candidate.clone());
                    excess -= 1;
                }
            }
            r.retain(|n| !evict.contains(n));
            evict
        };
        for old in evict {
            self.remove(&old).await;
        }
        Ok(())
    }

    /// Load the base with `adapter_dir` merged and add it to the runner as `name`.
    async fn load(&self, name: &str, adapter_dir: &Path) -> Result<(), ServeError> {
        let (base, adapter, id) = (
            self.options.base_dir.clone(),
            adapter_dir.to_owned(),
            name.to_owned(),
        );
        let how = LoadOptions {
            dtype: self.options.dtype,
            force_cpu: self.options.force_cpu,
            isq: self.options.isq,
            paged_kv_tokens: self.options.paged_kv_tokens,
        };
        let pipeline = self
            .handle
            .spawn_blocking(move || load_with_adapter(&base, &adapter, &id, how))
            .await
            .map_err(engine_err)??;
        let model = self.model.clone();
        let id = name.to_owned();
        let seqs = self.options.max_num_seqs;
        let config = EngineConfig {
            no_prefix_cache: !self.options.prefix_cache,
            ..EngineConfig::default()
        };
        self.handle
            .spawn(async move {
                let scheduler = crate::serve::paged::scheduler(&pipeline, seqs).await;
                model
                    .add_model(id, pipeline, scheduler, AddModelConfig::new(config))
                    .await
            })
            .await
            .map_err(engine_err)?
            .map_err(|e| ServeError::Load {
                model: name.to_owned(),
                reason: e.to_string(),
            })
    }

    /// Unload `name` if resident (the engine refuses async-thread removal: a blocking thread).
    pub async fn remove(&self, name: &str) {
        if let Ok(mut dirs) = self.dirs.lock() {
            dirs.remove(name);
        }
        if let Ok(mut r) = self.resident.lock() {
            r.retain(|n| n != name);
            crate::metrics::global().models_resident.set(r.len() as i64);
        }
        let model = self.model.clone();
        let id = name.to_owned();
        let removed = self
            .handle
            .spawn_blocking(move || model.remove_model(&id))
            .await;
        match removed {
            Ok(Ok(())) => tracing::info!(model = name, "model evicted"),
            Ok(Err(e)) => tracing::debug!(model = name, error = %e, "model was not loaded"),
            Err(e) => tracing::warn!(model = name, error = %e, "evicting a model failed"),
        }
    }

    /// Start a chat generation on a resident model; responses arrive on the returned channel.
    /// Dropping the receiver cancels the generation.
    pub async fn chat(
        &self,
        name: &str,
        params: ChatParams,
        stream: bool,
    ) -> Result<Generation, ServeError> {
        let template_tools = self.template_tools;
        let shape = Shape::of(&params, stream, false);
        self.submit(name, params, shape, |p, tx| {
            normal_request(p, tx, stream, name, template_tools)
        })
        .await
    }

    /// Start a legacy completion of `prompt` on a resident model (sampling from `params`).
    pub async fn complete(
        &self,
        name: &str,
        prompt: String,
        params: ChatParams,
        stream: bool,
    ) -> Result<Generation, ServeError> {
        let shape = Shape::of(&params, stream, true);
        self.submit(name, params, shape, |p, tx| {
            completion_request(prompt.clone(), &p, tx, stream, name)
        })
        .await
    }

    /// Send `request` to `name`'s engine. mistral.rs reboots an engine whose thread died (a
    /// panic inside it, seen under heavy concurrent batching on the CPU) when a sender is asked
    /// for, so a send that finds the channel closed is tried again with a fresh sender.
    /// Returns the sender that took it.
    async fn send(
        &self,
        name: &str,
        mut request: Request,
    ) -> Result<mpsc::Sender<Request>, ServeError> {
        for attempt in 0..3u32 {
            let sender =
                self.model
                    .inner()
                    .get_sender(Some(name))
                    .map_err(|e| ServeError::Load {
                        model: name.to_owned(),
                        reason: e.to_string(),
                    })?;
            match sender.send(request).await {
                Ok(()) => return Ok(sender),
                Err(returned) => request = returned.0,
            }
            tracing::warn!(
                model = name,
                attempt,
                "the engine's channel closed: sending again"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50 << attempt)).await;
        }
        Err(ServeError::Load {
            model: name.to_owned(),
            reason: "its engine stopped and did not restart; try again".to_owned(),
        })
    }

    /// Send the request `build` makes — one per choice when `n > 1`, merged by [`fan_in`] so
    /// each choice's tokens are counted — and translate its responses into events.
    async fn submit(
        &self,
        name: &str,
        params: ChatParams,
        shape: Shape,
        build: impl Fn(ChatParams, mpsc::Sender<Response>) -> mistralrs::core::NormalRequest,
    ) -> Result<Generation, ServeError> {
        let n = params.n.max(1);
        let (tx, rx) = mpsc::channel(64);
        let engine = if n == 1 {
            let request = build(params, tx);
            self.send(name, Request::Normal(Box::new(request))).await?
        } else {
            let mut subs = Vec::with_capacity(n);
            let mut engine = None;
            for _ in 0..n {
                let (sub_tx, sub_rx) = mpsc::channel(64);
                let one = ChatParams {
                    n: 1,
                    ..params.clone()
                };
                let request = Request::Normal(Box::new(build(one, sub_tx)));
                engine = Some(self.send(name, request).await?);
                subs.push(sub_rx);
            }
            self.handle.spawn(fan_in(subs, tx));
            engine.expect("n > 1 requests were sent")
        };
        let (events, receiver) = mpsc::unbounded_channel();
        self.handle.spawn(translate(rx, events, engine, n));
        Generation::new(receiver, name, self.active.clone(), shape)
    }

    /// Fault injection for tests: stop `name`'s engine thread as a panic inside mistral.rs does,
    /// dropping its generations in flight; mistral.rs starts it again on the next request.
    #[doc(hidden)]
    pub async fn stop_engine_thread(&self, name: &str) -> Result<(), ServeError> {
        let sender = self.model.inner().get_sender(Some(name));
        let sender = sender.map_err(engine_err)?;
        sender.send(Request::Terminate).await.map_err(engine_err)
    }

    /// Prompt tokens of a request on model `name` (the engine's own template and tokenizer, the
    /// messages rendered exactly as [`Engine::chat`] sends them).
    pub async fn prompt_tokens(&self, name: &str, params: &ChatParams) -> Option<usize> {
        let messages = either::Either::Left(engine_messages(params, self.template_tools));
        self.count_tokens(name, messages, engine_tools(params))
            .await
    }

    /// Tokens of a legacy completion prompt on model `name`, as the engine encodes it.
    pub async fn text_tokens(&self, name: &str, prompt: &str) -> Option<usize> {
        let text = either::Either::Right(prompt.to_owned());
        self.count_tokens(name, text, None).await
    }

    async fn count_tokens(
        &self,
        name: &str,
        text: either::Either<Vec<indexmap::IndexMap<String, MessageContent>>, String>,
        tools: Option<Vec<mistralrs::Tool>>,
    ) -> Option<usize> {
        let (tx, mut rx) = mpsc::channel(1);
        let request = Request::Tokenize(mistralrs::core::TokenizationRequest {
            text,
            tools,
            add_generation_prompt: true,
            add_special_tokens: true,
            enable_thinking: None,
            reasoning_effort: None,
            response: tx,
        });
        let sender = self.model.inner().get_sender(Some(name)).ok()?;
        sender.send(request).await.ok()?;
        rx.recv().await?.ok().map(|ids| ids.len())
    }

    /// Generations in progress.
    pub fn active_generations(&self) -> usize {
        self.active.lock().map(|m| m.values().sum()).unwrap_or(0)
    }

    /// Load `name` now if the resident budget has room (a job just succeeded); otherwise it
    /// loads on its first request.
    pub async fn preload(&self, name: &str, adapter_dir: &Path) {
        let room = self
            .resident
            .lock()
            .map(|r| r.len() < self.options.max_resident)
            .unwrap_or(false);
        if !room {
            return;
        }
        if let Err(e) = self.ensure_loaded(name, adapter_dir).await {
            tracing::warn!(model = name, error = %e, "preloading a fine-tuned model failed");
        }
    }
}
