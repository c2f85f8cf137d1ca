//! NormalFloat-4 (Dettmers et al., "QLoRA", arXiv:2305.14314): each block of 64 weights of the
//! flattened tensor is scaled by its absolute maximum and every value stored as the index of the
//! nearest of 16 levels that split the standard normal distribution into equal-mass bins (the
//! paper's asymmetric construction with an exact zero). Double quantization stores the block
//! scales again in 8 bits: the mean is subtracted, then groups of 256 scales share one f32 step
//! (linear int8 here, where bitsandbytes uses its dynamic 8-bit map).
//!
//! Dequantizing is a few device ops — a gather of value pairs from a 256-entry table indexed by
//! the packed bytes (widened to u32), and a broadcast multiply by the block scales — so it runs
//! unchanged on the CPU and on CUDA.

use candle_core::{DType, Device, Result, Tensor};

/// Weights per scale.
pub const BLOCK: usize = 64;
/// Scales per step of the double quantization.
pub const SCALE_GROUP: usize = 256;

/// The 16 NF4 levels, as published with QLoRA (and used by bitsandbytes).
pub const LEVELS: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// A tensor stored in NF4 on a device.
pub struct Nf4Tensor {
    dims: Vec<usize>,
    /// Two codes per byte, the first in the high nibble; the last block zero-padded.
    codes: Tensor,
    scales: Scales,
    /// `[256, 2]` f32: the two levels a byte stands for.
    pairs: Tensor,
}

enum Scales {
    /// `[blocks, 1]` f32.
    Plain(Tensor),
    /// 8-bit codes (offset 128) of `scale − mean`, in groups of [`SCALE_GROUP`] with one step each.
    Double {
        codes: Tensor,
        steps: Tensor,
        mean: f64,
        blocks: usize,
    },
}

impl Nf4Tensor {
    /// Quantize `t` (any shape and dtype) onto `device`, with double quantization of the scales
    /// when `double` is set.
    pub fn quantize(t: &Tensor, double: bool, device: &Device) -> Result<Self> {
        let dims = t.dims().to_vec();
        let values: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let blocks = values.len().div_ceil(BLOCK);
        let mut absmax = Vec::with_capacity(blocks);
        let mut codes = vec![0u8; blocks * BLOCK / 2];
        for (b, block) in values.chunks(BLOCK).enumerate() {
            let m = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            absmax.push(m);
            for (i, v) in block.iter().enumerate() {
                let code = nearest(if m > 0.0 { v / m } else { 0.0 });
                let at = b * BLOCK + i;
                codes[at / 2] |= if at.is_multiple_of(2) {
                    code << 4
                } else {
                    code
                };
            }
        }
        let scales = if double {
            double_quantize(&absmax, device)?
        } else {
            Scales::Plain(Tensor::from_vec(absmax, (blocks, 1), device)?)
        };
        let len = codes.len();
        let pairs: Vec<f32> = (0..=255u8)
            .flat_map(|b| [LEVELS[usize::from(b >> 4)], LEVELS[usize::from(b & 15)]])
            .collect();
        Ok(Self {
            dims,
            codes: Tensor::from_vec(codes, len, device)?,
            scales,
            pairs: Tensor::from_vec(pairs, (256, 2), device)?,
        })
    }

    /// The stored tensor's shape.
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    /// Bytes held on the device (codes and scales; the 2 KiB table not counted).
    pub fn storage_bytes(&self) -> usize {
        let scales = match &self.scales {
            Scales::Plain(t) => t.elem_count() * 4,
            Scales::Double { codes, steps, .. } => codes.elem_count() + steps.elem_count() * 4,
        };
        self.codes.elem_count() + scales
    }

    /// The block scales, `[blocks, 1]` f32.
    fn absmax(&self) -> Result<Tensor> {
        match &self.scales {
            Scales::Plain(t) => Ok(t.clone()),
            Scales::Double {
                codes,
                steps,
                mean,
                blocks,
            } => codes
                .to_dtype(DType::F32)?
                .affine(1.0, -128.0)?
                .reshape((steps.elem_count(), SCALE_GROUP))?
                .broadcast_mul(steps)?
                .affine(1.0, *mean)?
                .flatten_all()?
                .narrow(0, 0, *blocks)?
                .reshape((*blocks, 1)),
        }
    }

