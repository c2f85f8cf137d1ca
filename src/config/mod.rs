//! Settings from flags and `FERROTUNE_*` environment variables. Each `///` is also `--help`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

mod device;
pub use device::{
    DeviceChoice, DtypeChoice, EngineChoice, PagedAttention, ServeQuant, parse_device,
    serving_dtype,
};

/// Where state lives.
#[derive(Debug, Clone, Args)]
pub struct StorageSettings {
    /// Data directory: uploaded files, job outputs and the embedded PostgreSQL cluster.
    #[arg(long, env = "FERROTUNE_DATA_DIR", default_value = "./ferrotune-data")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL. Without it, a private cluster is started under <data dir>/postgres.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Keep uploaded and result files in an S3-compatible bucket (`s3://bucket/prefix`) shared
    /// by every node, the data directory holding a cache. Endpoint and credentials from
    /// `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` (and `AWS_REGION`).
    #[arg(long, env = "FERROTUNE_OBJECT_STORE")]
    pub object_store: Option<String>,
}

/// The HTTP server.
#[derive(Debug, Clone, Args)]
pub struct HttpSettings {
    /// Address to bind.
    #[arg(long, env = "FERROTUNE_HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Port to bind (0 picks a free one).
    #[arg(long, env = "FERROTUNE_PORT", default_value_t = 8080)]
    pub port: u16,
    /// Largest accepted upload in bytes.
    #[arg(long, env = "FERROTUNE_MAX_UPLOAD_BYTES", default_value_t = 512 * 1024 * 1024)]
    pub max_upload_bytes: u64,
    /// An API key clients must send as a bearer token (repeatable; each key is its own
    /// organization). Without keys the server is open.
    #[arg(long = "api-key", env = "FERROTUNE_API_KEYS", value_delimiter = ',')]
    pub api_keys: Vec<String>,
    /// A file with one API key per line (blank lines and `#` comments ignored).
    #[arg(long, env = "FERROTUNE_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Seconds a request body may stall between reads before the server answers 408 and drops
    /// it (request headers have actix's own 5-second limit).
    #[arg(long, env = "FERROTUNE_REQUEST_TIMEOUT_SECONDS", default_value_t = 30)]
    pub request_timeout_seconds: u64,
    /// Model exports (`/v1/models/{model}/export`) built at once; a request that would start
    /// another is answered 429 with `Retry-After`. Each build holds about one weight tensor in
    /// memory; finished exports are kept and shared.
    #[arg(long, env = "FERROTUNE_MAX_CONCURRENT_EXPORTS", default_value_t = 1)]
    pub max_concurrent_exports: usize,
}

impl HttpSettings {
    /// The configured keys, from flags and the key file.
    pub fn all_api_keys(&self) -> std::io::Result<Vec<String>> {
        let mut keys: Vec<String> = self
            .api_keys
            .iter()
            .map(|k| k.trim().to_owned())
            .filter(|k| !k.is_empty())
            .collect();
        if let Some(path) = &self.api_key_file {
            let text = std::fs::read_to_string(path)?;
            keys.extend(
                text.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#'))
                    .map(str::to_owned),
            );
        }
        Ok(keys)
    }
}

