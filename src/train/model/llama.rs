//! The decoder: Llama (Touvron et al., arXiv:2302.13971) and its relatives Mistral and Qwen2 —
//! grouped-query attention, RoPE, SwiGLU MLP, RMSNorm, tied or untied embeddings. Structs mirror
//! the checkpoint's tensor names (`model.layers.N.self_attn.q_proj`).

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::layers::{DropoutMasks, LayerDropout, Linear, RmsNorm};
use super::{Config, Weights, rope};
use crate::model_dir::quant::Storage;
use crate::train::fused::{
    self,
    attention::{Heads, causal_attention},
};
use crate::train::lora::{LoraSet, LoraSpec};
use crate::train::loss::{LossOutput, causal_lm_loss, chunked_lm_loss};
use crate::train::ops::{frozen_linear, softmax_last_dim};
use crate::train::{TensorContext, TrainError};

mod decode;
pub use decode::KvCache;

/// Options of one forward pass.
#[derive(Clone, Copy, Default)]
pub struct ForwardCtx<'a> {
    /// The micro-batch's dropout masks (training); `None` for evaluation.
    pub dropout: Option<&'a DropoutMasks>,
    /// NEFTune noise `[1, t, hidden]` added to the token embeddings (training with
    /// `neftune_noise_alpha`); `None` otherwise.
    pub embedding_noise: Option<&'a Tensor>,
}

struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
}

struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

/// A causal language model with its (optional) LoRA adapters.
pub struct CausalLm {
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Tensor,
    inv_freq: Vec<f32>,
    cfg: Config,
    dtype: DType,
    device: Device,
    /// Dropout-mask columns per layer (the adapted modules' input widths) and the probability.
    dropout_widths: Vec<usize>,
    dropout_p: f32,
}

struct Builder<'a> {
    weights: &'a Weights,
    lora: Option<&'a LoraSpec>,
    set: LoraSet,
    seed: u64,
    device: &'a Device,
    /// Dropout-mask columns of the layer being built so far.
    column: usize,
}

impl Builder<'_> {
    fn linear(&mut self, module: &str, bias: bool) -> Result<Linear, TrainError> {
        let weight = self.weights.frozen(&format!("{module}.weight"))?;
        let bias = if bias {
            Some(self.weights.get(&format!("{module}.bias"))?)
        } else {
            None
        };
        let layer = Linear::new(weight, bias);
        let short = module.rsplit('.').next().unwrap_or(module);
        match self.lora {
            Some(spec) if spec.targets.iter().any(|t| t == short) => {
                let column = self.column;
                self.column += layer.shape().1;
                let vars =
                    self.set
                        .create(module, layer.shape(), spec.rank, self.seed, self.device)?;
                Ok(layer.with_lora(vars, spec.scale(), spec.dropout as f32, column))
            }
            _ => Ok(layer),
        }
    }
}

