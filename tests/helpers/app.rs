//! `spawn_app()`: a real server on a fresh database of a shared embedded test cluster.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ferrotune::config::{Settings, WorkerOptions};
use ferrotune::embedded_postgres::EmbeddedPostgres;
use ferrotune::startup::{Application, build_worker, ensure_database};
use ferrotune::store::Store;
use ferrotune::store::blobs::BlobStore;
use ferrotune::worker::{Trainer, Worker};
use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};
use sqlx::Connection;

use super::fixtures::QA;
use super::wait::eventually;

static CLUSTER: OnceLock<EmbeddedPostgres> = OnceLock::new();

/// One PostgreSQL cluster for the whole test run (fsync off), reused across runs.
pub fn cluster() -> &'static EmbeddedPostgres {
    CLUSTER.get_or_init(|| {
        let root =
            std::env::temp_dir().join(format!("ferrotune-test-pg-{}", nix::unistd::getuid()));
        // Serialise start-up across test processes (e.g. nextest runs one per test).
        let lock = std::fs::File::create(root.with_extension("lock")).expect("lock file");
        lock.lock().expect("locking the test cluster");
        EmbeddedPostgres::start(&root, true).expect("starting the test PostgreSQL cluster")
    })
}

/// Options for [`spawn_app_with`].
#[derive(Default)]
pub struct AppOptions {
    /// API keys to require.
    pub api_keys: Vec<String>,
    /// Upload limit (default 512 MiB).
    pub max_upload_bytes: Option<u64>,
    /// Resident fine-tuned models (default 2).
    pub max_resident_models: Option<usize>,
    /// Root for runtime adapters.
    pub adapter_root: Option<std::path::PathBuf>,
    /// Seconds a request body may stall (default 30).
    pub request_timeout_seconds: Option<u64>,
    /// A data directory prepared by the test (default: a fresh one).
    pub data_dir: Option<tempfile::TempDir>,
    /// `--serve-quant` (default none).
    pub serve_quant: Option<ferrotune::config::ServeQuant>,
    /// `--base-model` (default: the generated tiny model).
    pub base_model: Option<std::path::PathBuf>,
    /// `--sweep-interval-seconds` (default 600).
    pub sweep_interval_seconds: Option<u64>,
    /// `--engine` (default `auto`: llama.cpp on this CPU).
    pub engine: Option<ferrotune::config::EngineChoice>,
}

/// A running server and what tests need to talk to it.
pub struct TestApp {
    /// `http://127.0.0.1:PORT`.
    pub address: String,
    /// HTTP client.
    pub client: reqwest::Client,
    /// Direct database access.
    pub store: Store,
    /// The server's data directory.
    pub data_dir: tempfile::TempDir,
    /// Bearer key sent by the helpers, if any.
    pub api_key: Option<String>,
    /// The server's trainer (the real candle trainer on the generated tiny model).
    pub trainer: Arc<dyn Trainer>,
    /// The server's serving engine.
    pub engine: Arc<ferrotune::serve::Engine>,
    db_name: String,
    owns_db: bool,
}

/// A server with no API keys.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

/// A server with options. No worker runs inside it: tests drive workers explicitly.
pub async fn spawn_app_with(options: AppOptions) -> TestApp {
    let cluster = cluster();
    let db_name = format!(
        "test_{}",
        ferrotune::domain::ids::JobId::generate()
            .body()
            .to_lowercase()
    );
    ensure_database(&cluster.url("postgres"), &db_name)
        .await
        .expect("creating the test database");
    let mut options = options;
    let data_dir = match options.data_dir.take() {
        Some(dir) => dir,
        None => tempfile::tempdir().expect("temp data dir"),
    };
    let path = data_dir.path().to_owned();
    start(options, db_name, path, data_dir, true).await
}

/// A second server on `first`'s database and data directory, as after a restart (the first keeps
/// running; it owns the database's lifetime).
pub async fn spawn_app_sharing(first: &TestApp) -> TestApp {
    let unused = tempfile::tempdir().expect("temp dir");
    let path = first.data_dir.path().to_owned();
    start(
        AppOptions::default(),
        first.db_name.clone(),
        path,
        unused,
        false,
    )
    .await
}

