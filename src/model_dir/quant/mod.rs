//! QLoRA storage of frozen weights: the decoder projections kept in 4 or 8 bits on the device —
//! ggml block formats (candle's `QTensor`) or NF4 ([`nf4`]) — and dequantized into a transient
//! dense buffer whenever a matmul needs them. Embeddings, norms and `lm_head` stay dense. A
//! quantized GGUF's own blocks are kept by the import ([`super::stored_blocks`]) so
//! such a model trains on what it stores; [`record`] notes beside an adapter how its base was
//! stored, and [`derived`] rebuilds those weights for serving.

pub mod derived;
pub mod nf4;
pub mod record;

use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Tensor};

pub use nf4::Nf4Tensor;

use crate::domain::hyperparameters::{Hyperparameters, QuantizationMethod};

/// How the frozen projections are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quantization {
    /// A ggml block format.
    Ggml(GgmlDType),
    /// NormalFloat-4, optionally with double-quantized scales.
    Nf4 {
        /// Store the block scales in 8 bits too.
        double: bool,
    },
}

impl Quantization {
    /// The name users pass (`quantization_method`).
    pub fn label(self) -> String {
        match self {
            Self::Nf4 { double: true } => "nf4 (double-quantized scales)".to_owned(),
            Self::Nf4 { double: false } => "nf4".to_owned(),
            Self::Ggml(k) => record::ggml_name(k),
        }
    }
}

/// Where a model's frozen projections come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// Dense in the compute dtype.
    Dense,
    /// Quantized as they are read.
    Quantize(Quantization),
    /// The ggml blocks an imported GGUF stored ([`super::stored_blocks`]).
    StoredBlocks,
}

impl Storage {
    /// What a run on `dir` with `hp` uses.
    pub fn for_run(dir: &std::path::Path, hp: &Hyperparameters) -> Self {
        let asked = hp.quantization().map(|m| match m {
            QuantizationMethod::Nf4 => Quantization::Nf4 {
                double: hp.quantization.double.unwrap_or(true),
            },
            QuantizationMethod::Q4_0 => Quantization::Ggml(GgmlDType::Q4_0),
            QuantizationMethod::Q4K => Quantization::Ggml(GgmlDType::Q4K),
            QuantizationMethod::Q8_0 => Quantization::Ggml(GgmlDType::Q8_0),
        });
        Self::for_model(dir, asked)
    }

    /// What a run on `dir` uses: the quantization asked for; else, without one, the blocks a
    /// quantized GGUF source stored; else dense.
    pub fn for_model(dir: &std::path::Path, asked: Option<Quantization>) -> Self {
        match asked {
            Some(q) => Self::Quantize(q),
            None if dir.join(super::stored_blocks::FILE).exists() => Self::StoredBlocks,
            None => Self::Dense,
        }
    }
}

/// The job event that says how the frozen projections are held (`None` when dense);
/// `summary` is the trainer's count of the weights held quantized.
pub fn describe(storage: Storage, summary: &str, dtype: DType) -> Option<String> {
    let rest = format!("dequantized per use; embeddings, norms and lm_head stay {dtype:?}");
    match storage {
        Storage::Dense => None,
        Storage::Quantize(how) => Some(format!(
            "QLoRA: the frozen projections are stored as {} ({summary}) and {rest}",
            how.label()
        )),
        Storage::StoredBlocks => Some(format!(
            "QLoRA: training on the GGUF's stored blocks as they are, not requantized \
             ({summary}), {rest}"
        )),
    }
}

/// One frozen weight in a quantized format, on its device.
#[derive(Clone)]
pub enum QuantizedWeight {
    /// ggml blocks.
    Ggml(Arc<QTensor>),
    /// NF4 codes and scales.
    Nf4(Arc<Nf4Tensor>),
}

impl QuantizedWeight {
    /// Quantize `t` as `how` onto `device`. ggml formats need rows a multiple of their block
    /// (see [`block_kind`]).
    pub fn quantize(t: &Tensor, how: Quantization, device: &Device) -> Result<Self> {
        Ok(match how {
            Quantization::Ggml(kind) => {
                let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
                Self::Ggml(Arc::new(QTensor::quantize_onto(&t, kind, device)?))
            }
            Quantization::Nf4 { double } => {
                Self::Nf4(Arc::new(Nf4Tensor::quantize(t, double, device)?))
            }
        })
    }

    /// The stored tensor's shape.
    pub fn dims(&self) -> &[usize] {
        match self {
            Self::Ggml(q) => q.shape().dims(),
            Self::Nf4(q) => q.dims(),
        }
    }

    /// The format's name (`nf4`, `q4_k`, `q4_1`, …).
    pub fn format(&self) -> String {
        match self {
            Self::Ggml(q) => record::ggml_name(q.dtype()),
            Self::Nf4(_) => "nf4".to_owned(),
        }
    }

    /// Bytes held on the device.
    pub fn storage_bytes(&self) -> usize {
        match self {
            Self::Ggml(q) => q.storage_size_in_bytes(),
            Self::Nf4(q) => q.storage_bytes(),
        }
    }

    /// The dense tensor in `dtype` on the weight's device: a fresh buffer on every call.
    pub fn dequantize(&self, device: &Device, dtype: DType) -> Result<Tensor> {
        match self {
            Self::Ggml(q) => q.dequantize(device)?.to_dtype(dtype),
            Self::Nf4(q) => q.dequantize(dtype),
        }
    }
}