    /// The dense tensor in `dtype`, on the tensor's device.
    pub fn dequantize(&self, dtype: DType) -> Result<Tensor> {
        if self.codes.device().is_cpu() {
            self.dequantize_on_host()?.to_dtype(dtype)
        } else {
            self.dequantize_with_ops()?.to_dtype(dtype)
        }
    }
    /// [`Self::dequantize`] on the CPU in one pass over the codes (the same products, so the
    /// same values as the device ops), spread over rayon's threads.
    fn dequantize_on_host(&self) -> Result<Tensor> {
        use rayon::prelude::*;
        let n: usize = self.dims.iter().product();
        let absmax: Vec<f32> = self.absmax()?.flatten_all()?.to_vec1()?;
        let (storage, layout) = self.codes.storage_and_layout();
        let candle_core::Storage::Cpu(cpu) = &*storage else {
            candle_core::bail!("NF4 codes are not on the CPU");
        };
        let codes = &cpu.as_slice::<u8>()?[layout.start_offset()..];
        let mut out = vec![0f32; absmax.len() * BLOCK];
        // 64 blocks a task: large enough that scheduling costs nothing.
        const TASK: usize = 64;
        out.par_chunks_mut(BLOCK * TASK)
            .zip(codes.par_chunks(BLOCK / 2 * TASK))
            .zip(absmax.par_chunks(TASK))
            .for_each(|((out, codes), scales)| {
                for ((block, bytes), m) in out
                    .chunks_exact_mut(BLOCK)
                    .zip(codes.chunks_exact(BLOCK / 2))
                    .zip(scales)
                {
                    for (pair, b) in block.chunks_exact_mut(2).zip(bytes) {
                        pair[0] = LEVELS[usize::from(b >> 4)] * m;
                        pair[1] = LEVELS[usize::from(b & 15)] * m;
                    }
                }
            });
        out.truncate(n);
        Tensor::from_vec(out, self.dims.as_slice(), &Device::Cpu)
    }

    /// [`Self::dequantize`] through device ops (any device; tests compare it with the host loop).
    fn dequantize_with_ops(&self) -> Result<Tensor> {
        let n: usize = self.dims.iter().product();
        // u32 indices: candle's index-select reads the largest index of the type (here byte 255,
        // two top levels) as "no row" and writes zeros.
        self.pairs
            .index_select(&self.codes.to_dtype(DType::U32)?, 0)?
            .reshape((n.div_ceil(BLOCK), BLOCK))?
            .broadcast_mul(&self.absmax()?)?
            .flatten_all()?
            .narrow(0, 0, n)?
            .reshape(self.dims.as_slice())
    }
}

/// The index of the level nearest to `x` in [-1, 1].
fn nearest(x: f32) -> u8 {
    let above = LEVELS.partition_point(|l| *l < x).min(15);
    if above > 0 && (x - LEVELS[above - 1]).abs() <= (LEVELS[above] - x).abs() {
        above as u8 - 1
    } else {
        above as u8
    }
}

