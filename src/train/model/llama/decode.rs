//! Incremental, batched decoding: a forward pass over new tokens only, with every layer's keys and
//! values of the tokens before kept in a [`KvCache`]. No dropout, no gradients.
//!
//! Prompts of different lengths are padded on the left, so that every row's next token sits in
//! the same column: padded keys are masked out and positions count from each row's first real
//! token, which gives each row the logits it would get alone. Decoding a batch costs little more
//! than decoding one row on a CPU, where reading the weights dominates.

use candle_core::{DType, Device, Tensor};

use super::{CausalLm, rope};
use crate::train::{TensorContext, TrainError};

/// Keys and values `[b, kv_heads, seen, head_dim]` of every layer for the tokens seen so far,
/// and each row's left padding.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    pad: Vec<usize>,
    seen: usize,
}

impl KvCache {
    /// Columns already in the cache (padding included).
    pub fn len(&self) -> usize {
        self.seen
    }

    /// True before the prefill.
    pub fn is_empty(&self) -> bool {
        self.seen == 0
    }
}

impl CausalLm {
    /// Logits (f32, `[vocab]`) at the last of `ids`, which follow the tokens already in `cache`;
    /// `cache` then holds them too. One sequence: several tokens on an empty cache, else one.
    pub fn forward_cached(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor, TrainError> {
        let logits = if cache.is_empty() {
            self.prefill(&[ids.to_vec()], cache)?
        } else {
            match ids {
                [id] => self.decode_step(&[*id], cache)?,
                _ => {
                    return Err(TrainError::Invalid(
                        "after the prefill, decoding takes one token at a time".into(),
                    ));
                }
            }
        };
        logits.squeeze(0).ctx("decoding with a KV cache")
    }

    /// Start decoding `prompts` (one row each, none empty) on an empty `cache`: logits (f32,
    /// `[rows, vocab]`) at each prompt's last token.
    pub fn prefill(&self, prompts: &[Vec<u32>], cache: &mut KvCache) -> Result<Tensor, TrainError> {
        if !cache.is_empty() || prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
            return Err(TrainError::Invalid(
                "a prefill needs an empty cache and non-empty prompts".into(),
            ));
        }
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        cache.pad = prompts.iter().map(|p| width - p.len()).collect();
        let mut ids = Vec::with_capacity(prompts.len() * width);
        for (p, pad) in prompts.iter().zip(&cache.pad) {
            // Padding repeats the first real token; it is masked out anyway.
            ids.extend(std::iter::repeat_n(p[0], *pad));
            ids.extend_from_slice(p);
        }
        self.extend(ids, width, cache)
            .ctx("prefilling the KV cache")
    }

    /// The next token of every row: logits (f32, `[rows, vocab]`) after `ids` (one per row).
    pub fn decode_step(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor, TrainError> {
        if cache.is_empty() || ids.len() != cache.pad.len() {
            return Err(TrainError::Invalid(format!(
                "a decoding step needs a prefilled cache and one token per row ({} rows)",
                cache.pad.len()
            )));
        }
        self.extend(ids.to_vec(), 1, cache)
            .ctx("decoding with a KV cache")
    }

    /// Run `ids` (`rows × t`, row-major) after the cached columns.
    fn extend(&self, ids: Vec<u32>, t: usize, cache: &mut KvCache) -> candle_core::Result<Tensor> {
        let rows = cache.pad.len();
        cache.layers.resize_with(self.layers.len(), || None);
        let start = cache.seen;
        let input = Tensor::from_vec(ids, (rows, t), &self.device)?;
        let mut x = self.embed(&input)?;
        let positions: Vec<Vec<usize>> = cache
            .pad
            .iter()
            .map(|pad| (start..start + t).map(|c| c.saturating_sub(*pad)).collect())
            .collect();
        let (cos, sin) = rope::tables_for(&self.inv_freq, &positions, self.dtype, &self.device)?;
        let mask = decode_mask(&cache.pad, start, t, self.dtype, &self.device)?;
        // Everything is detached: computed from trainable adapters, these tensors would otherwise
        // keep their whole graph — every earlier step's activations — alive through the cache.
        for (i, slot) in cache.layers.iter_mut().enumerate() {
            x = self
                .layer_with(i, &x, None, |attn, h| {
                    let (q, k, v) = attn.project(h, &cos, &sin, None)?;
                    let (q, k, v) = (q.detach(), k.detach(), v.detach());
                    let (k, v) = match slot.take() {
                        Some((pk, pv)) => {
                            (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?)
                        }
                        None => (k, v),
                    };
                    *slot = Some((k.clone(), v.clone()));
                    attn.attend(&q, k, v, mask.as_ref(), None)
                })?
                .detach();
        }
        cache.seen += t;
        let last = x.narrow(1, t - 1, 1)?;
        self.head(&last)?.squeeze(1)?.to_dtype(DType::F32)
    }
}

/// `[rows, 1, t, start + t]` additive mask for `t` new columns after `start` cached ones: a query
/// sees the keys up to its own column, minus its row's left padding. `None` when nothing is
/// hidden (one unpadded row decoding a single token).
fn decode_mask(
    pad: &[usize],
    start: usize,
    t: usize,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Option<Tensor>> {
    if t == 1 && pad.iter().all(|p| *p == 0) {
        return Ok(None);
    }
    let keys = start + t;
    let hidden = if dtype == DType::F16 {
        -65504.0
    } else {
        -1.0e9
    };
    let mut m = vec![0f32; pad.len() * t * keys];
    for (r, p) in pad.iter().enumerate() {
        for q in 0..t {
            for k in 0..keys {
                if k > start + q || k < *p {
                    m[(r * t + q) * keys + k] = hidden;
                }
            }
        }
    }
    Tensor::from_vec(m, (pad.len(), 1, t, keys), device)?
        .to_dtype(dtype)
        .map(Some)
}
