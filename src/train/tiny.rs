//! `ferrotune model init-tiny`: a deterministic tiny model (random weights from a seed) in exactly
//! the Hugging Face layout — `config.json`, `model.safetensors`, `tokenizer.json` (byte-level BPE
//! built in code), `tokenizer_config.json` (ChatML template) — loadable by our trainer and by
//! mistral.rs. It is for tests, demos and trying the API: its answers are noise until trained.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::json;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::{AddedToken, Tokenizer};

use super::rng::{self, purpose};
use super::{TensorContext, TrainError, io_err};
use crate::model_dir::template::CHATML_TEMPLATE;

/// Which family the tiny model imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TinyArch {
    /// `LlamaForCausalLM`.
    Llama,
    /// `Qwen2ForCausalLM` (with q/k/v biases).
    Qwen2,
}

/// Special tokens, in id order after the 256 byte tokens.
pub const SPECIAL_TOKENS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];

const STD: f32 = 0.1;

/// How big the generated model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum TinySize {
    /// hidden 64, 2 layers (≈ 0.1 M parameters): tests and demos.
    #[default]
    Tiny,
    /// hidden 512, 8 layers (≈ 24 M parameters): benchmarks.
    Small,
}

struct Dims {
    hidden: usize,
    intermediate: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
}

impl TinySize {
    fn dims(self) -> Dims {
        match self {
            Self::Tiny => Dims {
                hidden: 64,
                intermediate: 176,
                layers: 2,
                heads: 4,
                kv_heads: 2,
            },
            Self::Small => Dims {
                hidden: 512,
                intermediate: 1408,
                layers: 8,
                heads: 8,
                kv_heads: 4,
            },
        }
    }
}

/// Write the tiny model into `dir` (created if needed).
pub fn init_tiny(dir: &Path, arch: TinyArch, seed: u64) -> Result<(), TrainError> {
    init_sized(dir, arch, TinySize::Tiny, seed)
}

/// Write a generated model of `size` into `dir`.
pub fn init_sized(dir: &Path, arch: TinyArch, size: TinySize, seed: u64) -> Result<(), TrainError> {
    let d = size.dims();
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tokenizer = build_tokenizer()?;
    let vocab = tokenizer.get_vocab_size(true);
    let id = |t: &str| tokenizer.token_to_id(t).unwrap_or(0);
    let path = dir.join("tokenizer.json");
    tokenizer
        .save(&path, false)
        .map_err(|e| TrainError::Invalid(format!("writing {}: {e}", path.display())))?;
    let (architecture, model_type) = match arch {
        TinyArch::Llama => ("LlamaForCausalLM", "llama"),
        TinyArch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
    };
    let config = json!({
        "architectures": [architecture],
        "model_type": model_type,
        "hidden_act": "silu",
        "hidden_size": d.hidden,
        "intermediate_size": d.intermediate,
        "num_hidden_layers": d.layers,
        "num_attention_heads": d.heads,
        "num_key_value_heads": d.kv_heads,
        "vocab_size": vocab,
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 2048,
        "tie_word_embeddings": false,
        "attention_bias": false,
        "use_sliding_window": false,
        "sliding_window": 2048,
        "max_window_layers": d.layers,
        "bos_token_id": id("<|endoftext|>"),
        "eos_token_id": id("<|im_end|>"),
        "torch_dtype": "float32",
    });
    write_json(&dir.join("config.json"), &config)?;
    write_json(
        &dir.join("tokenizer_config.json"),
        &json!({
            "chat_template": CHATML_TEMPLATE,
            "bos_token": null,
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "add_bos_token": false,
            "model_max_length": 2048,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }),
    )?;
    write_json(
        &dir.join("generation_config.json"),
        &json!({"bos_token_id": id("<|endoftext|>"), "eos_token_id": [id("<|im_end|>"), id("<|endoftext|>")]}),
    )?;
    let weights = random_weights(arch, &d, vocab, seed).ctx("generating tiny weights")?;
    super::tensor_file::write_safetensors(&dir.join("model.safetensors"), &weights)
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), TrainError> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default();
    std::fs::write(path, text + "\n").map_err(io_err(path))
}

