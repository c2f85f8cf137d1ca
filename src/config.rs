//! Settings from flags and `FERROTUNE_*` environment variables. Each `///` is also `--help`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};

/// Where state lives.
#[derive(Debug, Clone, Args)]
pub struct StorageSettings {
    /// Data directory: uploaded files, job outputs and the embedded PostgreSQL cluster.
    #[arg(long, env = "FERROTUNE_DATA_DIR", default_value = "./ferrotune-data")]
    pub data_dir: PathBuf,
    /// PostgreSQL URL. Without it, a private cluster is started under <data dir>/postgres.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
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
    /// The base model's name as clients give it in `model`.
    #[arg(
        long,
        env = "FERROTUNE_BASE_MODEL_NAME",
        default_value = "ferrotune-tiny"
    )]
    pub base_model_name: String,
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
}

/// Log output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Everything `ferrotune serve` needs; tests build it directly.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Storage.
    pub storage: StorageSettings,
    /// HTTP.
    pub http: HttpSettings,
    /// Worker.
    pub worker: WorkerOptions,
    /// Run a worker inside the server process.
    pub run_worker: bool,
}
