//! Writing tensors to a safetensors file the way PyTorch and PEFT expect it: `{"format": "pt"}`
//! metadata, names sorted, written to a temporary file and renamed so no half-written file is
//! ever left under the final name.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;

use super::{TrainError, io_err};

/// Write `tensors` to `path` atomically.
pub fn write_safetensors(path: &Path, tensors: &HashMap<String, Tensor>) -> Result<(), TrainError> {
    let metadata = HashMap::from([("format".to_owned(), "pt".to_owned())]);
    let mut sorted: Vec<(&String, &Tensor)> = tensors.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(b.0));
    let tmp = path.with_extension("safetensors.tmp");
    let written =
        safetensors::serialize_to_file(sorted, Some(metadata), &tmp).map_err(|e| match e {
            safetensors::SafeTensorError::IoError(source) => io_err(path)(source),
            other => TrainError::Invalid(format!("serializing tensors: {other}")),
        });
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written?;
    std::fs::rename(&tmp, path).map_err(io_err(path))
}