/// A byte-level BPE over the 256 byte symbols (no merges) plus the ChatML special tokens.
fn build_tokenizer() -> Result<Tokenizer, TrainError> {
    let mut alphabet: Vec<char> = ByteLevel::alphabet().into_iter().collect();
    alphabet.sort_unstable();
    let vocab: Vocab = alphabet
        .iter()
        .enumerate()
        .map(|(i, c)| (c.to_string(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, vec![])
        .build()
        .map_err(|e| TrainError::Invalid(format!("building the tokenizer: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    tokenizer.with_pre_tokenizer(Some(byte_level));
    tokenizer.with_decoder(Some(byte_level));
    tokenizer.with_post_processor(Some(byte_level));
    let specials: Vec<AddedToken> = SPECIAL_TOKENS
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    tokenizer.add_special_tokens(&specials);
    Ok(tokenizer)
}

fn random_weights(
    arch: TinyArch,
    d: &Dims,
    vocab: usize,
    seed: u64,
) -> candle_core::Result<HashMap<String, Tensor>> {
    let dev = Device::Cpu;
    let mut out = HashMap::new();
    let mut counter = 0u64;
    let mut normal =
        |name: String, shape: (usize, usize), std: f32, out: &mut HashMap<String, Tensor>| {
            counter += 1;
            let mut g = rng::stream(seed, purpose::TINY_WEIGHTS, counter);
            let t = Tensor::from_vec(rng::normal(&mut g, shape.0 * shape.1, std), shape, &dev);
            t.map(|t| out.insert(name, t))
        };
    let hd = d.hidden / d.heads;
    let ones = |n: usize| Tensor::ones(n, candle_core::DType::F32, &dev);
    // Output weights wide enough that an adapter can make the model confident: a choice for a
    // useful toy, not a pretrained distribution.
    normal(
        "model.embed_tokens.weight".into(),
        (vocab, d.hidden),
        1.0,
        &mut out,
    )?;
    normal("lm_head.weight".into(), (vocab, d.hidden), 0.5, &mut out)?;
    out.insert("model.norm.weight".into(), ones(d.hidden)?);
    for i in 0..d.layers {
        let p = format!("model.layers.{i}");
        for (name, rows) in [
            ("q_proj", d.heads * hd),
            ("k_proj", d.kv_heads * hd),
            ("v_proj", d.kv_heads * hd),
            ("o_proj", d.hidden),
        ] {
            normal(
                format!("{p}.self_attn.{name}.weight"),
                (rows, d.hidden),
                STD,
                &mut out,
            )?;
            if arch == TinyArch::Qwen2 && name != "o_proj" {
                normal(
                    format!("{p}.self_attn.{name}.bias"),
                    (1, rows),
                    STD,
                    &mut out,
                )?;
                let b = out[&format!("{p}.self_attn.{name}.bias")].flatten_all()?;
                out.insert(format!("{p}.self_attn.{name}.bias"), b);
            }
        }
        normal(
            format!("{p}.mlp.gate_proj.weight"),
            (d.intermediate, d.hidden),
            STD,
            &mut out,
        )?;
        normal(
            format!("{p}.mlp.up_proj.weight"),
            (d.intermediate, d.hidden),
            STD,
            &mut out,
        )?;
        normal(
            format!("{p}.mlp.down_proj.weight"),
            (d.hidden, d.intermediate),
            STD,
            &mut out,
        )?;
        out.insert(format!("{p}.input_layernorm.weight"), ones(d.hidden)?);
        out.insert(
            format!("{p}.post_attention_layernorm.weight"),
            ones(d.hidden)?,
        );
    }
    Ok(out)
}
