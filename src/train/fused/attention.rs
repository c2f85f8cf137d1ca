//! Causal self-attention over a packed row on the CPU, as one op with its own backward
//! (FlashAttention-2's recomputation, Dao, arXiv:2307.08691, without its tiling): per example and
//! head, `S = Q Kᵀ` with the causal mask, `P = softmax(S)`, `O = P V`; only each row's
//! log-sum-exp is kept, and the backward pass recomputes `P` from it:
//! `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(dO ⊙ O))`, `dQ = dS K`, `dK = dSᵀ Q`.
//!
//! Q, K and V stay in the projections' token-major layout (`[t, heads · head_dim]`): each head is
//! a strided matrix handed to `gemm` as it is, so there is no transpose, no key/value repetition
//! for grouped-query attention and no `[heads, t, t]` score, mask or probability tensor kept for
//! the backward pass. Examples and heads run in parallel, each matmul on one thread.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

use super::slice;

/// One attention task's share of the key-value gradients: (segment start, length, query head,
/// dK rows, dV rows).
type KeyHeadShare = (usize, usize, usize, Vec<f32>, Vec<f32>);

/// Head counts and size of one attention call.
#[derive(Debug, Clone, Copy)]
pub struct Heads {
    /// Query heads.
    pub heads: usize,
    /// Key/value heads (query head `h` uses `h / (heads / kv_heads)`).
    pub kv_heads: usize,
    /// Size of one head.
    pub head_dim: usize,
}

/// `softmax(q kᵀ + causal mask) v` within each of `segments` (`(start, len)` in the row), for
/// `q` `[t, heads · head_dim]` (rotated and scaled) and `k`, `v` `[t, kv_heads · head_dim]`, f32 on
/// the CPU. Returns `[t, heads · head_dim]`; differentiable in all three.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    segments: &[(usize, usize)],
    heads: Heads,
) -> Result<Tensor> {
    let t = q.dim(0)?;
    if segments.iter().map(|(_, l)| l).sum::<usize>() != t || heads.kv_heads == 0 {
        bail!("attention: segments do not cover the row of {t} tokens");
    }
    q.contiguous()?.apply_op3(
        &k.contiguous()?,
        &v.contiguous()?,
        Attention {
            segments: segments.to_vec(),
            heads,
            lse: Mutex::new(Vec::new()),
        },
    )
}

struct Attention {
    segments: Vec<(usize, usize)>,
    heads: Heads,
    /// Log-sum-exp of every score row, `[heads, t]`, from the forward pass.
    lse: Mutex<Vec<f32>>,
}

/// A raw pointer that parallel tasks write through, each into its own rows and columns.
#[derive(Clone, Copy)]
struct Shared(*mut f32);
// SAFETY: every task writes a region no other task touches (see the callers).
unsafe impl Send for Shared {}
unsafe impl Sync for Shared {}

impl Shared {
    /// The pointer `offset` elements on (a method, so closures capture the whole `Shared`).
    ///
    /// # Safety
    /// `offset` must stay inside the buffer.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        // SAFETY: forwarded to the caller.
        unsafe { self.0.add(offset) }
    }
}

/// A strided matrix: pointer, row stride, column stride.
#[derive(Clone, Copy)]
struct Mat(*const f32, isize, isize);

impl Mat {
    fn t(self) -> Self {
        Mat(self.0, self.2, self.1)
    }
}

