//! Incremental decoding: a forward pass over new tokens only, with every layer's keys and values
//! of the tokens before kept in a [`KvCache`]. One sequence at a time, no dropout, no gradients.

use candle_core::{DType, Tensor};

use super::{CausalLm, causal_mask, rope};
use crate::train::{TensorContext, TrainError};

/// Keys and values `[1, kv_heads, seen, head_dim]` of every layer for the tokens seen so far.
#[derive(Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    seen: usize,
}

impl KvCache {
    /// Tokens already in the cache.
    pub fn len(&self) -> usize {
        self.seen
    }

    /// True before the first forward pass.
    pub fn is_empty(&self) -> bool {
        self.seen == 0
    }
}

impl CausalLm {
    /// Logits (f32, `[vocab]`) at the last of `ids`, which follow the tokens already in `cache`;
    /// `cache` then holds them too.
    pub fn forward_cached(&self, ids: &[u32], cache: &mut KvCache) -> Result<Tensor, TrainError> {
        self.forward_cached_inner(ids, cache)
            .ctx("decoding with a KV cache")
    }

    fn forward_cached_inner(
        &self,
        ids: &[u32],
        cache: &mut KvCache,
    ) -> candle_core::Result<Tensor> {
        let t = ids.len();
        if t == 0 {
            candle_core::bail!("no tokens to decode");
        }
        cache.layers.resize_with(self.layers.len(), || None);
        let start = cache.seen;
        let input = Tensor::new(ids, &self.device)?.unsqueeze(0)?;
        let mut x = self.embed(&input)?;
        let (cos, sin) = rope::tables_at(&self.inv_freq, start, t, self.dtype, &self.device)?;
        // New tokens see all cached ones and, among themselves, only earlier ones: only a
        // multi-token prefill on an empty cache needs a mask.
        let mask = match (start, t) {
            (_, 1) => None,
            (0, _) => Some(causal_mask(&[vec![1; t]], t, self.dtype, &self.device)?),
            _ => candle_core::bail!("multi-token steps need an empty cache"),
        };
        for (i, slot) in cache.layers.iter_mut().enumerate() {
            x = self.layer_with(i, &x, None, |attn, h| {
                let (q, k, v) = attn.project(h, &cos, &sin, None)?;
                let (k, v) = match slot.take() {
                    Some((pk, pv)) => (Tensor::cat(&[&pk, &k], 2)?, Tensor::cat(&[&pv, &v], 2)?),
                    None => (k, v),
                };
                *slot = Some((k.clone(), v.clone()));
                attn.attend(&q, k, v, mask.as_ref(), None)
            })?;
        }
        cache.seen += t;
        let last = x.narrow(1, t - 1, 1)?;
        self.head(&last)?.flatten_all()?.to_dtype(DType::F32)
    }
}
