//! The base model as one GGUF file for the llama.cpp engine: the GGUF it was imported from when
//! it came as one (served as it is, the blocks the trainer trains on), otherwise its directory
//! exported once — f32 weights as f32, others as f16 — beside its weights (or, where the
//! directory is read-only, in the cache), named by the weights' stamp.

use std::path::{Path, PathBuf};

use super::{ExportError, ExportFormat, ExportRequest, Quant, export};
use crate::model_dir::gguf::SOURCE_FILE;

/// The GGUF a base model is served from.
#[derive(Debug, Clone)]
pub struct ServedGguf {
    /// The file.
    pub path: PathBuf,
    /// Its weights are f32 (an exact copy of an f32 directory).
    pub f32: bool,
}

/// The GGUF to serve for the base model in `base_dir` named `name`; exports go into the
/// directory, or under `cache` when it cannot be written.
pub fn base_gguf(base_dir: &Path, cache: &Path, name: &str) -> Result<ServedGguf, ExportError> {
    let kept = base_dir.join(SOURCE_FILE);
    if kept.is_file() {
        return Ok(ServedGguf {
            path: kept,
            f32: false,
        });
    }
    let input = |e: &dyn std::fmt::Display| ExportError::Input(e.to_string());
    let files = crate::model_dir::weight_files(base_dir).map_err(|e| input(&e))?;
    let mut stamp = String::new();
    for f in &files {
        stamp.push_str(&crate::model_dir::file_stamp(f).map_err(|e| input(&e))?);
    }
    let config = crate::model_dir::Config::load(base_dir).map_err(|e| input(&e))?;
    let f32_weights = config.torch_dtype.as_deref() == Some("float32");
    let quant = if f32_weights { Quant::F32 } else { Quant::F16 };
    let key = {
        use sha2::Digest;
        format!("{:x}", sha2::Sha256::digest(stamp.as_bytes()))
    };
    let file = format!("served-{}-{}.gguf", &key[..16], quant_name(quant));
    let (beside, cached) = (base_dir.join(&file), cache.join(&file));
    let served = |path: PathBuf| ServedGguf {
        path,
        f32: quant == Quant::F32,
    };
    if let Some(found) = [&beside, &cached].into_iter().find(|p| p.is_file()) {
        return Ok(served(found.clone()));
    }
    let writable = tempfile::tempfile_in(base_dir).is_ok();
    let out = if writable { beside } else { cached };
    if !writable {
        std::fs::create_dir_all(cache).map_err(|source| ExportError::Write {
            path: cache.display().to_string(),
            source,
        })?;
    }
    tracing::info!(base = %base_dir.display(), gguf = %out.display(), "writing the base model as GGUF for llama.cpp");
    let request = ExportRequest {
        base_dir: base_dir.to_owned(),
        adapter_dir: None,
        format: ExportFormat::Gguf,
        quant,
        name: name.to_owned(),
    };
    export(&request, &out)?;
    Ok(served(out))
}

fn quant_name(q: Quant) -> &'static str {
    match q {
        Quant::F32 => "f32",
        _ => "f16",
    }
}
