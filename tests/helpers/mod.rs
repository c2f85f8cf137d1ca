//! Helpers shared by the test binaries (each includes this folder as its `helpers` module, so
//! a helper one binary does not use is not dead code to it):
//!
//! - [`app`]: a real server on a fresh database per test, and typed HTTP helpers.
//! - [`binary`]: the real `ferrotune` binary, started, stopped and killed.
//! - [`fixtures`]: the tiny model, its training data and configuration, tensor comparisons.
//! - [`wait`]: [`wait::eventually`], the one way a test waits for background work.

pub mod app;
pub mod binary;
pub mod fixtures;
pub mod wait;

#[allow(unused_imports)] // tests/model uses the fixtures alone
pub use app::*;
