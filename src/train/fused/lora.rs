//! A frozen linear layer and its LoRA adapter as one op on the CPU:
//! `y = x Wᵀ + s · (x ⊙ m) Aᵀ Bᵀ` (`m` the dropout mask, `s` the adapter's scale with the
//! dropout's `1/keep`). Composed, every module keeps the mask in f32, the dropped input, the
//! low-rank product and the frozen output for the backward pass — four activation-sized tensors
//! per module; here only the `[rows, r]` product and the u8 mask are kept, and the backward pass
//! is written out: `dB = s gᵀ z`, `dA = s (g B)ᵀ (x ⊙ m)`, `dx = g W + s ((g B) A) ⊙ m`.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor, bail};

use super::{fused, scaled_add, slice, with_data};
use crate::train::ops::Frozen;

/// `x Wᵀ + scale · (x ⊙ mask) Aᵀ Bᵀ` for `x` `[rows, in]`, the frozen `w` `[out, in]`, `a`
/// `[r, in]`, `b` `[out, r]` and an optional 0/1 u8 `mask` `[rows, in]`; `None` when the inputs do
/// not take the fused path (not f32 on the CPU).
pub fn lora_linear(
    x: &Tensor,
    w: Frozen,
    a: &Tensor,
    b: &Tensor,
    mask: Option<Tensor>,
    scale: f64,
) -> Result<Option<Tensor>> {
    if !(fused(x) && fused(a) && fused(b)) {
        return Ok(None);
    }
    let mask = mask.map(|m| m.contiguous()).transpose()?;
    let op = LoraLinear {
        w,
        mask,
        scale: scale as f32,
        low_rank: Mutex::new(None),
    };
    x.contiguous()?
        .apply_op3(&a.contiguous()?, &b.contiguous()?, op)
        .map(Some)
}

struct LoraLinear {
    w: Frozen,
    mask: Option<Tensor>,
    scale: f32,
    /// `z = (x ⊙ m) Aᵀ`, `[rows, r]`, from the forward pass.
    low_rank: Mutex<Option<Vec<f32>>>,
}

