//! A LoRA adapter's matrices as the engine applies them itself, row by row: for each adapted
//! weight `W` of the base, `A` (rank × in) and `B` (out × rank), read from the adapter's LoRA
//! GGUF (q/k rows already in llama.cpp's order), and the scale `alpha / rank`. A row `x` under
//! the adapter gets `W·x + scale · B·(A·x)`; [`Lora::add_to`] adds the second term to rows that
//! llama.cpp computed the first for.

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

/// Rows of an f32 matrix in host memory: row `j` starts `j · stride` elements after `data`.
#[derive(Clone, Copy)]
pub struct Rows {
    /// The first row.
    pub data: *mut f32,
    /// Elements from one row to the next.
    pub stride: usize,
    /// Elements per row.
    pub width: usize,
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

    /// Add `scale · B·(A·x)` of `weight` to `n` rows of `out` computed from the rows of `x`
    /// (`out = W·x` so far); `h` holds the rank-wide middle product. `false` (nothing added)
    /// when the shapes are not the weight's.
    ///
    /// # Safety
    /// `x` and `out` hold `n` rows of their width at their stride, in memory nothing else
    /// touches during the call.
    pub unsafe fn add_to(
        &self,
        weight: &str,
        x: Rows,
        out: Rows,
        n: usize,
        h: &mut Vec<f32>,
    ) -> bool {
        let Some(p) = self.pairs.get(weight) else {
            return true;
        };
        if x.width != p.d_in || out.width != p.d_out {
            return false;
        }
        let scale = if self.alpha == 0.0 {
            1.0
        } else {
            self.alpha / p.rank as f32
        };
        h.resize(p.rank, 0.0);
        for j in 0..n {
            // SAFETY: row j of each lies inside it (the caller's promise).
            let (x, out) = unsafe {
                (
                    std::slice::from_raw_parts(x.data.add(j * x.stride), p.d_in),
                    std::slice::from_raw_parts_mut(out.data.add(j * out.stride), p.d_out),
                )
            };
            for (k, hk) in h.iter_mut().enumerate() {
                *hk = scale * kernel::dot(&p.a[k * p.d_in..(k + 1) * p.d_in], x);
            }
            for (k, hk) in h.iter().enumerate() {
                kernel::axpy(out, *hk, &p.bt[k * p.d_out..(k + 1) * p.d_out]);
            }
        }
        true
    }
}

/// The two vector operations of a row's update, with AVX2 and FMA where the CPU has them
/// (chosen at run time) and plain loops elsewhere.
mod kernel {
    /// `a · b` (equal lengths).
    pub fn dot(a: &[f32], b: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { x86::dot(a, b) };
        }
        a.iter().zip(b).map(|(x, y)| x * y).sum()
    }

    /// `y += alpha · x` (equal lengths).
    pub fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
        #[cfg(target_arch = "x86_64")]
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            // SAFETY: as above.
            return unsafe { x86::axpy(y, alpha, x) };
        }
        for (y, x) in y.iter_mut().zip(x) {
            *y += alpha * x;
        }
    }

    #[cfg(target_arch = "x86_64")]
    mod x86 {
        use std::arch::x86_64::*;

        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
            let n = a.len().min(b.len());
            let (pa, pb) = (a.as_ptr(), b.as_ptr());
            let (mut s0, mut s1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let mut i = 0;
            // SAFETY: every load reads 8 floats below n.
            unsafe {
                while i + 16 <= n {
                    s0 =
                        _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
                    s1 = _mm256_fmadd_ps(
                        _mm256_loadu_ps(pa.add(i + 8)),
                        _mm256_loadu_ps(pb.add(i + 8)),
                        s1,
                    );
                    i += 16;
                }
                if i + 8 <= n {
                    s0 =
                        _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), s0);
                    i += 8;
                }
            }
            let mut lanes = [0f32; 8];
            // SAFETY: stores 8 floats into an 8-float array.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(s0, s1)) };
            lanes.iter().sum::<f32>()
                + a[i..n]
                    .iter()
                    .zip(&b[i..n])
                    .map(|(x, y)| x * y)
                    .sum::<f32>()
        }

        #[target_feature(enable = "avx2,fma")]
        pub unsafe fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
            let n = y.len().min(x.len());
            let (py, px) = (y.as_mut_ptr(), x.as_ptr());
            let a = _mm256_set1_ps(alpha);
            let mut i = 0;
            // SAFETY: every load and store touches 8 floats below n.
            unsafe {
                while i + 8 <= n {
                    let v =
                        _mm256_fmadd_ps(a, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
                    _mm256_storeu_ps(py.add(i), v);
                    i += 8;
                }
            }
            for (y, x) in y[i..n].iter_mut().zip(&x[i..n]) {
                *y += alpha * x;
            }
        }
    }
}
