//! The decoder: Llama (Touvron et al., arXiv:2302.13971) and its relatives Mistral and Qwen2 —
//! grouped-query attention, RoPE, SwiGLU MLP, RMSNorm, tied or untied embeddings. Structs mirror
//! the checkpoint's tensor names (`model.layers.N.self_attn.q_proj`).

use std::path::Path;

use candle_core::{D, DType, Device, Tensor};

use super::layers::{Dropout, Linear, RmsNorm};
use super::{Config, Weights, rope};
use crate::train::lora::{LoraSet, LoraSpec};
use crate::train::{TensorContext, TrainError};

/// Options of one forward pass.
#[derive(Debug, Clone, Copy, Default)]
pub struct ForwardCtx {
    /// Dropout masks to draw (training); `None` for evaluation.
    pub dropout: Option<Dropout>,
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
}

struct Builder<'a> {
    weights: &'a Weights,
    lora: Option<&'a LoraSpec>,
    set: LoraSet,
    seed: u64,
    device: &'a Device,
}

impl Builder<'_> {
    fn linear(&mut self, module: &str, bias: bool) -> Result<Linear, TrainError> {
        let weight = self.weights.get(&format!("{module}.weight"))?;
        let bias = if bias {
            Some(self.weights.get(&format!("{module}.bias"))?)
        } else {
            None
        };
        let layer = Linear::new(weight, bias);
        let short = module.rsplit('.').next().unwrap_or(module);
        match self.lora {
            Some(spec) if spec.targets.iter().any(|t| t == short) => {
                let index = self.set.adapters.len() as u64;
                let vars =
                    self.set
                        .create(module, layer.shape(), spec.rank, self.seed, self.device)?;
                Ok(layer.with_lora(vars, spec.scale(), spec.dropout as f32, index))
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
        let cfg = Config::load(dir)?;
        let weights = Weights::load(dir, device, dtype)?;
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
        };
        let bias = cfg.qkv_bias();
        let o_bias = cfg.attention_bias.unwrap_or(false);
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{i}");
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
        };
        Ok((model, b.set))
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

    /// Logits `[b, t, vocab]` in f32 for `input_ids` `[b, t]` (u32) with `attention_mask`
    /// `[b][t]` (1 = token, 0 = right padding).
    pub fn forward(
        &self,
        input_ids: &Tensor,
        attention_mask: &[Vec<u8>],
        ctx: ForwardCtx,
    ) -> Result<Tensor, TrainError> {
        self.forward_inner(input_ids, attention_mask, ctx)
            .ctx("forward pass")
    }

    fn forward_inner(
        &self,
        input_ids: &Tensor,
        attention_mask: &[Vec<u8>],
        ctx: ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let mut x = self.embed(input_ids)?;
        let shared = self.shared(attention_mask, x.dim(1)?)?;
        for i in 0..self.layers.len() {
            x = self.layer(i, &x, &shared, ctx)?;
        }
        self.head(&x)
    }

    /// Number of decoder layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Token embeddings `[b, t, hidden]` for `input_ids` `[b, t]`.
    pub fn embed(&self, input_ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t) = input_ids.dims2()?;
        self.embed_tokens
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((b, t, self.cfg.hidden_size))
    }

    /// What every layer of one batch shares: RoPE tables and the attention mask.
    pub fn shared(&self, attention_mask: &[Vec<u8>], t: usize) -> candle_core::Result<LayerInputs> {
        let (cos, sin) = rope::tables(&self.inv_freq, t, self.dtype, &self.device)?;
        let mask = causal_mask(attention_mask, t, &self.device)?;
        Ok(LayerInputs { cos, sin, mask })
    }

    /// Decoder layer `i` applied to the residual stream `x`.
    pub fn layer(
        &self,
        i: usize,
        x: &Tensor,
        shared: &LayerInputs,
        ctx: ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let layer = &self.layers[i];
        let ctx = ForwardCtx {
            dropout: ctx
                .dropout
                .map(|d| d.at_layer(i as u64, &self.device))
                .transpose()?,
        };
        let h = layer.input_layernorm.forward(x)?;
        let x = (x + layer.self_attn.forward(&h, shared, ctx)?)?;
        let h = layer.post_attention_layernorm.forward(&x)?;
        x + layer.mlp.forward(&h, ctx)?
    }

    /// Final norm and `lm_head`: logits `[b, t, vocab]` in f32.
    pub fn head(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let x = self.norm.forward(x)?;
        let logits = x
            .reshape((b * t, self.cfg.hidden_size))?
            .matmul(&self.lm_head.t()?)?;
        logits.reshape((b, t, ()))?.to_dtype(DType::F32)
    }
}

/// Per-batch inputs shared by every decoder layer.
pub struct LayerInputs {
    cos: Tensor,
    sin: Tensor,
    /// `[b, 1, t, t]` additive mask in f32.
    mask: Tensor,
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        shared: &LayerInputs,
        ctx: ForwardCtx,
    ) -> candle_core::Result<Tensor> {
        let (cos, sin) = (&shared.cos, &shared.sin);
        let (b, t, _) = x.dims3()?;
        let hd = self.head_dim;
        let split =
            |y: Tensor, heads: usize| y.reshape((b, t, heads, hd))?.transpose(1, 2)?.contiguous();
        let q = split(self.q_proj.forward(x, ctx.dropout)?, self.heads)?;
        let k = split(self.k_proj.forward(x, ctx.dropout)?, self.kv_heads)?;
        let v = split(self.v_proj.forward(x, ctx.dropout)?, self.kv_heads)?;
        let q = rope::apply(&q, cos, sin)?;
        let k = repeat_kv(rope::apply(&k, cos, sin)?, self.heads / self.kv_heads)?;
        let v = repeat_kv(v, self.heads / self.kv_heads)?;
        // Scores and softmax in f32 (the mask's large negative number does not fit in f16).
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?
            .to_dtype(DType::F32)?
            .broadcast_add(&shared.mask)?;
        let probs = candle_nn::ops::softmax(&scores, D::Minus1)?.to_dtype(x.dtype())?;
        let out = probs
            .matmul(&v)?
            .transpose(1, 2)?
            .reshape((b, t, self.heads * hd))?;
        self.o_proj.forward(&out, ctx.dropout)
    }
}

impl Mlp {
    fn forward(&self, x: &Tensor, ctx: ForwardCtx) -> candle_core::Result<Tensor> {
        let gate = self.gate_proj.forward(x, ctx.dropout)?.silu()?;
        let up = self.up_proj.forward(x, ctx.dropout)?;
        self.down_proj.forward(&(gate * up)?, ctx.dropout)
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

/// `[b, 1, t, t]` in f32: 0 where query `i` may see key `j` (`j <= i`, `j` not padding), else a
/// large negative number.
fn causal_mask(
    attention_mask: &[Vec<u8>],
    t: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let b = attention_mask.len();
    let mut m = vec![0f32; b * t * t];
    for (bi, row) in attention_mask.iter().enumerate() {
        for i in 0..t {
            for j in 0..t {
                let visible = j <= i && row.get(j).copied().unwrap_or(0) == 1;
                if !visible {
                    m[(bi * t + i) * t + j] = -1.0e9;
                }
            }
        }
    }
    Tensor::from_vec(m, (b, 1, t, t), device)
}
