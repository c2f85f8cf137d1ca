//! ferrotune: an OpenAI-compatible fine-tune-and-serve service.
//!
//! A tour of the modules, in the order a request travels:
//!
//! - [`api`] speaks HTTP (actix-web): parses requests, calls the store and the use cases,
//!   renders OpenAI objects, and turns every failure into OpenAI's error envelope.
//! - [`answers`] holds the use cases that span the store and the engine (a caller's model made
//!   resident, ensemble answers, threshold calibration).
//! - [`domain`] holds the parsed types and their rules (ids, job statuses, hyperparameters,
//!   dataset formats, model names). No I/O.
//! - [`store`] holds every SQL statement (sqlx on Postgres), the job queue (claim with
//!   `FOR UPDATE SKIP LOCKED`, leases, fencing) and the on-disk file blobs.
//! - [`worker`] is the job loop: claim, validate files, hand the job to a trainer, record events.
//! - [`train`] is LoRA fine-tuning with candle; [`serve`] is chat generation with mistral.rs.
//! - [`model_dir`] is the model library beneath trainer, server and exporter: a Hugging Face
//!   model directory (config, weight files, tokenizer files), GGUF import, chat templates,
//!   quantized weight formats and PEFT adapter configs.
//! - [`export`] merges an adapter into its base and writes a Hugging Face directory or GGUF,
//!   kept as shared artifacts.
//! - [`model_cache`] pulls catalogue models and imports GGUF files into the user's model cache.
//! - [`embedded_postgres`] runs a private PostgreSQL cluster when no `DATABASE_URL` is given.
//! - [`config`], [`telemetry`], [`startup`] and [`cli`] glue it together.
//!
//! Dependencies run one way: domain ← model_dir ← {train, serve, export} ← {worker, answers,
//! api} ← startup / cli; `tests/layering.rs` checks it.

pub mod answers;
pub mod api;
pub mod cli;
pub mod config;
pub mod domain;
pub mod embedded_postgres;
pub mod export;
pub mod metrics;
pub mod model_cache;
pub mod model_dir;
pub mod serve;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod train;
pub mod ui;
pub mod worker;
