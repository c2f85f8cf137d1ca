//! Model tests without the HTTP server: the candle trainer's numerics and its parity with
//! PyTorch + PEFT, QLoRA, evaluation, GGUF import and export, and the offline `ferrotune train`
//! command.

#[allow(dead_code)] // shared with tests/api, which uses other helpers
#[path = "../helpers/mod.rs"]
mod helpers;

mod evaluation;
mod export;
mod gguf;
mod gguf_spm;
mod llama_engine;
mod qlora;
mod train_cli;
mod train_loop;
mod train_parity;
