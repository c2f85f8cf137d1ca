//! The base weights a QLoRA adapter trained against, for serving: every projection of the base
//! after a quantize → dequantize round trip through the adapter's format, written once per (base
//! weights, format) to `$FERROTUNE_HOME/models/derived/KEY/model.safetensors` and shared by every
//! adapter trained that way (the caller names the models directory). The key hashes the base directory's path and its weight files'
//! sizes and modification times, so a changed base is derived afresh.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};
use sha2::{Digest, Sha256};

use super::{Quantization, round_trip};
use crate::model_dir::{ModelDirError, file_stamp, io_err, weight_files};

/// The weight file holding `base`'s weights as a model stored as `how` sees them, derived under
/// `models_dir/derived/` (the user's model cache) the first time it is asked for.
pub fn dequantized_base(
    base: &Path,
    how: Quantization,
    models_dir: &Path,
) -> Result<PathBuf, ModelDirError> {
    let files = weight_files(base)?;
    let dir = models_dir.join("derived").join(key(base, &files, how)?);
    let out = dir.join(crate::model_dir::SINGLE_WEIGHTS);
    if out.exists() {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
    // One derivation at a time per key: two models loading at once share the result.
    let lock_path = dir.join(".lock");
    let lock = std::fs::File::create(&lock_path).map_err(io_err(&lock_path))?;
    lock.lock().map_err(io_err(&lock_path))?;
    if out.exists() {
        return Ok(out);
    }
    let mut weights: HashMap<String, Tensor> = HashMap::new();
    for file in &files {
        let tensors = candle_core::safetensors::load(file, &Device::Cpu)
            .map_err(tensor("reading base weights"))?;
        for (name, t) in tensors {
            let t = round_trip(&name, &t, how).map_err(tensor("quantizing a base weight"))?;
            weights.insert(name, t);
        }
    }
    let partial = dir.join("model.safetensors.partial");
    candle_core::safetensors::save(&weights, &partial)
        .map_err(tensor("writing derived weights"))?;
    std::fs::rename(&partial, &out).map_err(io_err(&out))?;
    tracing::info!(base = %base.display(), format = %how.label(), file = %out.display(), "derived the dequantized base");
    Ok(out)
}

fn key(base: &Path, files: &[PathBuf], how: Quantization) -> Result<String, ModelDirError> {
    let mut h = Sha256::new();
    let canonical = base.canonicalize().unwrap_or_else(|_| base.to_path_buf());
    h.update(canonical.display().to_string());
    for f in files {
        let stamp = file_stamp(f).map_err(io_err(f))?;
        h.update(format!("|{}:{stamp}", f.display()));
    }
    h.update(format!("|{}", how.label()));
    let hex: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(hex[..16].to_owned())
}

fn tensor(context: &'static str) -> impl FnOnce(candle_core::Error) -> ModelDirError {
    move |source| ModelDirError::Tensor { context, source }
}