async fn start(
    options: AppOptions,
    db_name: String,
    data_path: std::path::PathBuf,
    data_dir: tempfile::TempDir,
    owns_db: bool,
) -> TestApp {
    let cluster = cluster();
    let mut settings = Settings::local(data_path);
    settings.storage.database_url = Some(cluster.url(&db_name));
    if let Some(max) = options.max_upload_bytes {
        settings.http.max_upload_bytes = max;
    }
    settings.http.api_keys = options.api_keys.clone();
    if let Some(max) = options.max_resident_models {
        settings.model.max_resident_models = max;
    }
    settings.model.adapter_root = options.adapter_root.clone();
    if let Some(q) = options.serve_quant {
        settings.model.serve_quant = q;
    }
    if let Some(dir) = options.base_model.clone() {
        settings.model.base_model = Some(dir);
    }
    if let Some(secs) = options.request_timeout_seconds {
        settings.http.request_timeout_seconds = secs;
    }
    if let Some(secs) = options.sweep_interval_seconds {
        settings.worker.sweep_interval_seconds = secs;
    }
    if let Some(engine) = options.engine {
        settings.model.engine = engine;
    }
    // Tests drive workers explicitly.
    settings.run_worker = false;
    let app = Application::build(settings)
        .await
        .expect("building the app");
    let address = format!("http://127.0.0.1:{}", app.port());
    let store = app.store().clone();
    let trainer = app.trainer();
    let engine = app.engine();
    tokio::spawn(app.run_until_stopped());
    TestApp {
        address,
        client: reqwest::Client::new(),
        store,
        data_dir,
        api_key: options.api_keys.first().cloned(),
        trainer,
        engine,
        db_name,
        owns_db,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if !self.owns_db {
            return;
        }
        let url = cluster().url("postgres");
        let name = self.db_name.clone();
        // Drop runs inside the test's runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                sqlx::query(&format!("drop database if exists \"{name}\" with (force)"))
                    .execute(&mut conn)
                    .await?;
                Ok::<_, anyhow::Error>(())
            })
        })
        .join();
    }
}

/// `n` alpaca records as JSON Lines.
pub fn alpaca_jsonl(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| json!({"instruction": format!("What is {i} + 1?"), "input": "", "output": format!("{}", i + 1)}).to_string() + "\n")
        .collect::<String>()
        .into_bytes()
}

impl TestApp {
    /// The URL of this app's database (for a `ferrotune` binary started on it).
    pub fn database_url(&self) -> String {
        cluster().url(&self.db_name)
    }

    fn auth(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_key {
            Some(key) => req.bearer_auth(key),
            None => req,
        }
    }