/// `dst (m×n, rows dst_rs apart) = [dst +] a (m×k) · b (k×n)` on this thread.
///
/// # Safety
/// The matrices must lie inside live buffers and `dst` must not overlap `a` or `b`.
unsafe fn matmul(
    (m, n, k): (usize, usize, usize),
    dst: *mut f32,
    dst_rs: usize,
    accumulate: bool,
    a: Mat,
    b: Mat,
) {
    // SAFETY: forwarded to the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            1,
            dst_rs as isize,
            accumulate,
            a.0,
            a.2,
            a.1,
            b.0,
            b.2,
            b.1,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

impl Attention {
    /// One `(segment, head)` task per item: start, length, head.
    fn tasks(&self) -> Vec<(usize, usize, usize)> {
        self.segments
            .iter()
            .flat_map(|&(s, len)| (0..self.heads.heads).map(move |h| (s, len, h)))
            .collect()
    }

    /// Widths of a query row and a key row, and the key head of query head `h`.
    fn widths(&self) -> (usize, usize, usize) {
        let Heads {
            heads,
            kv_heads,
            head_dim,
        } = self.heads;
        (heads * head_dim, kv_heads * head_dim, heads / kv_heads)
    }
}

/// The probabilities of a `len × len` score block in place (causal: row `i` sees `0..=i`),
/// given each row's log-sum-exp, or computing it into `lse` when `compute` is set.
fn probabilities(p: &mut [f32], len: usize, lse: &mut [f32], compute: bool) {
    for (i, row) in p.chunks_mut(len).enumerate() {
        let (seen, hidden) = row.split_at_mut(i + 1);
        if compute {
            let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let sum: f32 = seen.iter().map(|s| (s - max).exp()).sum();
            lse[i] = max + sum.ln();
        }
        seen.iter_mut().for_each(|s| *s = (*s - lse[i]).exp());
        hidden.iter_mut().for_each(|s| *s = 0.0);
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "ferrotune-causal-attention"
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
        let (q, k, v) = (slice(s1, l1)?, slice(s2, l2)?, slice(s3, l3)?);
        let (qw, kw, rep) = self.widths();
        let d = self.heads.head_dim;
        let t = q.len() / qw;
        if k.len() != t * kw || v.len() != t * kw {
            bail!("attention: q, k and v do not fit the head counts");
        }
        let mut out = vec![0f32; t * qw];
        let mut lse = vec![0f32; self.heads.heads * t];
        let (o_ptr, lse_ptr) = (Shared(out.as_mut_ptr()), Shared(lse.as_mut_ptr()));
        self.tasks().into_par_iter().for_each(|(s, len, h)| {
            let g = h / rep;
            let qh = Mat(q[s * qw + h * d..].as_ptr(), qw as isize, 1);
            let kg = Mat(k[s * kw + g * d..].as_ptr(), kw as isize, 1);
            let vg = Mat(v[s * kw + g * d..].as_ptr(), kw as isize, 1);
            let mut p = vec![0f32; len * len];
            // SAFETY: task (s, h) alone writes rows s..s+len of head h's columns of `out` and
            // of `lse`; the inputs are read only.
            unsafe {
                matmul((len, len, d), p.as_mut_ptr(), len, false, qh, kg.t());
                let lse = std::slice::from_raw_parts_mut(lse_ptr.at(h * t + s), len);
                probabilities(&mut p, len, lse, true);
                let pm = Mat(p.as_ptr(), len as isize, 1);
                matmul((len, d, len), o_ptr.at(s * qw + h * d), qw, false, pm, vg);
            }
        });
        *self.lse.lock().unwrap_or_else(|e| e.into_inner()) = lse;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        dout: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dout = dout.contiguous()?;
        let guards = [q, k, v, out, &dout].map(Tensor::storage_and_layout);
        let mut data = Vec::with_capacity(5);
        for (storage, layout) in &guards {
            match &**storage {
                Storage::Cpu(s) => data.push(slice(s, layout)?),
                _ => bail!("attention: CPU only"),
            }
        }
        let [q, k, v, o, dout] = [data[0], data[1], data[2], data[3], data[4]];
        let lse = self.lse.lock().unwrap_or_else(|e| e.into_inner());
        let (qw, kw, rep) = self.widths();
        let d = self.heads.head_dim;
        let t = q.len() / qw;
        let mut dq = vec![0f32; t * qw];
        let dq_ptr = Shared(dq.as_mut_ptr());
        // Each task returns its query head's share of dK and dV ([len, d] each), summed per key
        // head afterwards: tasks of one key head would otherwise write the same rows.
        let parts: Vec<KeyHeadShare> = self
            .tasks()
            .into_par_iter()
            .map(|(s, len, h)| {
                let g = h / rep;
                let qh = Mat(q[s * qw + h * d..].as_ptr(), qw as isize, 1);
                let kg = Mat(k[s * kw + g * d..].as_ptr(), kw as isize, 1);
                let vg = Mat(v[s * kw + g * d..].as_ptr(), kw as isize, 1);
                let doh = Mat(dout[s * qw + h * d..].as_ptr(), qw as isize, 1);
                let (mut p, mut dp) = (vec![0f32; len * len], vec![0f32; len * len]);
                let (mut dk, mut dv) = (vec![0f32; len * d], vec![0f32; len * d]);
                let mut row_lse = lse[h * t + s..][..len].to_vec();
                let sq = |buf: &[f32]| Mat(buf.as_ptr(), len as isize, 1);
                // SAFETY: task (s, h) alone writes rows s..s+len of head h's columns of dq; the
                // other buffers are its own.
                unsafe {
                    matmul((len, len, d), p.as_mut_ptr(), len, false, qh, kg.t());
                    probabilities(&mut p, len, &mut row_lse, false);
                    matmul((len, d, len), dv.as_mut_ptr(), d, false, sq(&p).t(), doh);
                    matmul((len, len, d), dp.as_mut_ptr(), len, false, doh, vg.t());
                }
                for i in 0..len {
                    let at = (s + i) * qw + h * d;
                    let dot: f32 = (0..d).map(|c| dout[at + c] * o[at + c]).sum();
                    let (pr, dpr) = (&p[i * len..][..=i], &mut dp[i * len..][..len]);
                    for (j, x) in dpr.iter_mut().enumerate() {
                        *x = if j <= i { pr[j] * (*x - dot) } else { 0.0 };
                    }
                }
                // SAFETY: as above.
                unsafe {
                    matmul(
                        (len, d, len),
                        dq_ptr.at(s * qw + h * d),
                        qw,
                        false,
                        sq(&dp),
                        kg,
                    );
                    matmul((len, d, len), dk.as_mut_ptr(), d, false, sq(&dp).t(), qh);
                }
                (s, len, g, dk, dv)
            })
            .collect();
        let (mut dk, mut dv) = (vec![0f32; t * kw], vec![0f32; t * kw]);
        for (s, len, g, pk, pv) in parts {
            for i in 0..len {
                let at = (s + i) * kw + g * d;
                for c in 0..d {
                    dk[at + c] += pk[i * d + c];
                    dv[at + c] += pv[i * d + c];
                }
            }
        }
        let cpu = candle_core::Device::Cpu;
        let tensor = |data: Vec<f32>, width: usize| Tensor::from_vec(data, (t, width), &cpu);
        Ok((
            Some(tensor(dq, qw)?),
            Some(tensor(dk, kw)?),
            Some(tensor(dv, kw)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::train::ops::testing::{compare, var};
    use candle_core::{D, Device};

    /// The composed reference: per segment, heads-major, repeated key/value heads, masked softmax.
    fn reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        segments: &[(usize, usize)],
        h: Heads,
    ) -> Tensor {
        let rep = h.heads / h.kv_heads;
        let mut outs = Vec::new();
        for &(s, len) in segments {
            let split = |x: &Tensor, n: usize| {
                x.narrow(0, s, len)
                    .unwrap()
                    .reshape((len, n, h.head_dim))
                    .unwrap()
                    .transpose(0, 1)
                    .unwrap()
            };
            let repeat = |x: Tensor| {
                let (kv, l, d) = x.dims3().unwrap();
                x.unsqueeze(1)
                    .unwrap()
                    .broadcast_as((kv, rep, l, d))
                    .unwrap()
                    .reshape((kv * rep, l, d))
                    .unwrap()
            };
            let (qs, ks, vs) = (
                split(q, h.heads),
                repeat(split(k, h.kv_heads)),
                repeat(split(v, h.kv_heads)),
            );
            let mask: Vec<f32> = (0..len * len)
                .map(|i| {
                    if i % len <= i / len {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
                .collect();
            let mask = Tensor::from_vec(mask, (len, len), &Device::Cpu).unwrap();
            let scores = qs
                .matmul(&ks.t().unwrap())
                .unwrap()
                .broadcast_add(&mask)
                .unwrap();
            let probs = candle_nn::ops::softmax(&scores, D::Minus1).unwrap();
            let o = probs.matmul(&vs).unwrap().transpose(0, 1).unwrap();
            outs.push(o.reshape((len, h.heads * h.head_dim)).unwrap());
        }
        Tensor::cat(&outs, 0).unwrap()
    }

    #[test]
    fn matches_the_composed_attention_in_value_and_gradients() {
        let h = Heads {
            heads: 6,
            kv_heads: 2,
            head_dim: 8,
        };
        let segments = [(0, 7), (7, 1), (8, 12)];
        let t = 20;
        let q = var(&[t, h.heads * h.head_dim], 1.0);
        let k = var(&[t, h.kv_heads * h.head_dim], 1.0);
        let v = var(&[t, h.kv_heads * h.head_dim], 1.0);
        let (qt, kt, vt) = (q.as_tensor(), k.as_tensor(), v.as_tensor());
        let w = Tensor::randn(0f32, 1.0, (t, h.heads * h.head_dim), &Device::Cpu).unwrap();
        for x in [&q, &k, &v] {
            let ours = causal_attention(qt, kt, vt, &segments, h).unwrap();
            let (value, grad, _, _) = compare(x, ours, reference(qt, kt, vt, &segments, h), &w);
            assert!(value < 1e-5, "values differ by {value}");
            assert!(grad < 1e-4, "gradients differ by {grad}");
        }
    }

    #[test]
    fn segments_that_do_not_cover_the_row_are_refused() {
        let h = Heads {
            heads: 2,
            kv_heads: 1,
            head_dim: 4,
        };
        let q = Tensor::zeros((5, 8), candle_core::DType::F32, &Device::Cpu).unwrap();
        let kv = Tensor::zeros((5, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        assert!(causal_attention(&q, &kv, &kv, &[(0, 3)], h).is_err());
    }
}
