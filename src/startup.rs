//! Wiring: database (embedded or external), migrations, the HTTP server and the worker.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle, Service};
use actix_web::{HttpServer, web};
use anyhow::Context as _;
use sqlx::Connection;
use tokio_util::sync::CancellationToken;
use tracing_actix_web::TracingLogger;

use crate::api::{self, ApiState, auth::Auth};
use crate::config::{BaseModelSource, ModelSettings, Settings, StorageSettings, WorkerOptions};
use crate::embedded_postgres::EmbeddedPostgres;
use crate::export::cache::ExportCache;
use crate::serve::{Engine, EngineOptions, LlamaOptions, MistralOptions};
use crate::store::Store;
use crate::store::blobs::BlobStore;
use crate::store::remote::Remote;
use crate::worker::candle_trainer::CandleTrainer;
use crate::worker::{Trainer, Worker, WorkerSettings};

/// Start the serving engine `model.engine` chooses for `device` on the base model.
pub async fn start_engine(
    model: &crate::config::ModelSettings,
    device: &candle_core::Device,
    base_name: &str,
    base_dir: &Path,
) -> anyhow::Result<Arc<Engine>> {
    let paged_kv_tokens = model
        .paged_attention
        .resolve(device, model.kv_cache_tokens)?;
    let options = if model.engine.is_llama(device) {
        if model.paged_attention == crate::config::PagedAttention::On {
            anyhow::bail!(
                "--paged-attention is mistral.rs's (--engine mistralrs); the llama.cpp engine \
                 keeps one KV cache shared by all sequences (--kv-cache-tokens)"
            );
        }
        let cache = crate::model_cache::models_dir();
        let (dir, name) = (base_dir.to_owned(), base_name.to_owned());
        let served = cache.join("served");
        let gguf = tokio::task::spawn_blocking(move || {
            crate::export::served::base_gguf(&dir, &served, &name)
        })
        .await??;
        let derive_base = {
            let (dir, name, models) = (base_dir.to_owned(), base_name.to_owned(), cache.clone());
            crate::serve::DeriveBase(Arc::new(move |how| {
                crate::export::served::derived_base_gguf(&dir, how, &models, &name)
                    .map_err(|e| e.to_string())
            }))
        };
        EngineOptions::Llama(LlamaOptions {
            base_gguf: gguf.path,
            kv_f32: gguf.f32,
            derive_base: Some(derive_base),
            base_dir: base_dir.to_owned(),
            base_name: base_name.to_owned(),
            adapter_cache: cache.join("adapters-gguf"),
            kv_tokens: model.kv_cache_tokens.max(1),
            slots: model.max_sequences.max(1),
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
        })
    } else {
        EngineOptions::Mistral(MistralOptions {
            base_dir: base_dir.to_owned(),
            base_name: base_name.to_owned(),
            max_resident: model.max_resident_models,
            max_num_seqs: 16,
            dtype: crate::config::serving_dtype(model.dtype(device)),
            force_cpu: device.is_cpu(),
            prefix_cache: !device.is_cpu(),
            isq: model.serve_quant.isq(),
            paged_kv_tokens,
        })
    };
    Ok(Engine::start(options).await?)
}

/// Seconds in-flight requests get to finish once the server is told to stop.
pub const SHUTDOWN_GRACE_SECS: u64 = 5;

/// The name of the database ferrotune uses in its embedded cluster.
pub const EMBEDDED_DATABASE: &str = "ferrotune";

/// A migrated database, and the embedded cluster behind it when we started one.
#[derive(Debug)]
pub struct Database {
    /// The store.
    pub store: Store,
    cluster: Option<EmbeddedPostgres>,
}

impl Database {
    /// Connect to `DATABASE_URL`, or start the embedded cluster; then apply migrations.
    pub async fn open(storage: &StorageSettings) -> anyhow::Result<Self> {
        let (url, cluster) = match &storage.database_url {
            Some(url) => (url.clone(), None),
            None => {
                let root = storage.data_dir.join("postgres");
                let cluster =
                    tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&root, false))
                        .await??;
                ensure_database(&cluster.url("postgres"), EMBEDDED_DATABASE).await?;
                (cluster.url(EMBEDDED_DATABASE), Some(cluster))
            }
        };
        let store = Store::connect(&url).await?;
        store.migrate().await?;
        Ok(Self { store, cluster })
    }

    /// Stop the embedded cluster, whether this process started it or adopted one a killed run
    /// left behind, unless another process (a `ferrotune worker` on the same data dir) still
    /// uses it.
    pub async fn close(self) {
        self.store.pool().close().await;
        let Some(cluster) = self.cluster else {
            return;
        };
        if cluster.adopted() {
            // A closed or killed client's backend lingers in pg_stat_activity until it notices:
            // give those a moment to go, while a live worker's connections stay.
            let url = cluster.url("postgres");
            let mut clients = other_clients(&url).await;
            for _ in 0..30 {
                if !matches!(clients, Ok(n) if n > 0) {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                clients = other_clients(&url).await;
            }
            match clients {
                Ok(0) => {}
                Ok(n) => {
                    tracing::info!(
                        clients = n,
                        "leaving the embedded PostgreSQL running for them"
                    );
                    return;
                }
                Err(e) => tracing::warn!(error = ?e, "counting PostgreSQL clients failed"),
            }
        }
        let _ = tokio::task::spawn_blocking(move || cluster.stop()).await;
    }
}

