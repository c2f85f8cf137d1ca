//! The mistral.rs engine (the GPU engine, selectable on the CPU): fine-tuned models are the base
//! with the adapter merged at load, resident under an LRU budget.

mod engine;
mod fan_in;
mod loader;
mod request;
mod translate;

pub use engine::{MistralEngine, MistralOptions};