/// The format a decoder projection's weight (`model.layers.N.*_proj.weight`) with rows of `row`
/// values takes under `how`; `None` for other tensors, and for rows no candidate block divides
/// (they stay dense). q4_k rows that 256 does not divide take q5_0, as llama.cpp does. NF4 blocks
/// the flattened tensor, so any row works.
pub fn block_kind(name: &str, row: usize, how: Quantization) -> Option<Quantization> {
    if !is_projection(name) || row == 0 {
        return None;
    }
    let candidates = match how {
        Quantization::Nf4 { .. } => return Some(how),
        Quantization::Ggml(GgmlDType::Q4K) => vec![GgmlDType::Q4K, GgmlDType::Q5_0],
        Quantization::Ggml(other) => vec![other],
    };
    candidates
        .into_iter()
        .find(|k| row.is_multiple_of(k.block_size()))
        .map(Quantization::Ggml)
}

/// Whether `name` is a decoder projection's weight, the tensors QLoRA stores quantized.
pub(in crate::model_dir) fn is_projection(name: &str) -> bool {
    name.starts_with("model.layers.") && name.ends_with("_proj.weight")
}

/// `t` after a round trip through `how`'s format, on the CPU in f32: the weights a model trained
/// on that storage actually saw (what serving and export merge its adapter into).
pub fn round_trip(name: &str, t: &Tensor, how: Quantization) -> Result<Tensor> {
    let row = t.dims().last().copied().unwrap_or(0);
    match block_kind(name, row, how) {
        Some(kind) => {
            QuantizedWeight::quantize(t, kind, &Device::Cpu)?.dequantize(&Device::Cpu, DType::F32)
        }
        None => t.to_dtype(DType::F32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(rows: usize, cols: usize) -> Tensor {
        let v: Vec<f32> = (0..rows * cols)
            .map(|i| ((i as f32 * 0.731).sin() + (i as f32 * 0.113).cos() * 0.5) * 0.05)
            .collect();
        Tensor::from_vec(v, (rows, cols), &Device::Cpu).unwrap()
    }

    /// The largest error of a round trip through `kind`, and the largest per-block bound
    /// `bound(block values)` over blocks of `block` values.
    fn worst(kind: GgmlDType, block: usize, bound: impl Fn(&[f32]) -> f32) -> (f32, f32) {
        let w = weights(8, 512);
        let back = round_trip(
            "model.layers.0.mlp.up_proj.weight",
            &w,
            Quantization::Ggml(kind),
        )
        .unwrap();
        let a: Vec<f32> = w.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = back.flatten_all().unwrap().to_vec1().unwrap();
        let mut over = (0f32, 0f32);
        for (x, y) in a.chunks(block).zip(b.chunks(block)) {
            let limit = bound(x);
            for (p, q) in x.iter().zip(y) {
                let err = (p - q).abs();
                if err - limit > over.0 - over.1 {
                    over = (err, limit);
                }
            }
        }
        over
    }

    fn absmax(x: &[f32]) -> f32 {
        x.iter().fold(0f32, |m, v| m.max(v.abs()))
    }

    fn range(x: &[f32]) -> f32 {
        let (lo, hi) = x
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, h), v| (l.min(*v), h.max(*v)));
        hi - lo
    }

    #[test]
    fn q8_0_round_trips_within_half_a_step() {
        // Half a step of absmax/127, plus what the f16 rounding of the step (2⁻¹¹ relative)
        // moves the largest code, 127 steps out.
        let bound = 0.5 + 127.0 / 2048.0;
        let (err, limit) = worst(GgmlDType::Q8_0, 32, |x| absmax(x) / 127.0 * bound + 1e-7);
        assert!(err <= limit, "error {err} over {limit}");
    }

    #[test]
    fn q4_0_round_trips_within_one_step() {
        // 16 levels of absmax/8; the value at +absmax clamps to 7 steps, a whole step off.
        let (err, limit) = worst(GgmlDType::Q4_0, 32, |x| absmax(x) / 8.0 * 1.001 + 1e-7);
        assert!(err <= limit, "error {err} over {limit}");
    }

    #[test]
    fn q4_k_round_trips_within_a_step_of_its_sub_block() {
        // 15 steps over each sub-block of 32's range, whose scale and minimum are 6-bit
        // fractions of the super-block's: allow one full step.
        let (err, limit) = worst(GgmlDType::Q4K, 32, |x| range(x) / 15.0 + 1e-6);
        assert!(err <= limit, "error {err} over {limit}");
    }

    #[test]
    fn only_projections_with_dividing_rows_are_quantized() {
        let q4k = Quantization::Ggml(GgmlDType::Q4K);
        let attn = "model.layers.3.self_attn.q_proj.weight";
        assert_eq!(block_kind(attn, 512, q4k), Some(q4k));
        assert_eq!(
            block_kind(attn, 576, q4k),
            Some(Quantization::Ggml(GgmlDType::Q5_0))
        );
        assert_eq!(block_kind(attn, 40, q4k), None);
        assert_eq!(block_kind("model.embed_tokens.weight", 512, q4k), None);
        let nf4 = Quantization::Nf4 { double: true };
        assert_eq!(block_kind(attn, 40, nf4), Some(nf4));
    }
}