/// Client connections to the cluster of live processes other than this one: ours, and those of
/// a killed ferrotune process (which linger until their backend notices), do not count.
async fn other_clients(admin_url: &str) -> anyhow::Result<i64> {
    let mut conn = sqlx::PgConnection::connect(admin_url).await?;
    let names: Vec<String> = sqlx::query_scalar(
        "select coalesce(application_name, '') from pg_stat_activity \
         where backend_type = 'client backend' and pid <> pg_backend_pid()",
    )
    .fetch_all(&mut conn)
    .await?;
    let ours = crate::store::application_name(std::process::id());
    let counts = |name: &String| match name.strip_prefix("ferrotune/").map(str::parse::<i32>) {
        _ if *name == ours => false,
        Some(Ok(pid)) => nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok(),
        _ => true,
    };
    Ok(names.iter().filter(|n| counts(n)).count() as i64)
}

/// Create database `name` through the admin URL unless it exists.
pub async fn ensure_database(admin_url: &str, name: &str) -> anyhow::Result<()> {
    let mut conn = sqlx::PgConnection::connect(admin_url)
        .await
        .context("connecting to the PostgreSQL admin database")?;
    let exists: bool =
        sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
            .bind(name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        sqlx::query(&format!("create database \"{}\"", name.replace('"', "")))
            .execute(&mut conn)
            .await
            .with_context(|| format!("creating database {name}"))?;
    }
    Ok(())
}

/// The absolute data directory, created if missing.
pub fn prepare_data_dir(storage: &StorageSettings) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(&storage.data_dir)
        .with_context(|| format!("creating data dir {}", storage.data_dir.display()))?;
    Ok(std::path::absolute(&storage.data_dir)?)
}

/// The file store: `<data dir>/files`, and the object store when one is configured (reached
/// once here, so that a wrong URL or endpoint fails at start-up).
pub async fn open_blobs(storage: &StorageSettings) -> anyhow::Result<BlobStore> {
    let remote = storage
        .object_store
        .as_deref()
        .map(Remote::open)
        .transpose()?;
    if let Some(remote) = &remote {
        remote
            .check()
            .await
            .with_context(|| format!("reaching the object store {}", remote.url()))?;
    }
    Ok(BlobStore::open(&storage.data_dir)?.with_remote(remote))
}

/// A worker on `store` reading and writing files through `blobs`, writing job outputs under
/// `jobs/` of their data dir.
pub fn build_worker(
    store: Store,
    blobs: BlobStore,
    options: &WorkerOptions,
    trainer: Arc<dyn Trainer>,
) -> anyhow::Result<Worker> {
    let settings = WorkerSettings {
        poll_interval: options.poll_interval(),
        lease: options.lease(),
        max_lost_leases: options.max_lost_leases,
        jobs_dir: blobs.data_dir().join(crate::store::job_dirs::JOBS),
        sweep_interval: options.sweep_interval(),
    };
    Ok(Worker::new(store, blobs, trainer, settings))
}

/// The base model's name and directory, made ready once at start-up: a named directory as it
/// is, the tiny model generated on first use.
pub fn prepare_base_model(
    model: &ModelSettings,
    data_dir: &std::path::Path,
) -> anyhow::Result<(String, PathBuf)> {
    let source = model.base_model_source(data_dir)?;
    let dir = match &source {
        BaseModelSource::Directory { dir, .. } => dir.clone(),
        BaseModelSource::Catalogue { entry, .. } => crate::model_cache::pull(entry)?,
        BaseModelSource::Gguf { file, .. } => crate::model_cache::import_cached(file)?,
        BaseModelSource::Tiny { dir, .. } => {
            if !dir.join(crate::model_dir::SINGLE_WEIGHTS).exists() {
                crate::train::tiny::init_tiny(dir, crate::train::tiny::TinyArch::Llama, 0)?;
            }
            tracing::warn!(
                dir = %dir.display(),
                "using the generated tiny model '{}'; it has random weights and is only for \
                 trying the API",
                source.name()
            );
            dir.clone()
        }
    };
    Ok((source.name().to_owned(), dir))
}

