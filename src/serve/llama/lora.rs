//! A LoRA adapter's matrices as the engine applies them itself, row by row: for each adapted
//! weight `W` of the base, `A` (rank × in) and `B` (out × rank), read from the adapter's LoRA
//! GGUF (q/k rows already in llama.cpp's order), and the scale `alpha / rank`. A row `x` under
//! the adapter gets `W·x + scale · B·(A·x)`; [`Update::add`] adds the second term to a row that
//! llama.cpp computed the first for. The matrices stay f32, as trained (f16 copies flipped a
//! near-tie in SmolLM2's greedy answers against the trainer's).

use std::collections::HashMap;
use std::path::Path;

use candle_core::Device;
use candle_core::quantized::gguf_file::Content;

/// One adapted weight's matrices, row-major: `A` (rank × in) and `B` transposed (rank × out),
/// so both steps of a row's update read contiguous memory.
struct Pair {
    a: Vec<f32>,
    bt: Vec<f32>,
    rank: usize,
    d_in: usize,
    d_out: usize,
}

/// An adapter's matrices by the base weight's GGUF name (`blk.N.attn_q.weight`).
pub struct Lora {
    pairs: HashMap<String, Pair>,
    /// `adapter.lora.alpha`: the update is scaled by `alpha / rank` (by 1 when it is 0, as
    /// llama.cpp reads it).
    alpha: f32,
}

impl Lora {
    /// Read the LoRA GGUF at `path`.
    pub fn read(path: &Path) -> Result<Self, String> {
        let err = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
        let mut file = std::fs::File::open(path).map_err(|e| err(&e))?;
        let content = Content::read(&mut file).map_err(|e| err(&e))?;
        let alpha = content
            .metadata
            .get("adapter.lora.alpha")
            .and_then(|v| v.to_f32().ok())
            .unwrap_or(0.0);
        let mut read = |name: &str| -> Result<(Vec<f32>, usize, usize), String> {
            let t = content
                .tensor(&mut file, name, &Device::Cpu)
                .and_then(|q| q.dequantize(&Device::Cpu))
                .map_err(|e| err(&e))?;
            let (rows, cols) = t.dims2().map_err(|e| err(&e))?;
            let data = t
                .flatten_all()
                .and_then(|t| t.to_vec1())
                .map_err(|e| err(&e))?;
            Ok((data, rows, cols))
        };
        let names: Vec<String> = content
            .tensor_infos
            .keys()
            .filter_map(|n| n.strip_suffix(".lora_a").map(str::to_owned))
            .collect();
        let mut pairs = HashMap::new();
        for weight in names {
            let (a, a_rows, d_in) = read(&format!("{weight}.lora_a"))?;
            let (b, d_out, b_cols) = read(&format!("{weight}.lora_b"))?;
            if a_rows != b_cols {
                return Err(err(&format!("{weight}: A has rank {a_rows}, B {b_cols}")));
            }
            let bt = (0..a_rows * d_out)
                .map(|i| b[(i % d_out) * b_cols + i / d_out])
                .collect();
            let pair = Pair {
                a,
                bt,
                rank: a_rows,
                d_in,
                d_out,
            };
            pairs.insert(weight, pair);
        }
        if pairs.is_empty() {
            return Err(err(&"it holds no LoRA weights"));
        }
        Ok(Self { pairs, alpha })
    }

    /// Whether the adapter adapts the base weight named `weight`.
    pub fn adapts(&self, weight: &str) -> bool {
        self.pairs.contains_key(weight)
    }

    /// The update of the base weight named `weight` for products from `d_in`-wide rows to
    /// `d_out`-wide ones: `Ok(None)` when the adapter leaves the weight alone, `Err(())` when the
    /// shapes are not the weight's.
    pub fn update(
        &self,
        weight: &str,
        d_in: usize,
        d_out: usize,
    ) -> Result<Option<Update<'_>>, ()> {
        let Some(pair) = self.pairs.get(weight) else {
            return Ok(None);
        };
        if d_in != pair.d_in || d_out != pair.d_out {
            return Err(());
        }
        let scale = if self.alpha == 0.0 {
            1.0
        } else {
            self.alpha / pair.rank as f32
        };
        Ok(Some(Update { pair, scale }))
    }
}

/// One adapted weight's update, ready to add to rows.
#[derive(Clone, Copy)]
pub struct Update<'a> {
    pair: &'a Pair,
    scale: f32,
}

impl Update<'_> {
    /// The rank: the middle product's width.
    pub fn rank(&self) -> usize {
        self.pair.rank
    }

    /// Add `scale · B·(A·x)` to `out` (`W·x` so far); `h` holds the middle product (at least
    /// [`Self::rank`] wide).
    ///
    /// # Safety
    /// `x` and `out` point at rows of the widths [`Lora::update`] was asked for, in memory
    /// nothing else touches during the call.
    pub unsafe fn add(&self, x: *const f32, out: *mut f32, h: &mut [f32]) {
        let p = self.pair;
        // SAFETY: the caller's promise.
        let (x, out) = unsafe {
            (
                std::slice::from_raw_parts(x, p.d_in),
                std::slice::from_raw_parts_mut(out, p.d_out),
            )
        };
        kernel::update(&p.a, &p.bt, self.scale, x, &mut h[..p.rank], out);
    }
}

