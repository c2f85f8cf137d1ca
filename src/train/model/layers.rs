//! Building blocks: RMSNorm (Zhang & Sennrich, arXiv:1910.07467) and linear layers that may carry
//! a LoRA adapter. Differentiable ops only.

use candle_core::{DType, Device, Result, Tensor};

use crate::train::fused;
use crate::train::lora::AdapterVars;
use crate::train::ops::frozen_linear_of;
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
        fused::rms_norm(x, &self.weight, self.eps)
    }
}

/// The LoRA dropout masks of one training micro-batch.
///
/// For every decoder layer one `[rows, width]` tensor of 0/1 (u8) holds the masks of all its
/// adapted modules side by side (module order q, k, v, o, gate, up, down). They are drawn once
/// per micro-batch and depend only on (seed, micro-batch), so a layer recomputed for gradient
/// checkpointing sees the same masks, and a resumed run draws what an uninterrupted one would.
/// On the CPU they come from ChaCha streams; on a GPU from the device's generator, seeded once per
/// micro-batch, without a round trip through the host.
pub struct DropoutMasks {
    layers: Vec<Tensor>,
    scale: f64,
}

/// One layer's share of [`DropoutMasks`].
#[derive(Clone, Copy)]
pub struct LayerDropout<'a> {
    mask: &'a Tensor,
    scale: f64,
}

impl DropoutMasks {
    /// Masks for `rows` tokens, `widths[l]` columns for layer `l`, dropping with probability `p`.
    pub fn draw(
        seed: u64,
        micro_batch: u64,
        rows: usize,
        widths: &[usize],
        p: f32,
        device: &Device,
    ) -> Result<Self> {
        let keep = 1.0 - p;
        let mut layers = Vec::with_capacity(widths.len());
        if device.is_cpu() {
            for (l, w) in widths.iter().enumerate() {
                let position = (micro_batch << 16) | l as u64;
                let mut g = rng::stream(seed, purpose::DROPOUT, position);
                let flags = rng::keep_flags(&mut g, rows * w, keep);
                layers.push(Tensor::from_vec(flags, (rows, *w), device)?);
            }
        } else {
            let mut g = rng::stream(seed, purpose::DROPOUT, micro_batch << 16);
            device.set_seed(rand::RngCore::next_u64(&mut g))?;
            for w in widths {
                layers.push(device_keep_flags((rows, *w), keep, device)?);
            }
        }
        Ok(Self {
            layers,
            scale: f64::from(1.0 / keep),
        })
    }

    /// Layer `l`'s masks.
    pub fn layer(&self, l: usize) -> Option<LayerDropout<'_>> {
        self.layers.get(l).map(|mask| LayerDropout {
            mask,
            scale: self.scale,
        })
    }
}

/// 0/1 (u8) with probability `keep` of 1, from the device's generator: `floor(u + keep)`.
fn device_keep_flags(shape: (usize, usize), keep: f32, device: &Device) -> Result<Tensor> {
    Tensor::rand(0f32, 1f32, shape, device)?
        .affine(1.0, f64::from(keep))?
        .floor()?
        .to_dtype(DType::U8)
}

pub use crate::train::ops::Frozen as FrozenWeight;

/// A frozen linear layer, optionally with a LoRA adapter.
pub struct Linear {
    weight: FrozenWeight,
    bias: Option<Tensor>,
    lora: Option<Lora>,
}

struct Lora {
    vars: AdapterVars,
    scale: f64,
    dropout: f32,
    /// First column of this module's masks in its layer's [`DropoutMasks`].
    column: usize,
}

impl Linear {
    /// A frozen layer.
    pub fn new(weight: FrozenWeight, bias: Option<Tensor>) -> Self {
        Self {
            weight,
            bias,
            lora: None,
        }
    }

    /// Attach an adapter whose dropout masks start at `column` of its layer's masks.
    pub fn with_lora(mut self, vars: AdapterVars, scale: f64, dropout: f32, column: usize) -> Self {
        self.lora = Some(Lora {
            vars,
            scale,
            dropout,
            column,
        });
        self
    }

    /// `[out, in]` of the frozen weight.
    pub fn shape(&self) -> (usize, usize) {
        let d = match &self.weight {
            FrozenWeight::Dense(w) => w.dims(),
            FrozenWeight::Quantized(q) => q.dims(),
        };
        (d[0], d[1])
    }

    /// `x W^T + b + scale · dropout(x) A^T B^T` for `x` of shape `[..., in]`.
    pub fn forward(&self, x: &Tensor, dropout: Option<LayerDropout>) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let rows = x.elem_count() / in_dim;
        let flat = x.reshape((rows, in_dim))?;
        let frozen = || self.weight.clone();
        let mut y = match &self.lora {
            Some(l) => {
                // Inverted dropout: the 1/keep factor rides on the adapter's scale.
                let (mask, scale) = match dropout {
                    Some(d) if l.dropout > 0.0 => {
                        (Some(d.mask.narrow(1, l.column, in_dim)?), l.scale * d.scale)
                    }
                    _ => (None, l.scale),
                };
                let (a, b) = (l.vars.a.as_tensor(), l.vars.b.as_tensor());
                match fused::lora::lora_linear(&flat, frozen(), a, b, mask.clone(), scale)? {
                    Some(y) => y,
                    None => {
                        let input = match mask {
                            Some(m) => flat.mul(&m.to_dtype(x.dtype())?)?,
                            None => flat.clone(),
                        };
                        let (a, b) = (a.to_dtype(x.dtype())?, b.to_dtype(x.dtype())?);
                        let update = input.matmul(&a.t()?)?.matmul(&b.t()?)?;
                        fused::scaled_add(&frozen_linear_of(&flat, frozen())?, &update, scale)?
                    }
                }
            }
            None => frozen_linear_of(&flat, frozen())?,
        };
        if let Some(b) = &self.bias {
            y = y.broadcast_add(b)?;
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
    fn device_masks_keep_the_right_fraction() {
        let m = device_keep_flags((200, 500), 0.9, &Device::Cpu).unwrap();
        let v: Vec<u8> = m.flatten_all().unwrap().to_vec1().unwrap();
        assert!(v.iter().all(|x| *x <= 1));
        let kept = v.iter().filter(|x| **x == 1).count() as f64 / v.len() as f64;
        assert!((kept - 0.9).abs() < 0.01, "kept {kept}");
    }

    #[test]
    fn host_masks_depend_only_on_seed_micro_batch_and_layer() {
        let draw = |seed, mb| DropoutMasks::draw(seed, mb, 4, &[8, 8], 0.5, &Device::Cpu).unwrap();
        let flags = |m: &DropoutMasks, l| -> Vec<u8> {
            m.layer(l)
                .unwrap()
                .mask
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let (a, b, c) = (draw(1, 2), draw(1, 2), draw(1, 3));
        assert_eq!(flags(&a, 0), flags(&b, 0));
        assert_eq!(flags(&a, 1), flags(&b, 1));
        assert_ne!(flags(&a, 0), flags(&a, 1));
        assert_ne!(flags(&a, 0), flags(&c, 0));
        assert_eq!(a.layer(0).unwrap().scale, 2.0);
    }
}