/// [`prepare_base_model`] on a node with an object store: a `--base-model` naming nothing here
/// (not the tiny model, the catalogue or a path) is fetched from the bucket's `models/<name>/`
/// (shared by the node that prepared it); a base model prepared here is shared there, once.
pub async fn prepare_shared_base_model(
    model: &ModelSettings,
    blobs: &BlobStore,
) -> anyhow::Result<(String, PathBuf)> {
    let mut model = model.clone();
    if let (Some(remote), Some(given)) = (blobs.remote(), model.base_model.clone())
        && !given.exists()
        && model.base_model_source(blobs.data_dir()).is_err()
    {
        let name = given
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dir = blobs.data_dir().join("models").join(&name);
        let prefix = format!("models/{name}");
        let here = dir.join(crate::model_dir::CONFIG).exists();
        // Only a whole model is fetched: `config.json` is shared last.
        let fetched = !here
            && remote
                .exists(&format!("{prefix}/{}", crate::model_dir::CONFIG))
                .await?
            && remote.download_dir(&prefix, &dir).await?;
        if !(here || fetched) {
            anyhow::bail!(
                "--base-model {}: no such model here, in the catalogue, or in the object store \
                 (models/{name}/)",
                given.display()
            );
        }
        model.base_model_name.get_or_insert(name);
        model.base_model = Some(dir);
    }
    let data_dir = blobs.data_dir().to_path_buf();
    let (name, dir) =
        tokio::task::spawn_blocking(move || prepare_base_model(&model, &data_dir)).await??;
    if let Some(remote) = blobs.remote() {
        remote.share_model(&format!("models/{name}"), &dir).await?;
    }
    Ok((name, dir))
}

/// The base model's name and the trainer for it.
pub async fn build_trainer(
    model: &ModelSettings,
    blobs: &BlobStore,
) -> anyhow::Result<(String, Arc<dyn Trainer>)> {
    let (name, dir) = prepare_shared_base_model(model, blobs).await?;
    let device = model.device()?;
    Ok((name.clone(), trainer_for(model, &device, name, dir)?))
}

fn trainer_for(
    model: &ModelSettings,
    device: &candle_core::Device,
    name: String,
    dir: PathBuf,
) -> anyhow::Result<Arc<dyn Trainer>> {
    let models = std::collections::HashMap::from([(name, dir)]);
    let dtype = model.dtype(device);
    tracing::info!(?device, ?dtype, "training device");
    Ok(Arc::new(CandleTrainer::new(models, device.clone(), dtype)))
}

/// Attaches each model a worker is about to publish to `engine` (when the budget has room).
struct Preload(Arc<Engine>);

impl crate::worker::ModelPublication for Preload {
    fn prepare(&self, name: String, dir: PathBuf) -> futures_util::future::BoxFuture<'static, ()> {
        let engine = self.0.clone();
        Box::pin(async move { engine.preload(&name, &dir).await })
    }

    fn withdraw(&self, name: String) -> futures_util::future::BoxFuture<'static, ()> {
        let engine = self.0.clone();
        Box::pin(async move { engine.remove(&name).await })
    }
}

/// A hook that attaches each model a worker is about to publish to `engine`.
pub fn preload_hook(engine: Arc<Engine>) -> crate::worker::ModelReadyHook {
    Arc::new(Preload(engine))
}

/// Stops a running [`Application`].
#[derive(Clone)]
pub struct Stopper {
    server: ServerHandle,
    worker: CancellationToken,
}

impl Stopper {
    /// Stop taking requests, give in-flight ones [`SHUTDOWN_GRACE_SECS`], and stop the worker.
    pub async fn stop(&self) {
        self.worker.cancel();
        self.server.stop(true).await;
    }
}

/// The running service: HTTP server, optional in-process worker, database.
pub struct Application {
    port: u16,
    server: Server,
    worker: Option<tokio::task::JoinHandle<()>>,
    /// The batch runner.
    batches: tokio::task::JoinHandle<()>,
    shutdown: CancellationToken,
    database: Database,
    store: Store,
    trainer: Arc<dyn Trainer>,
    engine: Arc<Engine>,
    data_dir: PathBuf,
}