/// `dst (m×n, row-major) = [dst +] beta · lhs (m×k) · rhs (k×n)`, strides as (row, column).
#[allow(clippy::too_many_arguments)]
fn gemm(
    (m, n, k): (usize, usize, usize),
    dst: &mut [f32],
    accumulate: bool,
    lhs: (&[f32], usize, usize),
    rhs: (&[f32], usize, usize),
    beta: f32,
    parallel: bool,
) {
    let threads = candle_core::utils::get_num_threads();
    let parallelism = match parallel && threads > 1 {
        true => gemm::Parallelism::Rayon(threads),
        false => gemm::Parallelism::None,
    };
    // SAFETY: the callers pass buffers of at least the sizes the dimensions and strides reach.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            lhs.0.as_ptr(),
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0.as_ptr(),
            rhs.2 as isize,
            rhs.1 as isize,
            1.0,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

impl CustomOp3 for LoraLinear {
    fn name(&self) -> &'static str {
        "ferrotune-lora-linear"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, a, b) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (rows, input) = l1.shape().dims2()?;
        let (rank, out) = (l2.dims()[0], l3.dims()[0]);
        let w = self.w.weight(DType::F32, &candle_core::Device::Cpu)?;
        if w.dims() != [out, input] || a.len() != rank * input || b.len() != out * rank {
            bail!("lora linear: shapes do not fit");
        }
        let mut y = vec![0f32; rows * out];
        with_data(&w, |w| {
            gemm(
                (rows, out, input),
                &mut y,
                false,
                (x, input, 1),
                (w, 1, input),
                1.0,
                true,
            );
            Ok(())
        })?;
        let dropped;
        let input_of_a = match &self.mask {
            None => x,
            Some(m) => {
                dropped = with_u8(m, |m| {
                    Ok(x.iter()
                        .zip(m)
                        .map(|(x, m)| x * f32::from(*m))
                        .collect::<Vec<_>>())
                })?;
                &dropped[..]
            }
        };
        let mut z = vec![0f32; rows * rank];
        gemm(
            (rows, rank, input),
            &mut z,
            false,
            (input_of_a, input, 1),
            (a, 1, input),
            1.0,
            true,
        );
        gemm(
            (rows, out, rank),
            &mut y,
            true,
            (&z, rank, 1),
            (b, 1, rank),
            self.scale,
            true,
        );
        *self.low_rank.lock().unwrap_or_else(|e| e.into_inner()) = Some(z);
        Ok((CpuStorage::F32(y), Shape::from((rows, out))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        a: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        g: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (x, a, b, g) = (x.detach(), a.detach(), b.detach(), g.detach().contiguous()?);
        let (rows, rank) = (x.dim(0)?, a.dim(0)?);
        let z = self
            .low_rank
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(z) = z else {
            bail!("lora linear: the backward pass ran twice")
        };
        let z = Tensor::from_vec(z, (rows, rank), x.device())?;
        let s = f64::from(self.scale);
        let gb = g.matmul(&b)?;
        let db = (g.t()?.matmul(&z)? * s)?;
        let mask = self
            .mask
            .as_ref()
            .map(|m| m.to_dtype(DType::F32))
            .transpose()?;
        let dropped = match &mask {
            Some(m) => (&x * m)?,
            None => x.clone(),
        };
        let da = (gb.t()?.matmul(&dropped)? * s)?;
        let low = match &mask {
            Some(m) => (gb.matmul(&a)? * m)?,
            None => gb.matmul(&a)?,
        };
        let w = self.w.weight(DType::F32, x.device())?;
        let dx = scaled_add(&g.matmul(&w)?, &low, s)?;
        Ok((Some(dx), Some(da), Some(db)))
    }
}

/// Run `f` on the contiguous u8 data of the CPU tensor `t`.
fn with_u8<R>(t: &Tensor, f: impl FnOnce(&[u8]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (candle_core::Storage::Cpu(CpuStorage::U8(v)), Some((start, end))) => f(&v[start..end]),
        _ => bail!("lora linear: the mask must be contiguous u8 on the CPU"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::ops::testing::{compare, var};
    use candle_core::Device;

    #[test]
    fn matches_the_composed_layer_in_value_and_gradients() {
        let (rows, input, out, rank) = (7, 12, 10, 3);
        let x = var(&[rows, input], 1.0);
        let a = var(&[rank, input], 0.5);
        let b = var(&[out, rank], 0.5);
        let w = Tensor::randn(0f32, 1.0, (out, input), &Device::Cpu).unwrap();
        let flags: Vec<u8> = (0..rows * input).map(|i| u8::from(i % 3 != 0)).collect();
        let mask = Tensor::from_vec(flags, (rows, input), &Device::Cpu).unwrap();
        let g = Tensor::randn(0f32, 1.0, (rows, out), &Device::Cpu).unwrap();
        for m in [None, Some(mask)] {
            let (xt, at, bt) = (x.as_tensor(), a.as_tensor(), b.as_tensor());
            let input_of_a = match &m {
                Some(m) => (xt * m.to_dtype(DType::F32).unwrap()).unwrap(),
                None => xt.clone(),
            };
            let reference = (xt.matmul(&w.t().unwrap()).unwrap()
                + (input_of_a
                    .matmul(&at.t().unwrap())
                    .unwrap()
                    .matmul(&bt.t().unwrap())
                    .unwrap()
                    * 2.5)
                    .unwrap())
            .unwrap();
            for v in [&x, &a, &b] {
                let ours = lora_linear(xt, Frozen::Dense(w.clone()), at, bt, m.clone(), 2.5)
                    .unwrap()
                    .unwrap();
                let (value, grad, _, _) = compare(v, ours, reference.clone(), &g);
                assert!(value < 1e-5, "values differ by {value}");
                assert!(grad < 1e-5, "gradients differ by {grad}");
            }
        }
    }
}