/// The base model and where it runs.
#[derive(Debug, Clone, Args)]
pub struct ModelSettings {
    /// The base model: a local Hugging Face model directory (config.json, model.safetensors,
    /// tokenizer.json), a `.gguf` file (imported once into the model cache), a catalogue name
    /// (`smollm2-135m-instruct`, pulled once into the model cache), or `ferrotune-tiny` (a tiny
    /// model with random weights generated in <data dir>/models: for tests and offline use).
    /// Default: `smollm2-135m-instruct`, pulled on the first start.
    #[arg(long, env = "FERROTUNE_BASE_MODEL")]
    pub base_model: Option<PathBuf>,
    /// The name clients use for the base model (default: the catalogue name, or the directory's
    /// or file's name).
    #[arg(long, env = "FERROTUNE_BASE_MODEL_NAME")]
    pub base_model_name: Option<String>,
    /// Device for training and serving: `auto` (the first GPU when the binary is built with
    /// `--features cuda` and one is present, else the CPU), `cpu` or `cuda[:N]`.
    #[arg(long, env = "FERROTUNE_DEVICE", default_value = "auto")]
    pub device: DeviceChoice,
    /// Compute dtype of the frozen weights: `auto` (bf16 on a GPU, f32 on the CPU), `f32`,
    /// `bf16` or `f16`. LoRA weights, optimizer state and the loss stay f32.
    #[arg(long, env = "FERROTUNE_DTYPE", value_enum, default_value = "auto")]
    pub dtype: DtypeChoice,
    /// Most fine-tuned models kept loaded for serving besides the base model (least recently
    /// used ones are evicted and reloaded on demand).
    #[arg(long, env = "FERROTUNE_MAX_RESIDENT_MODELS", default_value_t = 2)]
    pub max_resident_models: usize,
    /// Quantize served models after loading to save memory per resident model: `none`, `q8_0`
    /// or `q4k` (mistral.rs in-situ quantization; training is unaffected).
    #[arg(
        long,
        env = "FERROTUNE_SERVE_QUANT",
        value_enum,
        default_value = "none"
    )]
    pub serve_quant: ServeQuant,
    /// Paged attention when serving: `auto` (on when serving on a GPU; mistral.rs has it on CUDA
    /// only), `on` or `off`.
    #[arg(
        long,
        env = "FERROTUNE_PAGED_ATTENTION",
        value_enum,
        default_value = "auto"
    )]
    pub paged_attention: PagedAttention,
    /// KV-cache tokens shared by the running sequences: llama.cpp's cache (one for the base and
    /// all its adapters), or with paged attention the GPU cache per resident model (bytes per
    /// token: layers × 2 × KV heads × head width × dtype size; the server logs the total).
    #[arg(long, env = "FERROTUNE_KV_CACHE_TOKENS", default_value_t = 32768)]
    pub kv_cache_tokens: usize,
    /// Serving engine: `auto` (llama.cpp on the CPU, mistral.rs on a GPU), `llamacpp` or
    /// `mistralrs`. llama.cpp serves the base as GGUF and every fine-tune as an adapter on it;
    /// mistral.rs merges each fine-tune into its own copy of the base.
    #[arg(long, env = "FERROTUNE_ENGINE", value_enum, default_value = "auto")]
    pub engine: EngineChoice,
    /// llama.cpp: sequences decoded together (more wait for a free slot).
    #[arg(long, env = "FERROTUNE_MAX_SEQUENCES", default_value_t = 32)]
    pub max_sequences: usize,
    /// Directory from which `/v1/load_lora_adapter` may load PEFT adapters (absent: disabled).
    #[arg(long, env = "FERROTUNE_ADAPTER_ROOT")]
    pub adapter_root: Option<PathBuf>,
}

/// The name of the generated tiny model.
pub const TINY_MODEL_NAME: &str = "ferrotune-tiny";

/// The base model without `--base-model`: a real instruct model from the catalogue.
pub const DEFAULT_BASE_MODEL: &str = "smollm2-135m-instruct";

/// The base model a server fine-tunes and serves, as resolved at start-up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseModelSource {
    /// A Hugging Face directory the user named.
    Directory {
        /// Its name for clients.
        name: String,
        /// The directory.
        dir: PathBuf,
    },
    /// A catalogue model, pulled into the model cache on first use.
    Catalogue {
        /// Its name for clients.
        name: String,
        /// The catalogue name.
        entry: String,
    },
    /// A GGUF file, imported into the model cache on first use.
    Gguf {
        /// Its name for clients.
        name: String,
        /// The file.
        file: PathBuf,
    },
    /// The generated tiny model, kept under `<data dir>/models/`.
    Tiny {
        /// Its name for clients.
        name: String,
        /// Where it is (or will be) generated.
        dir: PathBuf,
    },
}

impl BaseModelSource {
    /// The name clients use.
    pub fn name(&self) -> &str {
        match self {
            Self::Directory { name, .. }
            | Self::Catalogue { name, .. }
            | Self::Gguf { name, .. }
            | Self::Tiny { name, .. } => name,
        }
    }
}

impl ModelSettings {
    /// Which base model the settings name, without touching the disk beyond checking that a
    /// named directory has a `config.json`. Start-up makes it ready ([`crate::startup`]).
    pub fn base_model_source(&self, data_dir: &std::path::Path) -> anyhow::Result<BaseModelSource> {
        let named = |default: &str| {
            self.base_model_name
                .clone()
                .unwrap_or_else(|| default.to_owned())
        };
        let Some(given) = &self.base_model else {
            return Ok(BaseModelSource::Catalogue {
                name: named(DEFAULT_BASE_MODEL),
                entry: DEFAULT_BASE_MODEL.to_owned(),
            });
        };
        let text = given.to_string_lossy();
        if text == TINY_MODEL_NAME {
            return Ok(BaseModelSource::Tiny {
                name: named(TINY_MODEL_NAME),
                dir: data_dir.join("models").join(TINY_MODEL_NAME),
            });
        }
        if let Some(entry) = crate::model_cache::entry(&text) {
            return Ok(BaseModelSource::Catalogue {
                name: named(entry.name),
                entry: entry.name.to_owned(),
            });
        }
        let path = std::path::absolute(given)?;
        let stem = |p: &std::path::Path| {
            p.file_stem()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "base".to_owned())
        };
        if path.extension().is_some_and(|e| e == "gguf") {
            if !path.is_file() {
                anyhow::bail!("--base-model {}: no such GGUF file", path.display());
            }
            return Ok(BaseModelSource::Gguf {
                name: named(&stem(&path)),
                file: path,
            });
        }
        if !path.join(crate::model_dir::CONFIG).exists() {
            anyhow::bail!("--base-model {}: no config.json there", path.display());
        }
        // A directory's whole name (`Qwen2.5-0.5B-Instruct` has no extension to drop).
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "base".to_owned());
        Ok(BaseModelSource::Directory {
            name: named(&name),
            dir: path,
        })
    }

    /// The candle device.
    pub fn device(&self) -> anyhow::Result<candle_core::Device> {
        self.device.open()
    }

    /// The compute dtype on `device`.
    pub fn dtype(&self, device: &candle_core::Device) -> candle_core::DType {
        self.dtype.on(device)
    }
}