fn double_quantize(absmax: &[f32], device: &Device) -> Result<Scales> {
    let blocks = absmax.len();
    let mean = absmax.iter().map(|a| f64::from(*a)).sum::<f64>() / blocks.max(1) as f64;
    let groups = blocks.div_ceil(SCALE_GROUP);
    let mut codes = vec![128u8; groups * SCALE_GROUP];
    let mut steps = Vec::with_capacity(groups);
    for (g, group) in absmax.chunks(SCALE_GROUP).enumerate() {
        let centred: Vec<f64> = group.iter().map(|a| f64::from(*a) - mean).collect();
        let step = centred.iter().fold(0f64, |m, c| m.max(c.abs())) / 127.0;
        steps.push(step as f32);
        for (i, c) in centred.iter().enumerate() {
            let q = if step > 0.0 { (c / step).round() } else { 0.0 };
            codes[g * SCALE_GROUP + i] = (q.clamp(-127.0, 127.0) + 128.0) as u8;
        }
    }
    let len = codes.len();
    Ok(Scales::Double {
        codes: Tensor::from_vec(codes, len, device)?,
        steps: Tensor::from_vec(steps, (groups, 1), device)?,
        mean,
        blocks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Half the widest gap between neighbouring levels: the most a value can move, as a
    /// fraction of its block's absolute maximum.
    fn half_gap() -> f32 {
        LEVELS.windows(2).map(|w| w[1] - w[0]).fold(0f32, f32::max) / 2.0
    }

    fn round_trip(values: &[f32], dims: &[usize], double: bool) -> Vec<f32> {
        let t = Tensor::from_slice(values, dims, &Device::Cpu).unwrap();
        let q = Nf4Tensor::quantize(&t, double, &Device::Cpu).unwrap();
        assert_eq!(q.dims(), dims);
        let back = q.dequantize(DType::F32).unwrap();
        assert_eq!(back.dims(), dims);
        back.flatten_all().unwrap().to_vec1().unwrap()
    }

    fn sample(n: usize) -> Vec<f32> {
        // Blocks of very different magnitudes, so the scales matter.
        (0..n)
            .map(|i| ((i as f32 * 0.618).sin() * (1.0 + (i / BLOCK) as f32 * 0.37)) * 0.02)
            .collect()
    }

    #[test]
    fn levels_are_exact_at_the_ends_and_zero() {
        // Both halves of a byte at the top level (byte 255) included.
        let mut values: Vec<f32> = LEVELS.iter().map(|l| l * 3.0).collect();
        values.extend([3.0, 3.0]);
        let mut padded = values.clone();
        padded.resize(BLOCK, 0.0);
        assert_eq!(round_trip(&padded, &[BLOCK], false)[..18], values[..]);
    }

    #[test]
    fn every_value_is_within_half_a_level_gap_of_its_block_scale() {
        // 7 × 50 = 350 values: five full blocks and a padded sixth.
        let values = sample(350);
        let back = round_trip(&values, &[7, 50], false);
        for (b, block) in values.chunks(BLOCK).enumerate() {
            let m = block.iter().fold(0f32, |m, v| m.max(v.abs()));
            for (i, v) in block.iter().enumerate() {
                let err = (back[b * BLOCK + i] - v).abs();
                assert!(
                    err <= m * half_gap() + 1e-7,
                    "block {b} value {i}: error {err}"
                );
            }
        }
        let rms = (values.iter().map(|v| v * v).sum::<f32>() / 350.0).sqrt();
        let err = (values
            .iter()
            .zip(&back)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f32>()
            / 350.0)
            .sqrt();
        assert!(err < 0.1 * rms, "relative RMS error {}", err / rms);
    }

    #[test]
    fn double_quantized_scales_add_at_most_half_a_step() {
        let values = sample(BLOCK * 300);
        let single = round_trip(&values, &[300, BLOCK], false);
        let double = round_trip(&values, &[300, BLOCK], true);
        let absmax: Vec<f32> = values
            .chunks(BLOCK)
            .map(|b| b.iter().fold(0f32, |m, v| m.max(v.abs())))
            .collect();
        let mean = absmax.iter().sum::<f32>() / absmax.len() as f32;
        for (g, group) in absmax.chunks(SCALE_GROUP).enumerate() {
            let step = group.iter().fold(0f32, |m, a| m.max((a - mean).abs())) / 127.0;
            for (j, _) in group.iter().enumerate() {
                let b = g * SCALE_GROUP + j;
                for i in b * BLOCK..(b + 1) * BLOCK {
                    // The level is the same; only its scale moved, by at most half a step.
                    let err = (double[i] - single[i]).abs();
                    assert!(
                        err <= step / 2.0 + 1e-6,
                        "value {i}: {err} > {}",
                        step / 2.0
                    );
                }
            }
        }
        let t = Tensor::from_slice(&values, (300, BLOCK), &Device::Cpu).unwrap();
        let plain = Nf4Tensor::quantize(&t, false, &Device::Cpu).unwrap();
        let dq = Nf4Tensor::quantize(&t, true, &Device::Cpu).unwrap();
        // 4 bits a weight plus 32 (plain) or about 8 (double) bits a block.
        assert_eq!(plain.storage_bytes(), 300 * BLOCK / 2 + 300 * 4);
        assert_eq!(dq.storage_bytes(), 300 * BLOCK / 2 + 512 + 2 * 4);
    }

    #[test]
    fn the_host_loop_gives_what_the_device_ops_give() {
        let values = sample(BLOCK * 700 + 13);
        for double in [false, true] {
            let t = Tensor::from_slice(&values, values.len(), &Device::Cpu).unwrap();
            let q = Nf4Tensor::quantize(&t, double, &Device::Cpu).unwrap();
            let host: Vec<f32> = q.dequantize(DType::F32).unwrap().to_vec1().unwrap();
            let ops: Vec<f32> = q.dequantize_with_ops().unwrap().to_vec1().unwrap();
            assert_eq!(host, ops, "double {double}");
        }
    }

    #[test]
    fn a_zero_block_stays_zero() {
        let back = round_trip(&[0.0; BLOCK], &[BLOCK], true);
        assert!(back.iter().all(|v| *v == 0.0));
    }
}