/// One row's update, `out += B·(scale · A·x)`, with AVX2 and FMA where the CPU has them (chosen
/// at run time) and plain loops elsewhere.
mod kernel {
    /// `h = scale · A·x`, then `out += B·h` (`bt` is `B` transposed: rank × out).
    pub fn update(a: &[f32], bt: &[f32], scale: f32, x: &[f32], h: &mut [f32], out: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the functions are compiled for; the matrices
            // are rank × x.len() and rank × out.len() (checked by the caller).
            unsafe {
                x86::down(a, x, h, scale);
                x86::up(bt, h, out);
            }
            return;
        }
        let (d_in, d_out) = (x.len(), out.len());
        for (k, hk) in h.iter_mut().enumerate() {
            let row = &a[k * d_in..(k + 1) * d_in];
            *hk = scale * row.iter().zip(x).map(|(a, x)| a * x).sum::<f32>();
        }
        for (k, hk) in h.iter().enumerate() {
            let row = &bt[k * d_out..(k + 1) * d_out];
            out.iter_mut().zip(row).for_each(|(y, b)| *y += hk * b);
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use std::arch::x86_64::*;

        /// The sum of a vector's lanes.
        #[inline]
        #[target_feature(enable = "avx2,fma")]
        fn sum(v: __m256) -> f32 {
            let quad = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let pair = _mm_add_ps(quad, _mm_movehl_ps(quad, quad));
            _mm_cvtss_f32(_mm_add_ss(pair, _mm_shuffle_ps(pair, pair, 1)))
        }

        /// `a · x` over `x.len()` elements (written for opt-level 1: plain loops).
        #[target_feature(enable = "avx2,fma")]
        unsafe fn dot(a: *const f32, x: &[f32]) -> f32 {
            let (n, px) = (x.len(), x.as_ptr());
            let body = n - n % 8;
            let mut acc = _mm256_setzero_ps();
            let mut i = 0;
            while i < body {
                // SAFETY: 8 elements at i < body ≤ n of both.
                acc = unsafe {
                    _mm256_fmadd_ps(_mm256_loadu_ps(a.add(i)), _mm256_loadu_ps(px.add(i)), acc)
                };
                i += 8;
            }
            let mut total = sum(acc);
            while i < n {
                // SAFETY: element i < n of both.
                total += unsafe { *a.add(i) } * x[i];
                i += 1;
            }
            total
        }

        /// `h = scale · A·x`, `A` being `h.len()` rows of `x.len()`: eight rows at a time in
        /// one pass over `x` (written for opt-level 1: eight named accumulators).
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn down(a: &[f32], x: &[f32], h: &mut [f32], scale: f32) {
            let (n, rank) = (x.len(), h.len());
            let (pa, px) = (a.as_ptr(), x.as_ptr());
            let mut k = 0;
            while k + 8 <= rank && n.is_multiple_of(8) {
                // SAFETY: rows k..k + 8 < rank of n elements each, read 8 at a time below n.
                unsafe {
                    let r = |j: usize| pa.add((k + j) * n);
                    let (r0, r1, r2, r3, r4, r5, r6, r7) =
                        (r(0), r(1), r(2), r(3), r(4), r(5), r(6), r(7));
                    let z = _mm256_setzero_ps();
                    let (mut a0, mut a1, mut a2, mut a3) = (z, z, z, z);
                    let (mut a4, mut a5, mut a6, mut a7) = (z, z, z, z);
                    let mut i = 0;
                    while i < n {
                        let xv = _mm256_loadu_ps(px.add(i));
                        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(r0.add(i)), xv, a0);
                        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(r1.add(i)), xv, a1);
                        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(r2.add(i)), xv, a2);
                        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(r3.add(i)), xv, a3);
                        a4 = _mm256_fmadd_ps(_mm256_loadu_ps(r4.add(i)), xv, a4);
                        a5 = _mm256_fmadd_ps(_mm256_loadu_ps(r5.add(i)), xv, a5);
                        a6 = _mm256_fmadd_ps(_mm256_loadu_ps(r6.add(i)), xv, a6);
                        a7 = _mm256_fmadd_ps(_mm256_loadu_ps(r7.add(i)), xv, a7);
                        i += 8;
                    }
                    for (j, acc) in [a0, a1, a2, a3, a4, a5, a6, a7].into_iter().enumerate() {
                        h[k + j] = scale * sum(acc);
                    }
                }
                k += 8;
            }
            while k < rank {
                // SAFETY: row k < rank of n elements.
                h[k] = scale * unsafe { dot(pa.add(k * n), x) };
                k += 1;
            }
        }

        /// `out += Σ_k h[k] · bt[k]`, `bt` being `h.len()` rows of `out.len()`: one pass over
        /// `out` (written for opt-level 1: plain loops).
        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn up(bt: &[f32], h: &[f32], out: &mut [f32]) {
            let (n, rank) = (out.len(), h.len());
            let (pb, po, ph) = (bt.as_ptr(), out.as_mut_ptr(), h.as_ptr());
            let body = n - n % 8;
            let mut o = 0;
            while o < body {
                // SAFETY: 8 elements at o < body ≤ n of out and of each row k < rank.
                unsafe {
                    let mut acc = _mm256_loadu_ps(po.add(o));
                    let mut k = 0;
                    while k < rank {
                        let hk = _mm256_broadcast_ss(&*ph.add(k));
                        acc = _mm256_fmadd_ps(hk, _mm256_loadu_ps(pb.add(k * n + o)), acc);
                        k += 1;
                    }
                    _mm256_storeu_ps(po.add(o), acc);
                }
                o += 8;
            }
            while o < n {
                let mut k = 0;
                while k < rank {
                    out[o] += h[k] * bt[k * n + o];
                    k += 1;
                }
                o += 1;
            }
        }
    }
}
