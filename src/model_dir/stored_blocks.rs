//! `stored_blocks.gguf`: the quantized decoder projections of an imported GGUF model, kept in
//! their original ggml blocks under Hugging Face names (llama.cpp's q/k row permutation undone
//! on the raw block rows, which is exact: a row's blocks move together). The trainer stores these
//! as its frozen projections when no other quantization is asked for, so a quantized GGUF trains
//! on exactly what it stores, and the directory's dequantized `model.safetensors` — what
//! mistral.rs serves — holds the same weights.
//!
//! Beside it `import.json` records the import format, so a cache entry written before this file
//! existed is imported again.

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Content, Value};
use candle_core::quantized::{GgmlDType, QTensor, ggml_file};
use candle_core::{Device, Tensor};

/// The file in a model directory.
pub const FILE: &str = "stored_blocks.gguf";
/// The import record.
pub const RECORD: &str = "import.json";
/// The current import format (2: with [`FILE`] for quantized sources; 3: the source GGUF kept
/// whole beside it, see [`super::gguf::SOURCE_FILE`]).
pub const FORMAT: u64 = 3;

/// Whether a ggml type is a block format (not a plain float).
pub fn is_blocks(kind: GgmlDType) -> bool {
    !matches!(kind, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16)
}

/// `q` with its rows reordered as [`super::gguf::unpermute`] reorders a dense tensor's.
pub fn unpermute_rows(q: &QTensor, heads: usize) -> candle_core::Result<QTensor> {
    let dims = q.shape().dims().to_vec();
    let data = q.data()?;
    let rows = dims[0];
    let bytes = Tensor::from_slice(&data, (rows, data.len() / rows), &Device::Cpu)?;
    let moved: Vec<u8> = super::gguf::unpermute(&bytes, heads)?
        .flatten_all()?
        .to_vec1()?;
    ggml_file::qtensor_from_ggml(q.dtype(), &moved, dims, &Device::Cpu)
}

/// Write `blocks` (Hugging Face names) to [`FILE`] in `dir`, and the import record.
pub fn write(dir: &Path, blocks: &[(String, QTensor)]) -> std::io::Result<()> {
    let kinds: BTreeMap<String, usize> = blocks.iter().fold(BTreeMap::new(), |mut m, (_, q)| {
        *m.entry(format!("{:?}", q.dtype())).or_default() += 1;
        m
    });
    if !blocks.is_empty() {
        let refs: Vec<(&str, &QTensor)> = blocks.iter().map(|(n, q)| (n.as_str(), q)).collect();
        let format = Value::U64(FORMAT);
        let mut w = std::io::BufWriter::new(std::fs::File::create(dir.join(FILE))?);
        gguf_file::write(&mut w, &[("ferrotune.stored_blocks", &format)], &refs)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        std::io::Write::flush(&mut w)?;
    }
    let record = serde_json::json!({"format": FORMAT, "stored_blocks": kinds});
    std::fs::write(dir.join(RECORD), record.to_string())
}

/// Whether `dir` was imported in the current format (an imported cache entry without the record
/// predates [`FILE`]).
pub fn is_current(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join(RECORD))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["format"] == FORMAT)
}

/// The stored blocks of `dir`, on `device`, by name; empty when it has none.
pub fn read(dir: &Path, device: &Device) -> candle_core::Result<Vec<(String, QTensor)>> {
    let path = dir.join(FILE);
    if !path.exists() {
        return Ok(Vec::new());
    }
    let mut file = std::fs::File::open(&path)?;
    let content = Content::read(&mut file)?;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    names
        .into_iter()
        .map(|n| Ok((n.clone(), content.tensor(&mut file, n, device)?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermuting_block_rows_equals_unpermuting_the_dequantized_rows() {
        let w = Tensor::randn(0f32, 1.0, (12, 64), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q4_1).unwrap();
        let values = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let dense = super::super::gguf::unpermute(&q.dequantize(&Device::Cpu).unwrap(), 3).unwrap();
        let moved = unpermute_rows(&q, 3)
            .unwrap()
            .dequantize(&Device::Cpu)
            .unwrap();
        assert_eq!(values(dense), values(moved));
    }

    #[test]
    fn blocks_survive_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let w = Tensor::randn(0f32, 1.0, (4, 64), &Device::Cpu).unwrap();
        let q = QTensor::quantize(&w, GgmlDType::Q8_0).unwrap();
        let name = "model.layers.0.mlp.up_proj.weight".to_owned();
        write(dir.path(), &[(name.clone(), q)]).unwrap();
        assert!(is_current(dir.path()));
        let back = read(dir.path(), &Device::Cpu).unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].0, name);
        assert_eq!(back[0].1.dtype(), GgmlDType::Q8_0);
        assert_eq!(back[0].1.shape().dims(), &[4, 64]);
    }
}
