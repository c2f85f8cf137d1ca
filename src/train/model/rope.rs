//! Rotary position embeddings (RoFormer, arXiv:2104.09864) in Hugging Face's "rotate half" layout,
//! with Llama 3 and linear frequency scaling: the tables here, the rotation (with its backward;
//! candle's fused `rope` has none) in [`crate::train::fused::rope`].

use candle_core::{DType, Device, Result, Tensor};
use serde_json::Value;

use super::Config;

/// Per-dimension inverse frequencies after scaling.
pub fn inv_freq(cfg: &Config) -> Vec<f32> {
    let hd = cfg.head_dim();
    let theta = cfg.rope_theta();
    let base: Vec<f64> = (0..hd / 2)
        .map(|i| 1.0 / theta.powf((2 * i) as f64 / hd as f64))
        .collect();
    let scaled = match cfg.rope_scaling() {
        None => base,
        Some(s) => scale(&base, s),
    };
    scaled.into_iter().map(|f| f as f32).collect()
}

fn scale(base: &[f64], s: &Value) -> Vec<f64> {
    let num = |k: &str, d: f64| s.get(k).and_then(Value::as_f64).unwrap_or(d);
    let kind = s
        .get("rope_type")
        .or_else(|| s.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("default");
    let factor = num("factor", 1.0);
    match kind {
        "llama3" => {
            let (low, high) = (num("low_freq_factor", 1.0), num("high_freq_factor", 4.0));
            let orig = num("original_max_position_embeddings", 8192.0);
            let (low_wl, high_wl) = (orig / low, orig / high);
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wl {
                        f
                    } else if wavelen > low_wl {
                        f / factor
                    } else {
                        let smooth = (orig / wavelen - low) / (high - low);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
        "linear" => base.iter().map(|f| f / factor).collect(),
        // Other schemes (dynamic NTK, YaRN) only change long contexts; train unscaled.
        _ => base.to_vec(),
    }
}

/// `(cos, sin)` tables of shape `[n, head_dim]` for the `n` positions given (a packed row counts
/// each example's positions from 0).
pub fn tables_at(
    inv: &[f32],
    positions: impl Iterator<Item = usize>,
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let flat = angles(inv, positions);
    let n = flat.len() / (inv.len() * 2).max(1);
    let a = Tensor::from_vec(flat, (n, inv.len() * 2), device)?;
    Ok((a.cos()?.to_dtype(dtype)?, a.sin()?.to_dtype(dtype)?))
}

/// `(cos, sin)` tables of shape `[rows, 1, t, head_dim]` for each row's own positions (decoding
/// left-padded rows with a KV cache).
pub fn tables_for(
    inv: &[f32],
    positions: &[Vec<usize>],
    dtype: DType,
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let t = positions.first().map_or(0, Vec::len);
    let flat = angles(inv, positions.iter().flatten().copied());
    let a = Tensor::from_vec(flat, (positions.len(), 1, t, inv.len() * 2), device)?;
    Ok((a.cos()?.to_dtype(dtype)?, a.sin()?.to_dtype(dtype)?))
}

/// `position × inv_freq`, twice over (the "rotate half" layout), for each position in turn.
fn angles(inv: &[f32], positions: impl Iterator<Item = usize>) -> Vec<f32> {
    let mut out = Vec::new();
    for p in positions {
        let row: Vec<f32> = inv.iter().map(|f| p as f32 * f).collect();
        out.extend_from_slice(&row);
        out.extend_from_slice(&row);
    }
    out
}