impl CausalLm {
    /// Load `dir` (config + weights) in `dtype`, adding fresh LoRA adapters per `lora`.
    pub fn load(
        dir: &Path,
        lora: Option<&LoraSpec>,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<(Self, LoraSet), TrainError> {
        Self::load_stored(dir, lora, seed, device, dtype, Storage::Dense)
    }

    /// [`Self::load`] with the seven projections' frozen weights stored as `storage` says
    /// (QLoRA); embeddings, norms and `lm_head` stay in `dtype`.
    pub fn load_stored(
        dir: &Path,
        lora: Option<&LoraSpec>,
        seed: u64,
        device: &Device,
        dtype: DType,
        storage: Storage,
    ) -> Result<(Self, LoraSet), TrainError> {
        let cfg = Config::load(dir)?;
        let weights = Weights::load_stored(dir, device, dtype, storage)?;
        Self::build(cfg, &weights, lora, seed, device, dtype)
    }

    /// Build from a config and weights already loaded.
    pub fn build(
        cfg: Config,
        weights: &Weights,
        lora: Option<&LoraSpec>,
        seed: u64,
        device: &Device,
        dtype: DType,
    ) -> Result<(Self, LoraSet), TrainError> {
        let mut b = Builder {
            weights,
            lora,
            set: LoraSet::default(),
            seed,
            device,
            column: 0,
        };
        let bias = cfg.qkv_bias();
        let o_bias = cfg.attention_bias.unwrap_or(false);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let mut dropout_widths = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
            b.column = 0;
            let self_attn = Attention {
                q_proj: b.linear(&format!("{p}.self_attn.q_proj"), bias)?,
                k_proj: b.linear(&format!("{p}.self_attn.k_proj"), bias)?,
                v_proj: b.linear(&format!("{p}.self_attn.v_proj"), bias)?,
                o_proj: b.linear(&format!("{p}.self_attn.o_proj"), o_bias)?,
                heads: cfg.num_attention_heads,
                kv_heads: cfg.kv_heads(),
                head_dim: cfg.head_dim(),
            };
            let mlp = Mlp {
                gate_proj: b.linear(&format!("{p}.mlp.gate_proj"), false)?,
                up_proj: b.linear(&format!("{p}.mlp.up_proj"), false)?,
                down_proj: b.linear(&format!("{p}.mlp.down_proj"), false)?,
            };
            let norm = |name: &str| -> Result<RmsNorm, TrainError> {
                Ok(RmsNorm::new(
                    weights.get(&format!("{p}.{name}.weight"))?,
                    cfg.rms_norm_eps,
                ))
            };
            dropout_widths.push(b.column);
            layers.push(DecoderLayer {
                self_attn,
                mlp,
                input_layernorm: norm("input_layernorm")?,
                post_attention_layernorm: norm("post_attention_layernorm")?,
            });
        }
        let embed_tokens = weights.get("model.embed_tokens.weight")?;
        let lm_head = match weights.maybe("lm_head.weight") {
            Some(w) if !cfg.tie_word_embeddings => w,
            _ if cfg.tie_word_embeddings => embed_tokens.clone(),
            _ => weights.get("lm_head.weight")?,
        };
        let model = Self {
            embed_tokens,
            layers,
            norm: RmsNorm::new(weights.get("model.norm.weight")?, cfg.rms_norm_eps),
            lm_head,
            inv_freq: rope::inv_freq(&cfg),
            cfg,
            dtype,
            device: device.clone(),
            dropout_widths,
            dropout_p: lora.map_or(0.0, |l| l.dropout as f32),
        };
        Ok((model, b.set))
    }

    /// Dropout masks for a training micro-batch of `rows` tokens; `None` without adapters or
    /// without dropout.
    pub fn dropout_masks(
        &self,
        seed: u64,
        micro_batch: u64,
        rows: usize,
    ) -> Result<Option<DropoutMasks>, TrainError> {
        if self.dropout_p <= 0.0 || self.dropout_widths.iter().all(|w| *w == 0) {
            return Ok(None);
        }
        DropoutMasks::draw(
            seed,
            micro_batch,
            rows,
            &self.dropout_widths,
            self.dropout_p,
            &self.device,
        )
        .map(Some)
        .ctx("drawing dropout masks")
    }

