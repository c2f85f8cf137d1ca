//! The base model as one GGUF file for the llama.cpp engine: the GGUF it was imported from when
//! it came as one (served as it is, the blocks the trainer trains on), otherwise its directory
//! exported once — f32 weights as f32, others as f16 — beside its weights (or, where the
//! directory is read-only, in the cache), named by the weights' stamp.

use std::path::{Path, PathBuf};

use super::{ExportError, ExportFormat, ExportRequest, Quant, export};
use crate::model_dir::gguf::SOURCE_FILE;
pub use crate::model_dir::gguf::ServedGguf;
use crate::model_dir::quant::Quantization;

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

/// The GGUF of `base_dir` as the quantization round trip `how` leaves it: the base an adapter
/// trained with QLoRA over a dense base saw. The weights are derived once under `models_dir`
/// (shared with the trainer's and mistral.rs's derivation); a directory beside them holds links
/// to the base's config and tokenizer and is exported like any base.
pub fn derived_base_gguf(
    base_dir: &Path,
    how: Quantization,
    models_dir: &Path,
    name: &str,
) -> Result<ServedGguf, ExportError> {
    let input = |e: &dyn std::fmt::Display| ExportError::Input(e.to_string());
    let weights = crate::model_dir::quant::derived::dequantized_base(base_dir, how, models_dir)
        .map_err(|e| input(&e))?;
    let parent = weights
        .parent()
        .ok_or_else(|| input(&"derived weights have no directory"))?;
    let view = parent.join("model");
    if !view.is_dir() {
        link_view(base_dir, &weights, &view)?;
    }
    base_gguf(&view, &models_dir.join("served"), name)
}

/// A model directory at `view` made of links: `weights` and the base's other files but its
/// weights (config, tokenizer, templates). Built aside, then renamed into place.
fn link_view(base_dir: &Path, weights: &Path, view: &Path) -> Result<(), ExportError> {
    let write = |path: &Path| {
        let path = path.display().to_string();
        move |source| ExportError::Write { path, source }
    };
    let partial = view.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(write(&partial))?;
    let entries = std::fs::read_dir(base_dir).map_err(write(base_dir))?;
    for entry in entries.flatten() {
        let file = entry.file_name();
        let name = file.to_string_lossy();
        let weights_or_ours = name.ends_with(".safetensors")
            || name.ends_with(".gguf")
            || name.starts_with('.')
            || name == crate::model_dir::SHARD_INDEX
            || name == crate::model_dir::stored_blocks::RECORD;
        if weights_or_ours || !entry.path().is_file() {
            continue;
        }
        std::os::unix::fs::symlink(entry.path(), partial.join(&file))
            .map_err(write(&partial.join(&file)))?;
    }
    let single = partial.join(crate::model_dir::SINGLE_WEIGHTS);
    std::os::unix::fs::symlink(weights, &single).map_err(write(&single))?;
    match std::fs::rename(&partial, view) {
        Ok(()) => Ok(()),
        // Another process built it meanwhile.
        Err(_) if view.is_dir() => {
            let _ = std::fs::remove_dir_all(&partial);
            Ok(())
        }
        Err(source) => Err(ExportError::Write {
            path: view.display().to_string(),
            source,
        }),
    }
}

fn quant_name(q: Quant) -> &'static str {
    match q {
        Quant::F32 => "f32",
        _ => "f16",
    }
}