impl Application {
    /// Open the database, bind the listener and build the server (not yet polled).
    pub async fn build(settings: Settings) -> anyhow::Result<Self> {
        let mut storage = settings.storage.clone();
        storage.data_dir = prepare_data_dir(&storage)?;
        let blobs = open_blobs(&storage).await?;
        // The model first: a pull that cannot work stops start-up before a database is started.
        let (base_model, base_dir) = prepare_shared_base_model(&settings.model, &blobs).await?;
        let database = Database::open(&storage).await?;
        let store = database.store.clone();
        let keys = settings
            .http
            .all_api_keys()
            .context("reading the API key file")?;
        if keys.is_empty() {
            tracing::warn!("no API keys configured: the API is open to anyone who can reach it");
        } else {
            tracing::info!(keys = keys.len(), "API keys required on /v1 routes");
        }
        let device = settings.model.device()?;
        let trainer = trainer_for(
            &settings.model,
            &device,
            base_model.clone(),
            base_dir.clone(),
        )?;
        let engine = start_engine(&settings.model, &device, &base_model, &base_dir).await?;
        let request_timeout = Duration::from_secs(settings.http.request_timeout_seconds.max(1));
        let swept = blobs.sweep_temp(request_timeout)?;
        if swept > 0 {
            tracing::info!(swept, "removed uploads left half-written by an earlier run");
        }
        let state = web::Data::new(ApiState {
            store: store.clone(),
            blobs: blobs.clone(),
            auth: Auth::from_keys(&keys),
            max_upload_bytes: settings.http.max_upload_bytes,
            base_models: vec![base_model],
            engine: engine.clone(),
            started_at: chrono::Utc::now().timestamp(),
            adapter_root: settings.model.adapter_root.clone(),
            exports: Arc::new(ExportCache::new(
                blobs.data_dir(),
                settings.http.max_concurrent_exports,
            )),
        });
        let listener = TcpListener::bind((settings.http.host.as_str(), settings.http.port))
            .with_context(|| format!("binding {}:{}", settings.http.host, settings.http.port))?;
        let port = listener.local_addr()?.port();
        let batch_state = state.clone();
        let server = HttpServer::new(move || {
            api::routes::app()
                .wrap(api::error_envelopes())
                .wrap_fn(move |mut req, srv| {
                    api::body_timeout::bound(&mut req, request_timeout);
                    srv.call(req)
                })
                .wrap(TracingLogger::<api::request_span::RequestSpan>::new())
                .app_data(state.clone())
        })
        .disable_signals()
        .shutdown_timeout(SHUTDOWN_GRACE_SECS)
        .listen(listener)?
        .run();
        let shutdown = CancellationToken::new();
        let batches = tokio::spawn(api::batches::runner::run_until_stopped(
            batch_state,
            shutdown.clone(),
            settings.worker.poll_interval(),
        ));
        let worker = if settings.run_worker {
            let worker = build_worker(store.clone(), blobs, &settings.worker, trainer.clone())?
                .with_model_ready(preload_hook(engine.clone()));
            Some(tokio::spawn(worker.run_until_stopped(shutdown.clone())))
        } else {
            Some(tokio::spawn(crate::worker::sweep_files_until_stopped(
                store.clone(),
                blobs,
                settings.worker.sweep_interval(),
                shutdown.clone(),
            )))
        };
        tracing::info!(port, data_dir = %storage.data_dir.display(), "ferrotune listening");
        Ok(Self {
            port,
            server,
            worker,
            batches,
            shutdown,
            database,
            store,
            trainer,
            engine,
            data_dir: storage.data_dir.clone(),
        })
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The store the server uses.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The trainer the in-process worker uses.
    pub fn trainer(&self) -> Arc<dyn Trainer> {
        self.trainer.clone()
    }

    /// The serving engine.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.clone()
    }

    /// The absolute data directory.
    pub fn data_dir(&self) -> &std::path::Path {
        &self.data_dir
    }

    /// A handle to stop the server gracefully.
    pub fn handle(&self) -> ServerHandle {
        self.server.handle()
    }

    /// What a signal handler calls: stops the worker (a training job pauses at its next step and
    /// is queued again) and the HTTP server at the same time.
    pub fn stopper(&self) -> Stopper {
        Stopper {
            server: self.server.handle(),
            worker: self.shutdown.clone(),
        }
    }

    /// Serve until stopped, then stop the worker and the embedded database.
    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let served = self.server.await;
        self.shutdown.cancel();
        if let Some(worker) = self.worker {
            let _ = worker.await;
        }
        let _ = self.batches.await;
        self.database.close().await;
        served.context("HTTP server failed")
    }
}
