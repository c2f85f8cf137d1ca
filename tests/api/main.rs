//! Integration tests: the real server over HTTP, on a real PostgreSQL database per test.

mod adapters;
mod auth;
mod binary;
mod chat;
mod errors;
mod evaluation;
mod export;
mod files;
mod fuzz_findings;
mod gguf;
mod helpers;
mod job_actions;
mod jobs;
mod openapi;
mod packaging;
mod queue;
mod real_model;
mod real_model_tuning;
mod serve_binary;
mod tensors;
mod train_cli;
mod train_loop;
mod train_parity;
mod training_jobs;
mod worker;
mod worker_lifecycle;