    /// The model's config.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Compute dtype.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Logits `[1, t, vocab]` in f32 for a packed row `input_ids` `[1, t]` (u32) holding the
    /// examples `segments` (`(start, len)` each, see [`crate::train::data::Batch`]).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        segments: &[(usize, usize)],
        ctx: ForwardCtx,
    ) -> Result<Tensor, TrainError> {
        self.logits(input_ids, segments, ctx)
            .and_then(|l| l.to_dtype(DType::F32).ctx("forward pass"))
    }

    /// Like [`Self::forward`], with the logits left in the compute dtype.
    pub fn logits(
        &self,
        input_ids: &Tensor,
        segments: &[(usize, usize)],
        ctx: ForwardCtx,
    ) -> Result<Tensor, TrainError> {
        self.hidden(input_ids, segments, ctx)
            .and_then(|x| self.head(&x).ctx("forward pass"))
    }

    /// The last decoder layer's output `[1, t, hidden]` (before the final norm).
    pub fn hidden(
        &self,
        input_ids: &Tensor,
        segments: &[(usize, usize)],
        ctx: ForwardCtx,
    ) -> Result<Tensor, TrainError> {
        (|| {
            let mut x = self.embed_noised(input_ids, ctx)?;
            let shared = self.shared(segments)?;
            for i in 0..self.layers.len() {
                x = self.layer(i, &x, &shared, ctx)?;
            }
            Ok(x)
        })()
        .ctx("forward pass")
    }

    /// The training loss of the last layer's output `x` `[1, t, hidden]` against `labels`:
    /// final norm, `lm_head` and cross-entropy — on the CPU in f32 without the full logits
    /// ([`chunked_lm_loss`]).
    pub fn head_loss(&self, x: &Tensor, labels: &[Vec<i64>]) -> Result<LossOutput, TrainError> {
        if self.device.is_cpu() && self.dtype == DType::F32 {
            let h = self.norm.forward(x).ctx("final norm")?;
            return chunked_lm_loss(&h, &self.lm_head, labels);
        }
        causal_lm_loss(&self.head(x).ctx("forward pass")?, labels)
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// [`Self::embed`] plus the pass's NEFTune noise, if any.
    pub fn embed_noised(&self, input_ids: &Tensor, ctx: ForwardCtx) -> candle_core::Result<Tensor> {
        let x = self.embed(input_ids)?;
        match ctx.embedding_noise {
            Some(noise) => {
                let noise = noise.to_dtype(x.dtype())?;
                x + noise
            }
            None => Ok(x),
        }
    }

    /// NEFTune's noise for a packed row of `segments` (`(start, len)` each): uniform in
    /// `[-1, 1)` times `alpha / √(len · hidden)` of each example's own length (Jain et al., 2023,
    /// as LLaMA-Factory and TRL apply it), drawn from the job's seed and the micro-batch.
    pub fn neftune_noise(
        &self,
        alpha: f64,
        seed: u64,
        micro_batch: u64,
        segments: &[(usize, usize)],
    ) -> Result<Tensor, TrainError> {
        let hidden = self.cfg.hidden_size;
        let mut rng =
            crate::train::rng::stream(seed, crate::train::rng::purpose::NEFTUNE, micro_batch);
        let t: usize = segments.iter().map(|(_, len)| len).sum();
        let mut values = Vec::with_capacity(t * hidden);
        for (_, len) in segments {
            let scale = (alpha / ((len * hidden) as f64).sqrt()) as f32;
            let draws = crate::train::rng::uniform(&mut rng, len * hidden, -scale, scale);
            values.extend(draws);
        }
        Tensor::from_vec(values, (1, t, hidden), &self.device).ctx("NEFTune noise")
    }

    /// Token embeddings `[b, t, hidden]` for `input_ids` `[b, t]`.
    pub fn embed(&self, input_ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        self.embed_tokens
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((b, t, self.cfg.hidden_size))
    }

    /// What every layer of one packed row shares: RoPE tables with each example's positions
    /// from 0, and each example's causal mask.
    pub fn shared(&self, segments: &[(usize, usize)]) -> candle_core::Result<LayerInputs> {
        let positions = segments.iter().flat_map(|(_, len)| 0..*len);
        let (cos, sin) = rope::tables_at(&self.inv_freq, positions, self.dtype, &self.device)?;
        let mut masks: Vec<(usize, Tensor)> = Vec::new();
        for (_, len) in segments {
            if !masks.iter().any(|(l, _)| l == len) {
                masks.push((*len, causal_mask(*len, self.dtype, &self.device)?));
            }
        }
        Ok(LayerInputs {
            cos,
            sin,
            segments: segments.to_vec(),
            masks,
        })
    }

    /// Decoder layer `i` applied to the residual stream `x`.
    pub fn layer(
        &self,
        i: usize,
        x: &Tensor,
        shared: &LayerInputs,
        ctx: ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let dropout = ctx.dropout.and_then(|m| m.layer(i));
        self.layer_with(i, x, dropout, |attn, h| attn.forward(h, shared, dropout))
    }

    /// Decoder layer `i` with its attention computed by `attention` (from the normed input).
    fn layer_with(
        &self,
        i: usize,
        x: &Tensor,
        dropout: Option<LayerDropout>,
        attention: impl FnOnce(&Attention, &Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        let layer = &self.layers[i];
        let h = layer.input_layernorm.forward(x)?;
        let x = (x + attention(&layer.self_attn, &h)?)?;
        let h = layer.post_attention_layernorm.forward(&x)?;
        x + layer.mlp.forward(&h, dropout)?
    }

    /// The final norm of `x` and the `lm_head` weight `[vocab, hidden]`, for heads that score
    /// whole sequences ([`crate::train::preference`]).
    pub fn norm_and_lm_head(&self, x: &Tensor) -> candle_core::Result<(Tensor, &Tensor)> {
        Ok((self.norm.forward(x)?, &self.lm_head))
    }

    /// Final norm and `lm_head`: logits `[b, t, vocab]` in the compute dtype.
    pub fn head(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let x = self.norm.forward(x)?;
        let logits = frozen_linear(&x.reshape((b * t, self.cfg.hidden_size))?, &self.lm_head)?;
        logits.reshape((b, t, ()))
    }
}

/// Per-batch inputs shared by every decoder layer.
pub struct LayerInputs {
    /// `[t, head_dim]` RoPE tables of the packed row.
    cos: Tensor,
    sin: Tensor,
    /// The examples' `(start, len)` in the row.
    segments: Vec<(usize, usize)>,
    /// `[1, 1, len, len]` additive causal mask in the compute dtype, per example length.
    masks: Vec<(usize, Tensor)>,
}

impl Attention {
    /// Attention within each example of the packed row `x` `[1, t, hidden]`, then `o_proj`.
    fn forward(
        &self,
        x: &Tensor,
        shared: &LayerInputs,
        dropout: Option<LayerDropout>,
    ) -> candle_core::Result<Tensor> {
        if fused::fused(x) {
            return self.fused_forward(x, shared, dropout);
        }
        let (q, k, v) = self.project(x, &shared.cos, &shared.sin, dropout)?;
        let mut outs = Vec::with_capacity(shared.segments.len());
        for (start, len) in &shared.segments {
            let mask = shared.masks.iter().find(|(l, _)| l == len).map(|(_, m)| m);
            let part = |t: &Tensor| t.narrow(2, *start, *len);
            outs.push(self.attention(&part(&q)?, part(&k)?, part(&v)?, mask)?);
        }
        let out = match outs.len() {
            1 => outs.remove(0),
            _ => Tensor::cat(&outs, 1)?,
        };
        self.o_proj.forward(&out, dropout)
    }

    /// [`Self::forward`] on the CPU in f32: projections, rotation and attention in the
    /// projections' token-major layout ([`causal_attention`]).
    fn fused_forward(
        &self,
        x: &Tensor,
        shared: &LayerInputs,
        dropout: Option<LayerDropout>,
    ) -> candle_core::Result<Tensor> {
        let (_, t, _) = x.dims3()?;
        let hd = self.head_dim;
        let rotate = |y: Tensor, heads: usize, scale: f64| {
            fused::rope(&y.reshape((t, heads, hd))?, &shared.cos, &shared.sin, scale)?
                .reshape((t, heads * hd))
        };
        let q = rotate(
            self.q_proj.forward(x, dropout)?,
            self.heads,
            1.0 / (hd as f64).sqrt(),
        )?;
        let k = rotate(self.k_proj.forward(x, dropout)?, self.kv_heads, 1.0)?;
        let v = self
            .v_proj
            .forward(x, dropout)?
            .reshape((t, self.kv_heads * hd))?;
        let heads = Heads {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: hd,
        };
        let out = causal_attention(&q, &k, &v, &shared.segments, heads)?;
        self.o_proj.forward(&out.reshape((1, t, ()))?, dropout)
    }

    /// Queries, keys and values `[b, heads, t, head_dim]` of `x`, rotated; q carries the 1/√d
    /// scale (exact for power-of-two head sizes), which saves one full-size `[b, h, t, t]` tensor.
    fn project(
        &self,
        x: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        dropout: Option<LayerDropout>,
    ) -> candle_core::Result<(Tensor, Tensor, Tensor)> {
        let (b, t, _) = x.dims3()?;
        let hd = self.head_dim;
        let split =
            |y: Tensor, heads: usize| y.reshape((b, t, heads, hd))?.transpose(1, 2)?.contiguous();
        let q = split(self.q_proj.forward(x, dropout)?, self.heads)?;
        let k = split(self.k_proj.forward(x, dropout)?, self.kv_heads)?;
        let v = split(self.v_proj.forward(x, dropout)?, self.kv_heads)?;
        let q = fused::rope(&q, cos, sin, 1.0 / (hd as f64).sqrt())?;
        Ok((q, fused::rope(&k, cos, sin, 1.0)?, v))
    }

    /// Attention of `q` over the (kv-head) keys and values, then `o_proj`. `mask` is additive,
    /// `[b, 1, t, keys]`; `None` lets every query see every key.
    fn attend(
        &self,
        q: &Tensor,
        k: Tensor,
        v: Tensor,
        mask: Option<&Tensor>,
        dropout: Option<LayerDropout>,
    ) -> candle_core::Result<Tensor> {
        self.o_proj
            .forward(&self.attention(q, k, v, mask)?, dropout)
    }

    /// The attention output `[b, t, heads · head_dim]` before `o_proj`.
    fn attention(
        &self,
        q: &Tensor,
        k: Tensor,
        v: Tensor,
        mask: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (b, _, t, _) = q.dims4()?;
        let k = repeat_kv(k, self.heads / self.kv_heads)?;
        let v = repeat_kv(v, self.heads / self.kv_heads)?;
        // Softmax accumulates in f32 whatever the compute dtype (as transformers' eager attention
        // does) and keeps only its output for the backward pass.
        let scores = q.matmul(&k.t()?)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = softmax_last_dim(&scores)?;
        probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, self.heads * self.head_dim))
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor, dropout: Option<LayerDropout>) -> candle_core::Result<Tensor> {
        let gate = self.gate_proj.forward(x, dropout)?;
        let up = self.up_proj.forward(x, dropout)?;
        self.down_proj
            .forward(&fused::silu_mul(&gate, &up)?, dropout)
    }
}

/// Repeat key/value heads for grouped-query attention (head `h` uses kv head `h / rep`).
fn repeat_kv(x: Tensor, rep: usize) -> candle_core::Result<Tensor> {
    if rep == 1 {
        return Ok(x);
    }
    let (b, kv, t, hd) = x.dims4()?;
    x.unsqueeze(2)?
        .broadcast_as((b, kv, rep, t, hd))?
        .contiguous()?
        .reshape((b, kv * rep, t, hd))
}

/// `[1, 1, t, t]` in `dtype`: 0 where query `i` may see key `j` (`j <= i`), else a large
/// negative number that `dtype` can hold.
fn causal_mask(t: usize, dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
    let hidden = if dtype == DType::F16 {
        -65504.0
    } else {
        -1.0e9
    };
    let m: Vec<f32> = (0..t * t)
        .map(|k| if k % t <= k / t { 0.0 } else { hidden })
        .collect();
    Tensor::from_vec(m, (1, 1, t, t), device)?.to_dtype(dtype)
}
