//! GGUF out: a Hugging Face llama-family model (weights in memory, tokenizer and config from its
//! directory) written as one GGUF file that llama.cpp-family tools and our own importer read —
//! the `llama.*`/`qwen2.*` metadata, the byte-level BPE tokenizer as `tokenizer.ggml.*` with its
//! chat template, and every tensor under llama.cpp's name, q/k rows permuted as its converter
//! does, quantized as asked.

use std::collections::HashMap;
use std::path::Path;

use candle_core::Tensor;
use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use serde_json::Value as Json;

use super::{ExportError, Quant};
use crate::model_dir::gguf::{gguf_name, permute, pre_tokenizer_name};
use crate::model_dir::{Arch, Config};

/// The ggml type a tensor is stored as: 1-D tensors (norms, biases) stay f32; matrices take
/// `quant`, falling back (as llama.cpp does) when their rows do not split into its blocks.
fn ggml_type(t: &Tensor, quant: Quant) -> GgmlDType {
    let dims = t.dims();
    if dims.len() < 2 {
        return GgmlDType::F32;
    }
    let row = dims[dims.len() - 1];
    match quant {
        Quant::F32 => GgmlDType::F32,
        Quant::F16 | Quant::Bf16 => GgmlDType::F16,
        Quant::Q8_0 if row.is_multiple_of(32) => GgmlDType::Q8_0,
        Quant::Q4K if row.is_multiple_of(256) => GgmlDType::Q4K,
        Quant::Q4K if row.is_multiple_of(32) => GgmlDType::Q5_0,
        _ => GgmlDType::F16,
    }
}

/// llama.cpp's `general.file_type` for the file as a whole.
fn file_type(quant: Quant) -> u32 {
    match quant {
        Quant::F32 => 0,
        Quant::F16 | Quant::Bf16 => 1,
        Quant::Q8_0 => 7,
        Quant::Q4K => 15,
    }
}

/// Write `weights` (f32, Hugging Face names) of the model in `dir` to the GGUF file `out`.
pub fn write(
    dir: &Path,
    weights: &HashMap<String, Tensor>,
    quant: Quant,
    out: &Path,
    name: &str,
) -> Result<(), ExportError> {
    let cfg = Config::load(dir).map_err(|e| ExportError::Input(e.to_string()))?;
    let arch = match cfg.arch().map_err(|e| ExportError::Input(e.to_string()))? {
        Arch::Llama | Arch::Mistral => "llama",
        Arch::Qwen2 => "qwen2",
    };
    if let Some(s) = cfg.rope_scaling() {
        return Err(ExportError::Unsupported(format!(
            "GGUF export of a model with rope_scaling {s} is not supported yet"
        )));
    }
    let mut meta = model_metadata(&cfg, arch, name, quant);
    meta.extend(tokenizer_metadata(dir)?);
    let mut tensors = Vec::new();
    let mut names: Vec<&String> = weights.keys().collect();
    names.sort_by_key(|n| order_key(n));
    for hf in names {
        let Some(gguf) = gguf_name(hf) else {
            return Err(ExportError::Unsupported(format!(
                "tensor {hf} has no GGUF name"
            )));
        };
        let mut t = weights[hf].clone();
        if hf == "lm_head.weight" && cfg.tie_word_embeddings {
            continue;
        }
        let fail = |e: candle_core::Error| ExportError::Input(format!("tensor {hf}: {e}"));
        if arch == "llama" && hf.ends_with("q_proj.weight") {
            t = permute(&t, cfg.num_attention_heads).map_err(fail)?;
        } else if arch == "llama" && hf.ends_with("k_proj.weight") {
            t = permute(&t, cfg.kv_heads()).map_err(fail)?;
        }
        let t = t.contiguous().map_err(fail)?;
        let q = QTensor::quantize(&t, ggml_type(&t, quant)).map_err(fail)?;
        tensors.push((gguf, q));
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    super::write_atomically(out, |file| {
        let mut w = std::io::BufWriter::new(file);
        candle_core::quantized::gguf_file::write(&mut w, &meta_refs, &tensor_refs)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        std::io::Write::flush(&mut w)
    })
}

/// Embeddings, then the layers in number order, then the final norm and head.
fn order_key(hf: &str) -> (usize, usize, String) {
    match hf.strip_prefix("model.layers.") {
        Some(rest) => {
            let (n, tail) = rest.split_once('.').unwrap_or((rest, ""));
            (1, n.parse().unwrap_or(usize::MAX), tail.to_owned())
        }
        None if hf.starts_with("model.embed_tokens") => (0, 0, hf.to_owned()),
        None => (2, 0, hf.to_owned()),
    }
}

fn model_metadata(cfg: &Config, arch: &str, name: &str, quant: Quant) -> Vec<(String, Value)> {
    let key = |k: &str| format!("{arch}.{k}");
    let u = |v: usize| Value::U32(v as u32);
    vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("general.name".into(), Value::String(name.into())),
        ("general.file_type".into(), Value::U32(file_type(quant))),
        (key("context_length"), u(cfg.max_position_embeddings)),
        (key("embedding_length"), u(cfg.hidden_size)),
        (key("block_count"), u(cfg.num_hidden_layers)),
        (key("feed_forward_length"), u(cfg.intermediate_size)),
        (key("attention.head_count"), u(cfg.num_attention_heads)),
        (key("attention.head_count_kv"), u(cfg.kv_heads())),
        (
            key("attention.layer_norm_rms_epsilon"),
            Value::F32(cfg.rms_norm_eps as f32),
        ),
        (key("rope.freq_base"), Value::F32(cfg.rope_theta() as f32)),
        (key("rope.dimension_count"), u(cfg.head_dim())),
        (key("vocab_size"), u(cfg.vocab_size)),
    ]
}