/// The job worker.
#[derive(Debug, Clone, Args)]
pub struct WorkerOptions {
    /// Milliseconds between polls for new jobs when idle.
    #[arg(long, env = "FERROTUNE_POLL_INTERVAL_MS", default_value_t = 1000)]
    pub poll_interval_ms: u64,
    /// Seconds a job lease lasts without a heartbeat before another worker may take the job.
    #[arg(long, env = "FERROTUNE_LEASE_SECONDS", default_value_t = 30)]
    pub lease_seconds: u64,
    /// Times a job may be abandoned by dying workers before it fails.
    #[arg(long, env = "FERROTUNE_MAX_LOST_LEASES", default_value_t = 3)]
    pub max_lost_leases: i32,
    /// Seconds between sweeps for stored bytes no row owns (a deleted file's bytes the object
    /// store kept, a cancelled job's shared outputs).
    #[arg(long, env = "FERROTUNE_SWEEP_INTERVAL_SECONDS", default_value_t = 600)]
    pub sweep_interval_seconds: u64,
}

impl WorkerOptions {
    /// Poll interval.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    /// Lease length.
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds.max(1))
    }

    /// Time between orphan sweeps.
    pub fn sweep_interval(&self) -> Duration {
        Duration::from_secs(self.sweep_interval_seconds.max(1))
    }
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Settings {
    /// A local, open server in `data_dir` on a free port: embedded Postgres, the generated tiny
    /// model on the CPU, an in-process worker. Benchmarks and tools adjust fields from here.
    pub fn local(data_dir: PathBuf) -> Self {
        Self {
            storage: StorageSettings {
                data_dir,
                database_url: None,
                object_store: None,
            },
            http: HttpSettings {
                host: "127.0.0.1".into(),
                port: 0,
                max_upload_bytes: 512 * 1024 * 1024,
                api_keys: vec![],
                api_key_file: None,
                request_timeout_seconds: 30,
                max_concurrent_exports: 1,
            },
            model: ModelSettings {
                base_model: Some(TINY_MODEL_NAME.into()),
                base_model_name: None,
                device: DeviceChoice::Cpu,
                dtype: DtypeChoice::F32,
                max_resident_models: 2,
                serve_quant: ServeQuant::None,
                paged_attention: PagedAttention::Auto,
                kv_cache_tokens: 32768,
                engine: EngineChoice::Auto,
                max_sequences: 32,
                adapter_root: None,
            },
            worker: WorkerOptions {
                poll_interval_ms: 50,
                lease_seconds: 30,
                max_lost_leases: 3,
                sweep_interval_seconds: 600,
            },
            run_worker: true,
        }
    }
}

/// Everything `ferrotune serve` needs; tests build it directly.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Storage.
    pub storage: StorageSettings,
    /// HTTP.
    pub http: HttpSettings,
    /// Base model and device.
    pub model: ModelSettings,
    /// Worker.
    pub worker: WorkerOptions,
    /// Run a worker inside the server process.
    pub run_worker: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_models_are_named_by_catalogue_name_file_or_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let mut model = Settings::local(data.clone()).model;
        let source = |m: &ModelSettings| m.base_model_source(&data);
        model.base_model = None;
        assert!(matches!(source(&model).unwrap(),
            BaseModelSource::Catalogue { ref name, .. } if name == DEFAULT_BASE_MODEL));
        model.base_model = Some(TINY_MODEL_NAME.into());
        assert!(matches!(
            source(&model).unwrap(),
            BaseModelSource::Tiny { .. }
        ));
        let gguf = tmp.path().join("my-model.Q4_0.gguf");
        model.base_model = Some(gguf.clone());
        assert!(source(&model).is_err(), "a missing GGUF file");
        std::fs::write(&gguf, b"").unwrap();
        assert!(matches!(source(&model).unwrap(),
            BaseModelSource::Gguf { ref name, .. } if name == "my-model.Q4_0"));
        let dir = tmp.path().join("Qwen2.5-0.5B-Instruct");
        std::fs::create_dir_all(&dir).unwrap();
        model.base_model = Some(dir.clone());
        assert!(source(&model).is_err(), "a directory without config.json");
        std::fs::write(dir.join("config.json"), b"{}").unwrap();
        assert!(matches!(source(&model).unwrap(),
            BaseModelSource::Directory { ref name, .. } if name == "Qwen2.5-0.5B-Instruct"));
        model.base_model_name = Some("mine".into());
        assert_eq!(source(&model).unwrap().name(), "mine");
    }
}
