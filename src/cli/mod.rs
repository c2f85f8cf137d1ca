//! The command line: `serve`, `worker`, `migrate`, `openapi`, `model init-tiny|grad-step`, `train`,
//! `engine-check`.

mod check;
mod export;
mod llama_factory;
mod train;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::config::{
    HttpSettings, LogFormat, ModelSettings, Settings, StorageSettings, WorkerOptions,
};
use crate::startup::{
    Application, Database, build_trainer, build_worker, open_blobs, prepare_data_dir,
};
use crate::train::tiny::{TinyArch, TinySize, init_sized};

/// ferrotune: an OpenAI-compatible fine-tune-and-serve service.
#[derive(Debug, Parser)]
#[command(name = "ferrotune", version, about)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        env = "FERROTUNE_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API and one job worker.
    Serve {
        /// Storage.
        #[command(flatten)]
        storage: StorageSettings,
        /// HTTP.
        #[command(flatten)]
        http: HttpSettings,
        /// Base model.
        #[command(flatten)]
        model: ModelSettings,
        /// Worker.
        #[command(flatten)]
        worker: WorkerOptions,
        /// Do not run a worker in this process (run `ferrotune worker` separately).
        #[arg(long, env = "FERROTUNE_NO_WORKER")]
        no_worker: bool,
    },
    /// Run a job worker alone against the same database (more workers = more concurrent jobs).
    Worker {
        /// Storage.
        #[command(flatten)]
        storage: StorageSettings,
        /// Base model.
        #[command(flatten)]
        model: ModelSettings,
        /// Worker.
        #[command(flatten)]
        worker: WorkerOptions,
    },
    /// Apply database migrations and exit.
    Migrate {
        /// Storage.
        #[command(flatten)]
        storage: StorageSettings,
    },
    /// Print the OpenAPI document.
    Openapi,
    /// Model utilities.
    Model {
        /// What to do.
        #[command(subcommand)]
        command: ModelCommand,
    },
    /// Train one LoRA adapter with no server, from a LLaMA-Factory style config (JSON or YAML).
    Train {
        /// The config file (`model_name_or_path`, `dataset`, `lora_rank`, …).
        #[arg(long)]
        config: PathBuf,
    },
    /// Device check: decode rate, hot-load time and greedy answer of a base model and an adapter
    /// through the serving engine (no database).
    EngineCheck(check::EngineCheckArgs),
}

/// `ferrotune model …`.
#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Write a deterministic tiny model (random weights) in Hugging Face layout, for tests and
    /// demos.
    InitTiny {
        /// Output directory.
        dir: PathBuf,
        /// Architecture to imitate.
        #[arg(long, value_enum, default_value = "llama")]
        arch: TinyArch,
        /// Seed of the random weights.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// `tiny` (tests, demos) or `small` (benchmarks).
        #[arg(long, value_enum, default_value = "tiny")]
        size: TinySize,
    },
    /// Device check: loss and LoRA gradients of one micro-batch on a device and dtype.
    GradStep(check::GradStepArgs),
    /// Fetch a catalogue model (`smollm2-135m-instruct`) into the model cache
    /// (`$FERROTUNE_HOME/models`, default `~/.cache/ferrotune/models`) and print where it is.
    Pull {
        /// The catalogue name.
        name: String,
    },
    /// Merge a fine-tuned model's adapter (or a checkpoint's) into its base and write a
    /// standalone Hugging Face directory or GGUF file (f16, q8_0, q4_k) for other tools.
    Export(export::ExportArgs),
    /// Turn a llama-family GGUF file (llama.cpp, Ollama, LM Studio) into a Hugging Face model
    /// directory the trainer and the server load.
    ImportGguf {
        /// The `.gguf` file.
        file: PathBuf,
        /// The model directory to create (must not exist).
        out_dir: PathBuf,
        /// Weights dtype in `model.safetensors`.
        #[arg(long, value_enum, default_value = "bf16")]
        dtype: crate::config::DtypeChoice,
    },
}

/// Parse the command line and run it.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    crate::telemetry::init(cli.log_format);
    match &cli.command {
        Command::Openapi => {
            print!("{}", crate::api::openapi::spec_json());
            return Ok(());
        }
        Command::Model {
            command:
                ModelCommand::InitTiny {
                    dir,
                    arch,
                    seed,
                    size,
                },
        } => {
            init_sized(dir, *arch, *size, *seed)?;
            println!(
                "wrote a tiny {arch:?} model (random weights) to {}",
                dir.display()
            );
            return Ok(());
        }
        Command::Train { config } => return train::run(config),
        Command::Model {
            command: ModelCommand::GradStep(args),
        } => return check::grad_step(args),
        Command::Model {
            command: ModelCommand::Pull { name },
        } => {
            let dir = crate::model_cache::pull(name)?;
            println!("{name}: {}", dir.display());
            return Ok(());
        }
        Command::Model {
            command:
                ModelCommand::ImportGguf {
                    file,
                    out_dir,
                    dtype,
                },
        } => {
            let dtype = match dtype {
                crate::config::DtypeChoice::F32 => candle_core::DType::F32,
                crate::config::DtypeChoice::F16 => candle_core::DType::F16,
                _ => candle_core::DType::BF16,
            };
            let done = crate::model_dir::gguf::import(file, out_dir, dtype)?;
            println!(
                "imported {} ({} parameters) into {}",
                done.architecture,
                done.parameters,
                done.dir.display()
            );
            return Ok(());
        }
        _ => {}
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(dispatch(cli.command))
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            storage,
            http,
            model,
            worker,
            no_worker,
        } => {
            let settings = Settings {
                storage,
                http,
                model,
                worker,
                run_worker: !no_worker,
            };
            let app = Application::build(settings).await?;
            let stopper = app.stopper();
            tokio::spawn(async move {
                wait_for_signal().await;
                tracing::info!("shutting down");
                stopper.stop().await;
            });
            app.run_until_stopped().await
        }
        Command::Worker {
            mut storage,
            model,
            worker,
        } => {
            storage.data_dir = prepare_data_dir(&storage)?;
            let database = Database::open(&storage).await?;
            let blobs = open_blobs(&storage).await?;
            let (_, trainer) = build_trainer(&model, &blobs).await?;
            let w = build_worker(database.store.clone(), blobs, &worker, trainer)?;
            let shutdown = CancellationToken::new();
            let stopper = shutdown.clone();
            tokio::spawn(async move {
                wait_for_signal().await;
                stopper.cancel();
            });
            w.run_until_stopped(shutdown).await;
            database.close().await;
            Ok(())
        }
        Command::Migrate { mut storage } => {
            storage.data_dir = prepare_data_dir(&storage)?;
            let database = Database::open(&storage).await?;
            tracing::info!("migrations applied");
            database.close().await;
            Ok(())
        }
        Command::EngineCheck(args) => check::engine_check(&args).await,
        Command::Model {
            command: ModelCommand::Export(args),
        } => export::run(args).await,
        Command::Openapi | Command::Model { .. } | Command::Train { .. } => {
            unreachable!("handled before the runtime starts")
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