/// `tokenizer.ggml.*` and `tokenizer.chat_template` from `tokenizer.json` (a byte-level BPE)
/// and `tokenizer_config.json`.
fn tokenizer_metadata(dir: &Path) -> Result<Vec<(String, Value)>, ExportError> {
    let path = dir.join(crate::model_dir::TOKENIZER);
    let bad = |why: String| ExportError::Unsupported(format!("{}: {why}", path.display()));
    let text = std::fs::read_to_string(&path).map_err(|e| bad(e.to_string()))?;
    let json: Json = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let model = &json["model"];
    if model["type"] != "BPE" || model["byte_fallback"] == true {
        return Err(bad(
            "only byte-level BPE tokenizers can be written to GGUF yet".into(),
        ));
    }
    let pre = pre_tokenizer_name(&json["pre_tokenizer"]).ok_or_else(|| {
        bad("its pre-tokenizer matches none of smollm, llama-bpe, qwen2, gpt-2".into())
    })?;
    let mut by_id: HashMap<u64, (String, i32)> = HashMap::new();
    for (token, id) in model["vocab"].as_object().into_iter().flatten() {
        if let Some(id) = id.as_u64() {
            by_id.insert(id, (token.clone(), 1));
        }
    }
    for added in json["added_tokens"].as_array().into_iter().flatten() {
        if let (Some(id), Some(content)) = (added["id"].as_u64(), added["content"].as_str()) {
            let kind = if added["special"] == true { 3 } else { 4 };
            by_id.insert(id, (content.to_owned(), kind));
        }
    }
    let n = by_id.keys().max().map_or(0, |m| m + 1);
    let (mut tokens, mut types) = (Vec::new(), Vec::new());
    for id in 0..n {
        // Ids no token claims get a placeholder, as llama.cpp's converter writes them.
        let (t, kind) = by_id
            .remove(&id)
            .unwrap_or_else(|| (format!("[PAD{id}]"), 5));
        tokens.push(Value::String(t));
        types.push(Value::I32(kind));
    }
    let merges: Vec<Value> = model["merges"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| match m {
            Json::String(s) => Some(s.clone()),
            Json::Array(pair) => Some(format!(
                "{} {}",
                pair.first()?.as_str()?,
                pair.get(1)?.as_str()?
            )),
            _ => None,
        })
        .map(Value::String)
        .collect();
    let id_of = |token: &str| -> Option<u32> {
        tokens
            .iter()
            .position(|t| matches!(t, Value::String(s) if s == token))
            .map(|i| i as u32)
    };
    let tc = crate::model_dir::read_tokenizer_config(dir).map_err(|e| bad(e.to_string()))?;
    let special = |key: &str| -> Option<String> {
        match &tc[key] {
            Json::String(s) => Some(s.clone()),
            Json::Object(o) => o.get("content")?.as_str().map(str::to_owned),
            _ => None,
        }
    };
    let mut meta = vec![
        (
            "tokenizer.ggml.model".to_owned(),
            Value::String("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".to_owned(), Value::String(pre.into())),
        (
            "tokenizer.ggml.add_bos_token".to_owned(),
            Value::Bool(tc["add_bos_token"] == true),
        ),
    ];
    for (key, field) in [
        ("bos_token_id", "bos_token"),
        ("eos_token_id", "eos_token"),
        ("padding_token_id", "pad_token"),
        ("unknown_token_id", "unk_token"),
    ] {
        if let Some(id) = special(field).as_deref().and_then(id_of) {
            meta.push((format!("tokenizer.ggml.{key}"), Value::U32(id)));
        }
    }
    let template = match std::fs::read_to_string(dir.join("chat_template.jinja")) {
        Ok(t) => Some(t),
        Err(_) => tc["chat_template"].as_str().map(str::to_owned),
    };
    if let Some(t) = template {
        meta.push(("tokenizer.chat_template".to_owned(), Value::String(t)));
    }
    meta.push(("tokenizer.ggml.tokens".to_owned(), Value::Array(tokens)));
    meta.push(("tokenizer.ggml.token_type".to_owned(), Value::Array(types)));
    meta.push(("tokenizer.ggml.merges".to_owned(), Value::Array(merges)));
    Ok(meta)
}
