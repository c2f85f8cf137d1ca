//! Fused CPU kernels for the training passes: RMSNorm, `silu(gate) · up`, rotary embeddings and
//! the LoRA scale-and-add, each one pass over its data forward and one backward, with the
//! backward written out by hand instead of candle's chain of element-wise ops (each of which
//! reads and writes a full-size buffer, and keeps it for its own backward).
//!
//! They run for contiguous f32 tensors on the CPU; any other dtype or device takes the composed
//! candle ops, which compute the same thing. Tests hold both to the same values and gradients.
//! Causal attention over a packed row is in [`attention`].

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, D, DType, Layout, Result, Shape};
use candle_core::{Storage, Tensor, bail};
use rayon::prelude::*;

pub mod attention;
pub mod lora;

/// Elements per parallel work item of the element-wise kernels.
const CHUNK: usize = 16 * 1024;

/// True when `t` takes the fused kernels (f32 on the CPU).
pub(crate) fn fused(t: &Tensor) -> bool {
    t.device().is_cpu() && t.dtype() == DType::F32
}

/// The contiguous f32 data of `storage` under `layout`.
pub(crate) fn slice<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("fused op: the input is not contiguous")
    };
    match storage {
        CpuStorage::F32(v) => Ok(&v[start..end]),
        _ => bail!("fused op: f32 only"),
    }
}

/// Run `f` on the contiguous f32 data of the CPU tensor `t`.
pub(crate) fn with_data<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(s) => f(slice(s, layout)?),
        _ => bail!("fused op: CPU only"),
    }
}

/// A fresh output of `n` elements filled by `fill(chunk_start, chunk)` over parallel chunks whose
/// starts are multiples of `unit` (a row length, so that no row is split).
fn par_fill(n: usize, unit: usize, fill: impl Fn(usize, &mut [f32]) + Sync) -> Vec<f32> {
    let mut out = vec![0f32; n];
    let chunk = CHUNK.div_ceil(unit.max(1)) * unit.max(1);
    out.par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, c)| fill(i * chunk, c));
    out
}

// ---------------------------------------------------------------- RMSNorm

/// `x / sqrt(mean(x²) + eps) * weight` over the last dimension, `weight` frozen. Computed in f32
/// (as the composed path does for other dtypes).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if fused(x) && weight.dtype() == DType::F32 && weight.device().is_cpu() {
        return x.contiguous()?.apply_op1(RmsNorm {
            weight: weight.contiguous()?,
            eps: eps as f32,
        });
    }
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let rms = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?;
    x.broadcast_div(&rms)?
        .to_dtype(dtype)?
        .broadcast_mul(weight)
}

struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

/// `1 / sqrt(mean(row²) + eps)`.
fn inv_rms(row: &[f32], eps: f32) -> f32 {
    let ss: f32 = row.iter().map(|v| v * v).sum();
    1.0 / (ss / row.len() as f32 + eps).sqrt()
}

impl CustomOp1 for RmsNorm {
    fn name(&self) -> &'static str {
        "ferrotune-rms-norm"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let out = with_data(&self.weight, |w| {
            let h = w.len();
            Ok(par_fill(x.len(), h, |start, out| {
                for (o, xr) in out.chunks_mut(h).zip(x[start..].chunks(h)) {
                    let r = inv_rms(xr, self.eps);
                    for ((o, x), w) in o.iter_mut().zip(xr).zip(w) {
                        *o = x * r * w;
                    }
                }
            }))
        })?;
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let dy = dy.contiguous()?;
        let op = RmsNormBackward {
            weight: self.weight.clone(),
            eps: self.eps,
        };
        Ok(Some(x.apply_op2_no_bwd(&dy, &op)?))
    }
}

/// `dx = r · dn − x · r³ · mean(dn ⊙ x)` with `dn = dy ⊙ weight`, `r = 1/rms(x)`.
struct RmsNormBackward {
    weight: Tensor,
    eps: f32,
}

