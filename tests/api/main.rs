//! HTTP tests: the real server (or the real binary) over HTTP, on a real PostgreSQL database per
//! test, with real training and serving on the tiny model. Numerics and parity are in
//! `tests/model`, the repository's shape in `tests/repo`.

#[allow(dead_code)] // shared with tests/model, which uses other helpers
#[path = "../helpers/mod.rs"]
mod helpers;

mod adapters;
mod auth;
mod batches;
mod chat;
mod completions;
mod dashboard;
mod dpo;
mod ensembles;
mod errors;
mod export;
mod files;
mod fuzz_findings;
mod job_actions;
mod jobs;
mod mistral_engine;
mod openapi;
mod paged_attention;
mod qlora;
mod queue;
mod real_model;
mod real_model_tools;
mod real_model_tuning;
mod responses;
mod serve_binary;
mod template_tools;
mod tools;
mod training_jobs;
mod worker;
mod worker_lifecycle;
