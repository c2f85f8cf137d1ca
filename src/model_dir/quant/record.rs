//! `frozen_base.json` beside an adapter: how the frozen base was stored while it trained, so
//! serving and export merge the adapter into the weights it actually saw. Written only for
//! adapters trained on quantized weights; `quantized` runs need those weights rebuilt (a round
//! trip of the base through the format), `stored_blocks` runs saw the dequantized blocks the
//! model directory already holds.

use std::path::Path;

use candle_core::quantized::GgmlDType;
use serde_json::{Value, json};

use super::{Quantization, Storage};
use crate::model_dir::ModelDirError;

/// The file in an adapter directory.
pub const FILE: &str = "frozen_base.json";

/// Record `storage` for the adapter in `dir` (nothing for a dense base).
pub fn write(dir: &Path, storage: Storage) -> std::io::Result<()> {
    let value = match storage {
        Storage::Dense => return Ok(()),
        Storage::StoredBlocks => json!({"storage": "stored_blocks"}),
        Storage::Quantize(Quantization::Nf4 { double }) => {
            json!({"storage": "quantized", "quantization_method": "nf4", "double_quantization": double})
        }
        Storage::Quantize(Quantization::Ggml(kind)) => {
            json!({"storage": "quantized", "quantization_method": ggml_name(kind)})
        }
    };
    std::fs::write(dir.join(FILE), value.to_string())
}

/// The quantization whose round trip the adapter in `dir` trained on, if any. An unreadable or
/// unknown record is an error: merging into the wrong weights would silently change the model.
pub fn read(dir: &Path) -> Result<Option<Quantization>, ModelDirError> {
    let path = dir.join(FILE);
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(None);
    };
    let bad = |why: &str| ModelDirError::Unsupported(format!("{}: {why}", path.display()));
    let v: Value = serde_json::from_str(&text).map_err(|e| bad(&e.to_string()))?;
    match v["storage"].as_str() {
        Some("stored_blocks") => return Ok(None),
        Some("quantized") => {}
        _ => return Err(bad("unknown storage")),
    }
    let method = v["quantization_method"].as_str().unwrap_or_default();
    let how = match method {
        "nf4" => Quantization::Nf4 {
            double: v["double_quantization"].as_bool().unwrap_or(false),
        },
        other => Quantization::Ggml(
            [GgmlDType::Q4_0, GgmlDType::Q4K, GgmlDType::Q8_0]
                .into_iter()
                .find(|k| ggml_name(*k) == other)
                .ok_or_else(|| bad(&format!("unknown quantization_method '{other}'")))?,
        ),
    };
    Ok(Some(how))
}

/// The `quantization_method` name of a ggml kind (llama.cpp's spelling for the others).
pub fn ggml_name(kind: GgmlDType) -> String {
    match kind {
        GgmlDType::Q4K => "q4_k".to_owned(),
        GgmlDType::Q5K => "q5_k".to_owned(),
        GgmlDType::Q6K => "q6_k".to_owned(),
        other => format!("{other:?}").to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_bad_ones_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        for how in [
            Quantization::Nf4 { double: true },
            Quantization::Nf4 { double: false },
            Quantization::Ggml(GgmlDType::Q4K),
            Quantization::Ggml(GgmlDType::Q8_0),
        ] {
            write(dir.path(), Storage::Quantize(how)).unwrap();
            assert_eq!(read(dir.path()).unwrap(), Some(how));
        }
        write(dir.path(), Storage::StoredBlocks).unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        std::fs::write(
            dir.path().join(FILE),
            r#"{"storage":"quantized","quantization_method":"gptq"}"#,
        )
        .unwrap();
        assert!(read(dir.path()).unwrap_err().to_string().contains("gptq"));
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(read(empty.path()).unwrap(), None);
    }
}
