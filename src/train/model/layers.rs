//! Building blocks: RMSNorm (Zhang & Sennrich, arXiv:1910.07467) and linear layers that may carry
//! a LoRA adapter. Differentiable ops only.

use candle_core::{D, DType, Device, Module, Result, Tensor};

use crate::train::lora::AdapterVars;
use crate::train::rng::{self, purpose};

/// Root-mean-square normalisation, computed in f32.
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// From the checkpoint's `weight`.
    pub fn new(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps }
    }

    /// `x / sqrt(mean(x²) + eps) * weight`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dtype = x.dtype();
        let x = x.to_dtype(DType::F32)?;
        let rms = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?;
        x.broadcast_div(&rms)?
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)
    }
}

/// How a forward pass runs: training (dropout on) and where dropout draws its masks from.
///
/// Masks depend only on (seed, micro-batch, layer, adapter), so a layer recomputed for gradient
/// checkpointing draws the same masks. On the CPU they come from ChaCha streams; on a GPU from
/// the device's generator, reseeded at every layer.
#[derive(Debug, Clone, Copy)]
pub struct Dropout {
    /// Job seed.
    pub seed: u64,
    /// Global micro-batch index (so every micro-batch gets fresh, reproducible masks).
    pub micro_batch: u64,
    /// Decoder layer being run.
    pub layer: u64,
}

impl Dropout {
    /// The same run at decoder layer `layer`; on a GPU this reseeds the device's generator.
    pub fn at_layer(self, layer: u64, device: &Device) -> Result<Self> {
        if !device.is_cpu() {
            let mut g = rng::stream(
                self.seed,
                purpose::DROPOUT,
                (self.micro_batch << 16) | layer,
            );
            device.set_seed(rand::RngCore::next_u64(&mut g))?;
        }
        Ok(Self { layer, ..self })
    }

    /// An inverted-dropout mask `[rows, cols]` in `dtype` for adapter `index`.
    fn mask(
        &self,
        index: u64,
        (rows, cols): (usize, usize),
        p: f32,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let keep = 1.0 - p;
        if device.is_cpu() {
            let mut g = rng::stream(self.seed, purpose::DROPOUT, self.micro_batch * 4096 + index);
            let mask = rng::keep_mask(&mut g, rows * cols, keep);
            return Tensor::from_vec(mask, (rows, cols), device)?.to_dtype(dtype);
        }
        device_rng_mask((rows, cols), p, dtype, device)
    }
}

/// An inverted-dropout mask from the device's own generator (no host round trip).
fn device_rng_mask(shape: (usize, usize), p: f32, dtype: DType, device: &Device) -> Result<Tensor> {
    let u = Tensor::rand(0f32, 1f32, shape, device)?;
    u.ge(f64::from(p))?.to_dtype(dtype)? * f64::from(1.0 / (1.0 - p))
}

/// A frozen linear layer, optionally with a LoRA adapter.
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<Lora>,
}

struct Lora {
    vars: AdapterVars,
    scale: f64,
    dropout: f32,
    index: u64,
}

impl Linear {
    /// A frozen layer.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            lora: None,
        }
    }

    /// Attach an adapter; `index` keeps its dropout stream distinct.
    pub fn with_lora(mut self, vars: AdapterVars, scale: f64, dropout: f32, index: u64) -> Self {
        self.lora = Some(Lora {
            vars,
            scale,
            dropout,
            index,
        });
        self
    }

    /// `[out, in]` of the frozen weight.
    pub fn shape(&self) -> (usize, usize) {
        let d = self.weight.dims();
        (d[0], d[1])
    }

    /// `x W^T + b + scale · dropout(x) A^T B^T` for `x` of shape `[..., in]`.
    pub fn forward(&self, x: &Tensor, dropout: Option<Dropout>) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim;
        let flat = x.reshape((rows, in_dim))?;
        let mut y =
            candle_nn::Linear::new(self.weight.clone(), self.bias.clone()).forward(&flat)?;
        if let Some(l) = &self.lora {
            let input = match dropout {
                Some(d) if l.dropout > 0.0 => {
                    flat.mul(&d.mask(l.index, (rows, in_dim), l.dropout, x.dtype(), x.device())?)?
                }
                _ => flat.clone(),
            };
            let a = l.vars.a.as_tensor().to_dtype(x.dtype())?;
            let b = l.vars.b.as_tensor().to_dtype(x.dtype())?;
            let update = input.matmul(&a.t()?)?.matmul(&b.t()?)?;
            y = (y + (update * l.scale)?)?;
        }
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = y.dim(1)?;
        y.reshape(out_dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_masks_keep_the_right_fraction_scaled_up() {
        let m = device_rng_mask((200, 500), 0.1, DType::F32, &Device::Cpu).unwrap();
        let v: Vec<f32> = m.flatten_all().unwrap().to_vec1().unwrap();
        let scale = 1.0 / 0.9f32;
        assert!(v.iter().all(|x| *x == 0.0 || (*x - scale).abs() < 1e-6));
        let kept = v.iter().filter(|x| **x > 0.0).count() as f64 / v.len() as f64;
        assert!((kept - 0.9).abs() < 0.01, "kept {kept}");
    }
}