impl CustomOp2 for RmsNormBackward {
    fn name(&self) -> &'static str {
        "ferrotune-rms-norm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (x, dy) = (slice(s1, l1)?, slice(s2, l2)?);
        let out = with_data(&self.weight, |w| {
            let h = w.len();
            Ok(par_fill(x.len(), h, |start, out| {
                let rows = out
                    .chunks_mut(h)
                    .zip(x[start..].chunks(h).zip(dy[start..].chunks(h)));
                for (o, (xr, gr)) in rows {
                    let r = inv_rms(xr, self.eps);
                    let dot: f32 = xr.iter().zip(gr).zip(w).map(|((x, g), w)| x * g * w).sum();
                    let c = r * r * r * dot / h as f32;
                    for (((o, x), g), w) in o.iter_mut().zip(xr).zip(gr).zip(w) {
                        *o = r * g * w - x * c;
                    }
                }
            }))
        })?;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

// ---------------------------------------------------------------- SiLU · up

/// `silu(gate) ⊙ up` (the SwiGLU product), differentiable in both.
pub fn silu_mul(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    if fused(gate) && fused(up) && gate.shape() == up.shape() {
        return gate.contiguous()?.apply_op2(&up.contiguous()?, SiluMul);
    }
    gate.silu()? * up
}

struct SiluMul;

fn sigmoid(v: f32) -> f32 {
    1.0 / (1.0 + (-v).exp())
}

impl CustomOp2 for SiluMul {
    fn name(&self) -> &'static str {
        "ferrotune-silu-mul"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (g, u) = (slice(s1, l1)?, slice(s2, l2)?);
        let out = par_fill(g.len(), 1, |start, out| {
            for ((o, g), u) in out.iter_mut().zip(&g[start..]).zip(&u[start..]) {
                *o = g * sigmoid(*g) * u;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        gate: &Tensor,
        up: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // One pass writes both gradients side by side: [2, n].
        let both = gate.apply_op3_no_bwd(up, &dy.contiguous()?, &SiluMulBackward)?;
        let dg = both.get(0)?.reshape(gate.shape())?;
        let du = both.get(1)?.reshape(up.shape())?;
        Ok((Some(dg), Some(du)))
    }
}

/// `dgate = dy ⊙ up ⊙ σ(g)(1 + g(1 − σ(g)))`, `dup = dy ⊙ silu(g)`, stacked as `[2, n]`.
struct SiluMulBackward;

impl CustomOp3 for SiluMulBackward {
    fn name(&self) -> &'static str {
        "ferrotune-silu-mul-backward"
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
        let (g, u, dy) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let n = g.len();
        let mut out = vec![0f32; 2 * n];
        let (dg, du) = out.split_at_mut(n);
        dg.par_chunks_mut(CHUNK)
            .zip(du.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(i, (dg, du))| {
                let s = i * CHUNK;
                let inputs = g[s..].iter().zip(&u[s..]).zip(&dy[s..]);
                for ((dg, du), ((g, u), d)) in dg.iter_mut().zip(du.iter_mut()).zip(inputs) {
                    let sg = sigmoid(*g);
                    *dg = d * u * sg * (1.0 + g * (1.0 - sg));
                    *du = d * g * sg;
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((2, n))))
    }
}

// ---------------------------------------------------------------- RoPE

/// `scale · (x ⊙ cos + rotate_half(x) ⊙ sin)` for `x` `[b, heads, t, head_dim]` (tables shared by
/// every row and head) or `[t, heads, head_dim]` (token-major, as projections come out), and
/// tables `[t, head_dim]` whose two halves are equal (as [`super::model::rope`] builds them), so
/// that the backward pass is the same rotation by `−sin`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor, scale: f64) -> Result<Tensor> {
    let token_major = x.rank() == 3;
    if fused(x) && fused(cos) && cos.rank() == 2 && (token_major || x.rank() == 4) {
        return x.contiguous()?.apply_op1(Rope {
            cos: cos.contiguous()?,
            sin: sin.contiguous()?,
            scale: scale as f32,
            sign: 1.0,
            token_major,
        });
    }
    let (cos, sin) = match token_major {
        true => (cos.unsqueeze(1)?, sin.unsqueeze(1)?),
        false => (cos.clone(), sin.clone()),
    };
    let hd = x.dim(D::Minus1)?;
    let x1 = x.narrow(D::Minus1, 0, hd / 2)?;
    let x2 = x.narrow(D::Minus1, hd / 2, hd / 2)?;
    let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
    let y = x.broadcast_mul(&cos)?.add(&rotated.broadcast_mul(&sin)?)?;
    if scale == 1.0 { Ok(y) } else { y * scale }
}

struct Rope {
    cos: Tensor,
    sin: Tensor,
    scale: f32,
    /// 1 forward, −1 for the backward (the transposed rotation).
    sign: f32,
    /// `[t, heads, head_dim]` rather than `[b, heads, t, head_dim]`.
    token_major: bool,
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "ferrotune-rope"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l)?;
        let (t, hd) = self.cos.dims2()?;
        let half = hd / 2;
        let dims = l.dims();
        let fits = match self.token_major {
            true => dims.len() == 3 && dims[0] == t,
            false => dims.len() == 4 && dims[2] == t,
        };
        if !fits || dims.last() != Some(&hd) {
            bail!("rope: input {dims:?} does not fit tables [{t}, {hd}]");
        }
        // Rows of head_dim values; which position a row has depends on the layout.
        let heads = dims[dims.len() - 2];
        let position = |row: usize| match self.token_major {
            true => row / heads,
            false => row % t,
        };
        let out = with_data(&self.cos, |cos| {
            with_data(&self.sin, |sin| {
                Ok(par_fill(x.len(), hd, |start, out| {
                    for (k, (o, xr)) in out.chunks_mut(hd).zip(x[start..].chunks(hd)).enumerate() {
                        let pos = position(start / hd + k);
                        let (c, sn) = (&cos[pos * hd..][..half], &sin[pos * hd..][..half]);
                        let (x1, x2) = xr.split_at(half);
                        let (o1, o2) = o.split_at_mut(half);
                        for i in 0..half {
                            let s = self.sign * sn[i];
                            o1[i] = self.scale * (x1[i] * c[i] - x2[i] * s);
                            o2[i] = self.scale * (x2[i] * c[i] + x1[i] * s);
                        }
                    }
                }))
            })
        })?;
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<Option<Tensor>> {
        let op = Rope {
            cos: self.cos.clone(),
            sin: self.sin.clone(),
            scale: self.scale,
            sign: -self.sign,
            token_major: self.token_major,
        };
        Ok(Some(dy.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

// ---------------------------------------------------------------- LoRA scale-and-add

/// `y + scale · update` (the LoRA update added to the frozen output).
pub fn scaled_add(y: &Tensor, update: &Tensor, scale: f64) -> Result<Tensor> {
    if fused(y) && fused(update) && y.shape() == update.shape() {
        return y
            .contiguous()?
            .apply_op2(&update.contiguous()?, ScaledAdd(scale as f32));
    }
    y + (update * scale)?
}

struct ScaledAdd(f32);

impl CustomOp2 for ScaledAdd {
    fn name(&self) -> &'static str {
        "ferrotune-scaled-add"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (y, u) = (slice(s1, l1)?, slice(s2, l2)?);
        let out = par_fill(y.len(), 1, |start, out| {
            for ((o, y), u) in out.iter_mut().zip(&y[start..]).zip(&u[start..]) {
                *o = y + self.0 * u;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        _y: &Tensor,
        _u: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(dy.clone()), Some((dy * f64::from(self.0))?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::ops::testing::{compare, var};
    use candle_core::{Device, Var};

    /// `ours` and `reference` of the same inputs agree in value and in every input's gradient.
    fn agree(inputs: &[&Var], ours: Tensor, reference: Tensor, tol: f32) {
        let w = Tensor::randn(0f32, 1.0, ours.shape(), &Device::Cpu).unwrap();
        for (i, x) in inputs.iter().enumerate() {
            let (value, grad, _, _) = compare(x, ours.clone(), reference.clone(), &w);
            assert!(value < tol, "values differ by {value}");
            assert!(grad < tol, "gradients of input {i} differ by {grad}");
        }
    }

    #[test]
    fn rms_norm_matches_the_composed_ops() {
        let x = var(&[2, 3, 48], 2.0);
        let w = Tensor::randn(1f32, 0.3, 48, &Device::Cpu).unwrap();
        let ours = rms_norm(x.as_tensor(), &w, 1e-5).unwrap();
        let reference = (x.as_tensor().broadcast_div(
            &(x.as_tensor()
                .sqr()
                .unwrap()
                .mean_keepdim(D::Minus1)
                .unwrap()
                + 1e-5)
                .unwrap()
                .sqrt()
                .unwrap(),
        ))
        .unwrap()
        .broadcast_mul(&w)
        .unwrap();
        agree(&[&x], ours, reference, 1e-5);
    }

    #[test]
    fn silu_mul_matches_the_composed_ops() {
        // More elements than one parallel chunk, so chunk boundaries are crossed.
        let (g, u) = (var(&[3, CHUNK / 2 + 7], 3.0), var(&[3, CHUNK / 2 + 7], 1.0));
        let ours = silu_mul(g.as_tensor(), u.as_tensor()).unwrap();
        let reference = (g.as_tensor().silu().unwrap() * u.as_tensor()).unwrap();
        agree(&[&g, &u], ours, reference, 1e-5);
    }

    #[test]
    fn rope_matches_the_composed_ops() {
        let x = var(&[2, 3, 5, 8], 1.0);
        let angles = Tensor::randn(0f32, 2.0, (5, 4), &Device::Cpu).unwrap();
        let angles = Tensor::cat(&[&angles, &angles], 1).unwrap();
        let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
        let ours = rope(x.as_tensor(), &cos, &sin, 0.5).unwrap();
        let hd = 8;
        let xt = x.as_tensor();
        let x1 = xt.narrow(3, 0, hd / 2).unwrap();
        let x2 = xt.narrow(3, hd / 2, hd / 2).unwrap();
        let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], 3).unwrap();
        let reference = ((xt.broadcast_mul(&cos).unwrap() + rotated.broadcast_mul(&sin).unwrap())
            .unwrap()
            * 0.5)
            .unwrap();
        agree(&[&x], ours, reference, 1e-5);
        // Token-major: [t, heads, head_dim] gives the same rows, transposed.
        let tm = var(&[5, 3, 8], 1.0);
        let ours = rope(tm.as_tensor(), &cos, &sin, 0.5).unwrap();
        let heads_major = tm
            .as_tensor()
            .transpose(0, 1)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let reference = rope(&heads_major, &cos, &sin, 0.5)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .transpose(0, 1)
            .unwrap();
        agree(&[&tm], ours, reference, 1e-5);
    }

    #[test]
    fn scaled_add_matches_the_composed_ops() {
        let (y, u) = (var(&[4, 9], 1.0), var(&[4, 9], 1.0));
        let ours = scaled_add(y.as_tensor(), u.as_tensor(), 4.0).unwrap();
        let reference = (y.as_tensor() + (u.as_tensor() * 4.0).unwrap()).unwrap();
        agree(&[&y, &u], ours, reference, 1e-5);
    }

    #[test]
    fn other_dtypes_take_the_composed_path() {
        let x = Tensor::randn(0f32, 1.0, (2, 8), &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let w = Tensor::ones(8, DType::BF16, &Device::Cpu).unwrap();
        assert_eq!(rms_norm(&x, &w, 1e-5).unwrap().dtype(), DType::BF16);
        assert_eq!(silu_mul(&x, &x).unwrap().dtype(), DType::BF16);
    }
}