    /// GET a path.
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.auth(self.client.get(format!("{}{path}", self.address)))
            .send()
            .await
            .expect("request")
    }

    /// DELETE a path.
    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.auth(self.client.delete(format!("{}{path}", self.address)))
            .send()
            .await
            .expect("request")
    }

    /// POST JSON to a path.
    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.auth(
            self.client
                .post(format!("{}{path}", self.address))
                .json(body),
        )
        .send()
        .await
        .expect("request")
    }

    /// POST with an empty body (job actions).
    pub async fn post_empty(&self, path: &str) -> reqwest::Response {
        self.auth(self.client.post(format!("{}{path}", self.address)))
            .send()
            .await
            .expect("request")
    }

    /// Upload bytes as a file.
    pub async fn upload(&self, filename: &str, bytes: Vec<u8>, purpose: &str) -> reqwest::Response {
        let form = Form::new()
            .text("purpose", purpose.to_owned())
            .part("file", Part::bytes(bytes).file_name(filename.to_owned()));
        self.auth(
            self.client
                .post(format!("{}/v1/files", self.address))
                .multipart(form),
        )
        .send()
        .await
        .expect("request")
    }

    /// Upload a valid training file of `n` examples and return its id.
    pub async fn training_file(&self, n: usize) -> String {
        let res = self
            .upload("train.jsonl", alpaca_jsonl(n), "fine-tune")
            .await;
        assert_eq!(res.status(), 200);
        res.json::<Value>().await.unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Create a job on `file` and return its object.
    pub async fn create_job(&self, file: &str, extra: Value) -> Value {
        let mut body = json!({"model": "ferrotune-tiny", "training_file": file});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        let res = self.post("/v1/fine_tuning/jobs", &body).await;
        assert_eq!(res.status(), 200);
        res.json().await.unwrap()
    }

    /// A job on 20 examples long enough to interrupt (600 one-example steps, metrics every
    /// step), with `extra` hyperparameters on top; returns its id.
    pub async fn long_training_job(&self, extra: Value) -> String {
        let file = self.training_file(20).await;
        let mut hp = json!({"n_epochs": 30, "batch_size": 1, "learning_rate": 1e-3,
                            "gradient_accumulation_steps": 1, "logging_steps": 1});
        hp.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        let method = json!({"type": "supervised", "supervised": {"hyperparameters": hp}});
        let job = self.create_job(&file, json!({"method": method})).await;
        job["id"].as_str().unwrap().to_owned()
    }

    /// A job's current object.
    pub async fn job(&self, id: &str) -> Value {
        self.get(&format!("/v1/fine_tuning/jobs/{id}"))
            .await
            .json()
            .await
            .unwrap()
    }

    /// Every event message of a job, oldest first, straight from the database.
    pub async fn all_event_messages(&self, id: &str) -> Vec<String> {
        sqlx::query_scalar(
            "select message from fine_tuning_job_event where job_id = $1 order by seq",
        )
        .bind(id)
        .fetch_all(self.store.pool())
        .await
        .unwrap()
    }

    /// Run the worker once on `job` (a created job's object) and check that it failed with
    /// `code` and a message holding `needle`; the failed job.
    pub async fn run_to_failure(&self, job: &Value, code: &str, needle: &str) -> Value {
        self.worker().run_once().await.unwrap();
        let job = self.job(job["id"].as_str().unwrap()).await;
        assert_eq!(job["status"], "failed", "{job}");
        assert_eq!(job["error"]["code"], code, "{job}");
        let message = job["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{job}");
        job
    }

    /// A job's last 100 events through the API, oldest first.
    pub async fn events(&self, id: &str) -> Vec<Value> {
        let list: Value = self
            .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=100"))
            .await
            .json()
            .await
            .unwrap();
        let mut out = list["data"].as_array().unwrap().clone();
        out.reverse();
        out
    }

    /// A job's event messages, oldest first.
    pub async fn event_messages(&self, id: &str) -> Vec<String> {
        let events = self.events(id).await;
        events
            .iter()
            .map(|e| e["message"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The `data` of a job's metrics events, oldest first.
    pub async fn metrics_events(&self, id: &str) -> Vec<Value> {
        let events = self.events(id).await;
        events
            .into_iter()
            .filter(|e| e["type"] == "metrics")
            .map(|e| e["data"].clone())
            .collect()
    }

    /// A worker on this app's database with `trainer`, polling fast and leasing `lease_seconds`.
    pub fn worker_with(&self, trainer: Arc<dyn Trainer>, lease_seconds: u64) -> Worker {
        let options = WorkerOptions {
            poll_interval_ms: 50,
            lease_seconds,
            max_lost_leases: 3,
            sweep_interval_seconds: 600,
        };
        let blobs = BlobStore::open(self.data_dir.path()).unwrap();
        build_worker(self.store.clone(), blobs, &options, trainer).unwrap()
    }

    /// A worker like the server's own: its trainer, and preloading what it publishes.
    pub fn worker(&self) -> Worker {
        self.worker_with(self.trainer.clone(), 30)
            .with_model_ready(ferrotune::startup::preload_hook(self.engine.clone()))
    }

    /// Files stored on disk (excluding the staging folder).
    pub fn stored_blobs(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.data_dir.path().join("files"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let tmp: Vec<_> = std::fs::read_dir(self.data_dir.path().join("files/.tmp"))
            .unwrap()
            .flatten()
            .map(|e| format!(".tmp/{}", e.file_name().to_string_lossy()))
            .collect();
        names.retain(|n| n != ".tmp");
        names.extend(tmp);
        names
    }
}

/// Assert an OpenAI error envelope with this status and `param`; returns the error object.
pub async fn assert_error(res: reqwest::Response, status: u16, param: Option<&str>) -> Value {
    assert_eq!(res.status().as_u16(), status, "unexpected status");
    let ct = res.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/json"), "content-type {ct}");
    let body: Value = res.json().await.unwrap();
    let err = body["error"].clone();
    assert!(
        err["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(err["type"].is_string(), "{body}");
    assert_eq!(err["param"].as_str(), param, "{body}");
    err
}

/// Train a model on the ten health answers and return (job id, fine_tuned_model); the server
/// preloads it.
pub async fn fine_tune(app: &TestApp, suffix: &str) -> (String, String) {
    fine_tune_with(app, suffix, json!({})).await
}

/// Like [`fine_tune`], with `extra` hyperparameters on top.
pub async fn fine_tune_with(app: &TestApp, suffix: &str, extra: Value) -> (String, String) {
    train_with(app, suffix, app.worker(), extra, false).await
}

/// Like [`fine_tune_with`], the job given the same examples as its `validation_file`.
pub async fn fine_tune_validated(app: &TestApp, suffix: &str, extra: Value) -> (String, String) {
    train_with(app, suffix, app.worker(), extra, true).await
}

/// Like [`fine_tune`], but nothing is preloaded: the model loads on its first request.
pub async fn fine_tune_lazily(app: &TestApp, suffix: &str) -> (String, String) {
    train_with(
        app,
        suffix,
        app.worker_with(app.trainer.clone(), 30),
        json!({}),
        false,
    )
    .await
}

async fn train_with(
    app: &TestApp,
    suffix: &str,
    worker: ferrotune::worker::Worker,
    extra: Value,
    validated: bool,
) -> (String, String) {
    let records: Vec<Value> = QA
        .iter()
        .map(|(q, a)| json!({"instruction": q, "input": "", "output": a}))
        .collect();
    let file: Value = app
        .upload(
            "qa.json",
            serde_json::to_vec(&records).unwrap(),
            "fine-tune",
        )
        .await
        .json()
        .await
        .unwrap();
    let mut hp = json!({"n_epochs": 20, "batch_size": 2, "learning_rate": 0.01, "lora_dropout": 0.0, "save_steps": 50});
    for (k, v) in extra.as_object().into_iter().flatten() {
        hp[k] = v.clone();
    }
    // A fixed seed: the tiny model's learning run is then the same every time.
    let mut body = json!({"suffix": suffix, "seed": 7, "method": {"type": "supervised", "supervised": {"hyperparameters": hp}}});
    if validated {
        body["validation_file"] = file["id"].clone();
    }
    let job = app.create_job(file["id"].as_str().unwrap(), body).await;
    let id = job["id"].as_str().unwrap().to_owned();
    assert!(worker.run_once().await.unwrap());
    let job = app.job(&id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    (id, job["fine_tuned_model"].as_str().unwrap().to_owned())
}

/// A greedy answer of at most 40 tokens from `model` (status 200 asserted).
pub async fn ask(app: &TestApp, model: &str, question: &str) -> Value {
    let res = app
        .post(
            "/v1/chat/completions",
            &json!({"model": model, "temperature": 0, "max_tokens": 40,
            "messages": [{"role": "user", "content": question}]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

/// Upload the QA pairs cycled to `n` examples; the file id.
pub async fn upload_qa(app: &TestApp, n: usize) -> String {
    let records: Vec<Value> = QA
        .iter()
        .cycle()
        .take(n)
        .map(|(q, a)| json!({"instruction": q, "input": "", "output": a}))
        .collect();
    let body = serde_json::to_vec_pretty(&records).unwrap();
    let file: Value = app
        .upload("health.json", body, "fine-tune")
        .await
        .json()
        .await
        .unwrap();
    file["id"].as_str().unwrap().to_owned()
}

/// The job once its status is `status` (within 10 s).
pub async fn wait_for_status(app: &TestApp, id: &str, status: &str) -> Value {
    let what = format!("job {id} to reach {status}");
    eventually(&what, Duration::from_secs(10), || async {
        let job = app.job(id).await;
        (job["status"] == status).then_some(job)
    })
    .await
}

/// The `data:` events of an SSE body, `[DONE]` left out.
pub fn sse_events(text: &str) -> Vec<Value> {
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    text.split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect()
}
