//! GGUF in: a llama.cpp-style GGUF file (v2/v3) turned into a Hugging Face model directory that
//! the trainer and mistral.rs both load — `config.json` from the `llama.*`/`qwen2.*` metadata,
//! every tensor dequantized into `model.safetensors` (llama.cpp's row permutation of the q/k
//! projections undone), `tokenizer.json` rebuilt from `tokenizer.ggml.*` (byte-level BPE, or
//! SentencePiece BPE), `tokenizer_config.json` with the chat template, and
//! `generation_config.json`.
//!
//! The directory is written beside its destination and renamed into place, so a failed import
//! never leaves a half-written model.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::stored_blocks;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use serde_json::json;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

/// Why a GGUF file cannot be imported.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    /// Not a GGUF file, truncated, or a tensor that cannot be read.
    #[error("{path} is not a readable GGUF file: {reason}")]
    Unreadable {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
    /// Readable, but not something we can turn into a model directory.
    #[error("{0}")]
    Unsupported(String),
    /// Writing the model directory failed.
    #[error("writing {path}: {reason}")]
    Write {
        /// What was being written.
        path: String,
        /// What failed.
        reason: String,
    },
}

/// What an import produced.
#[derive(Debug, Clone)]
pub struct Imported {
    /// The model directory.
    pub dir: PathBuf,
    /// `LlamaForCausalLM` or `Qwen2ForCausalLM`.
    pub architecture: String,
    /// Parameters written (tied embeddings counted once).
    pub parameters: usize,
}

/// Metadata of one GGUF file, with typed lookups that say which key is missing.
pub(super) struct Meta<'a>(&'a HashMap<String, Value>);

impl Meta<'_> {
    pub(super) fn get(&self, key: &str) -> Result<&Value, GgufError> {
        self.0
            .get(key)
            .ok_or_else(|| GgufError::Unsupported(format!("the GGUF metadata has no '{key}'")))
    }

    fn usize(&self, key: &str) -> Result<usize, GgufError> {
        let v = self.get(key)?;
        v.to_u64()
            .map(|n| n as usize)
            .or_else(|_| v.to_u32().map(|n| n as usize))
            .or_else(|_| v.to_i32().map(|n| n as usize))
            .map_err(|_| GgufError::Unsupported(format!("'{key}' is not an integer")))
    }

    fn f64(&self, key: &str) -> Result<f64, GgufError> {
        let v = self.get(key)?;
        // An f32 read back as its shortest decimal (1e-5, not 9.99999974e-6).
        v.to_f32()
            .map(|f| f.to_string().parse().unwrap_or(f64::from(f)))
            .or_else(|_| v.to_f64())
            .map_err(|_| GgufError::Unsupported(format!("'{key}' is not a number")))
    }

    fn string(&self, key: &str) -> Result<&str, GgufError> {
        self.get(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|_| GgufError::Unsupported(format!("'{key}' is not a string")))
    }

    fn strings(&self, key: &str) -> Result<Vec<String>, GgufError> {
        let bad = || GgufError::Unsupported(format!("'{key}' is not a list of strings"));
        self.get(key)?
            .to_vec()
            .map_err(|_| bad())?
            .iter()
            .map(|v| v.to_string().cloned().map_err(|_| bad()))
            .collect()
    }

    fn token_id(&self, key: &str) -> Option<u32> {
        let v = self.0.get(key)?;
        v.to_u32()
            .ok()
            .or_else(|| v.to_i32().ok().map(|n| n as u32))
    }
}

/// Import `gguf` into the Hugging Face directory `out` (which must not exist yet), storing the
/// weights as `dtype`.
pub fn import(gguf: &Path, out: &Path, dtype: DType) -> Result<Imported, GgufError> {
    if out.exists() {
        return Err(GgufError::Unsupported(format!(
            "{} already exists; choose a new directory",
            out.display()
        )));
    }
    let unreadable = |reason: String| GgufError::Unreadable {
        path: gguf.display().to_string(),
        reason,
    };
    let mut file = std::fs::File::open(gguf).map_err(|e| unreadable(e.to_string()))?;
    let content = Content::read(&mut file).map_err(|e| unreadable(e.to_string()))?;
    let meta = Meta(&content.metadata);
    let arch = meta.string("general.architecture")?.to_owned();
    let architecture = match arch.as_str() {
        "llama" => "LlamaForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        other => {
            return Err(GgufError::Unsupported(format!(
                "architecture '{other}' is not supported; expected llama or qwen2"
            )));
        }
    };
    let tokens = meta.strings("tokenizer.ggml.tokens")?;
    let config = config_json(&meta, &arch, architecture, tokens.len())?;
    let heads = meta.usize(&format!("{arch}.attention.head_count"))?;
    let kv_heads = meta
        .usize(&format!("{arch}.attention.head_count_kv"))
        .unwrap_or(heads);
    let mut tensors = HashMap::new();
    let mut blocks = Vec::new();
    let mut parameters = 0;
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let mut q = content
            .tensor(&mut file, name, &Device::Cpu)
            .map_err(|e| unreadable(format!("tensor {name}: {e}")))?;
        let permuted_heads = match name {
            n if arch == "llama" && n.ends_with("attn_q.weight") => Some(heads),
            n if arch == "llama" && n.ends_with("attn_k.weight") => Some(kv_heads),
            _ => None,
        };
        if let Some(h) = permuted_heads {
            q = stored_blocks::unpermute_rows(&q, h)
                .map_err(|e| unreadable(format!("{name}: {e}")))?;
        }
        let t = q
            .dequantize(&Device::Cpu)
            .map_err(|e| unreadable(format!("tensor {name}: {e}")))?;
        let Some(hf) = hf_name(name) else {
            continue; // e.g. rope_freqs: recomputed from the config
        };
        if stored_blocks::is_blocks(q.dtype()) && crate::model_dir::quant::is_projection(&hf) {
            blocks.push((hf.clone(), q));
        }
        parameters += t.elem_count();
        let t = t
            .to_dtype(dtype)
            .map_err(|e| unreadable(format!("{name}: {e}")))?;
        tensors.insert(hf, t);
    }
    let tied = !tensors.contains_key("lm_head.weight");
    let mut config = config;
    config["tie_word_embeddings"] = json!(tied);
    let files = Files {
        tokenizer: tokenizer(&meta, &tokens)?,
        config,
        tensors,
        blocks,
        meta: &meta,
        tokens: &tokens,
        source: gguf,
    };
    write_dir(out, &files)?;
    Ok(Imported {
        dir: out.to_path_buf(),
        architecture: architecture.to_owned(),
        parameters,
    })
}

fn config_json(
    meta: &Meta,
    arch: &str,
    architecture: &str,
    vocab: usize,
) -> Result<serde_json::Value, GgufError> {
    let key = |k: &str| format!("{arch}.{k}");
    let hidden = meta.usize(&key("embedding_length"))?;
    let heads = meta.usize(&key("attention.head_count"))?;
    Ok(json!({
        "architectures": [architecture],
        "model_type": arch,
        "hidden_size": hidden,
        "intermediate_size": meta.usize(&key("feed_forward_length"))?,
        "num_hidden_layers": meta.usize(&key("block_count"))?,
        "num_attention_heads": heads,
        "num_key_value_heads": meta.usize(&key("attention.head_count_kv")).unwrap_or(heads),
        "head_dim": hidden / heads,
        "vocab_size": meta.usize(&key("vocab_size")).unwrap_or(vocab),
        "rms_norm_eps": meta.f64(&key("attention.layer_norm_rms_epsilon"))?,
        "rope_theta": meta.f64(&key("rope.freq_base")).unwrap_or(10_000.0),
        "max_position_embeddings": meta.usize(&key("context_length")).unwrap_or(2048),
        "hidden_act": "silu",
        "torch_dtype": "float32",
        "bos_token_id": meta.token_id("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.token_id("tokenizer.ggml.eos_token_id"),
    }))
}

/// Undo llama.cpp's permutation of a q/k projection's rows (its converter interleaves the two
/// rotary halves of each head): `[h, 2, d/2, in]` ← `[h, d/2, 2, in]`.
pub fn unpermute(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    w.reshape((heads, rows / heads / 2, 2, cols))?
        .transpose(1, 2)?
        .reshape((rows, cols))
}

/// The inverse of [`unpermute`] (what llama.cpp's converter does), for writing GGUF files.
pub fn permute(w: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (rows, cols) = w.dims2()?;
    w.reshape((heads, 2, rows / heads / 2, cols))?
        .transpose(1, 2)?
        .reshape((rows, cols))
}

/// The Hugging Face name of a GGUF tensor; `None` for tensors with no counterpart.
pub fn hf_name(gguf: &str) -> Option<String> {
    let top = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_owned());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let hf = match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{kind}"))
}

/// The GGUF name of a Hugging Face tensor (the inverse of [`hf_name`]).
pub fn gguf_name(hf: &str) -> Option<String> {
    let top = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(t) = top {
        return Some(t.to_owned());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, part) = rest.split_once('.')?;
    let (module, kind) = part.rsplit_once('.')?;
    let gguf = match module {
        "self_attn.q_proj" => "attn_q",
        "self_attn.k_proj" => "attn_k",
        "self_attn.v_proj" => "attn_v",
        "self_attn.o_proj" => "attn_output",
        "mlp.gate_proj" => "ffn_gate",
        "mlp.up_proj" => "ffn_up",
        "mlp.down_proj" => "ffn_down",
        "input_layernorm" => "attn_norm",
        "post_attention_layernorm" => "ffn_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{gguf}.{kind}"))
}

/// The pre-tokenizers we build, by their `tokenizer.ggml.pre` name.
const PRE_TOKENIZERS: [&str; 4] = ["smollm", "llama-bpe", "qwen2", "gpt-2"];

/// The `tokenizer.ggml.pre` name of a `tokenizer.json` `pre_tokenizer`: the one whose
/// pre-tokenizer serializes to the same JSON.
pub fn pre_tokenizer_name(json: &serde_json::Value) -> Option<&'static str> {
    PRE_TOKENIZERS.into_iter().find(|name| {
        pre_tokenizer(name)
            .ok()
            .and_then(|p| serde_json::to_value(p).ok())
            .is_some_and(|v| &v == json)
    })
}

/// The pre-tokenizer `tokenizer.ggml.pre` names.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper, GgufError> {
    const LLAMA3: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const QWEN2: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    let byte_level = |regex: bool| ByteLevel::new(false, true, regex);
    let split = |re: &str| {
        Split::new(
            SplitPattern::Regex(re.to_owned()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| GgufError::Unsupported(format!("pre-tokenizer '{pre}': {e}")))
    };
    Ok(match pre {
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into(),
        "gpt-2" | "gpt2" | "default" => byte_level(true).into(),
        "llama-bpe" | "llama3" => {
            Sequence::new(vec![split(LLAMA3)?.into(), byte_level(false).into()]).into()
        }
        "qwen2" => Sequence::new(vec![split(QWEN2)?.into(), byte_level(false).into()]).into(),
        other => {
            return Err(GgufError::Unsupported(format!(
                "pre-tokenizer '{other}' is not supported; expected smollm, llama-bpe, qwen2 or default"
            )));
        }
    })
}

/// A byte-level BPE tokenizer from `tokenizer.ggml.*` (model `gpt2`), with the control tokens
/// as special tokens.
fn tokenizer(meta: &Meta, tokens: &[String]) -> Result<Tokenizer, GgufError> {
    let model = meta.string("tokenizer.ggml.model")?;
    let types: Vec<i32> = meta
        .get("tokenizer.ggml.token_type")
        .ok()
        .and_then(|v| v.to_vec().ok())
        .map(|v| v.iter().map(|t| t.to_i32().unwrap_or(1)).collect())
        .unwrap_or_default();
    let mut tok = match model {
        "gpt2" => byte_level_bpe(meta, tokens)?,
        "llama" => super::spm::sentencepiece_bpe(meta, tokens, &types)?,
        other => {
            return Err(GgufError::Unsupported(format!(
                "tokenizer model '{other}' is not supported; expected gpt2 (byte-level BPE) or \
                 llama (SentencePiece BPE)"
            )));
        }
    };
    // Types 2 (unknown) and 3 (control) are special, 4 (user-defined) matched whole; none is
    // ever split.
    let special: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, ty)| matches!(**ty, 2..=4))
        .map(|(t, ty)| AddedToken::from(t.clone(), *ty != 4))
        .collect();
    tok.add_special_tokens(&special);
    Ok(tok)
}

/// A byte-level BPE (`tokenizer.ggml.model = gpt2`) with its merges and named pre-tokenizer.
fn byte_level_bpe(meta: &Meta, tokens: &[String]) -> Result<Tokenizer, GgufError> {
    let merges = meta
        .strings("tokenizer.ggml.merges")
        .unwrap_or_default()
        .into_iter()
        .filter_map(|m| m.split_once(' ').map(|(a, b)| (a.to_owned(), b.to_owned())))
        .collect();
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), i as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|e| GgufError::Unsupported(format!("building the BPE tokenizer: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    let pre = meta.string("tokenizer.ggml.pre").unwrap_or("default");
    tok.with_pre_tokenizer(Some(pre_tokenizer(pre)?));
    tok.with_decoder(Some(ByteLevel::new(false, true, true)));
    Ok(tok)
}

/// What an import writes.
struct Files<'a> {
    config: serde_json::Value,
    tensors: HashMap<String, Tensor>,
    /// Quantized projections in their original blocks.
    blocks: Vec<(String, candle_core::quantized::QTensor)>,
    tokenizer: Tokenizer,
    meta: &'a Meta<'a>,
    tokens: &'a [String],
    /// The GGUF imported, kept whole as [`SOURCE_FILE`] (what llama.cpp serves).
    source: &'a Path,
}

/// The imported GGUF file as it was, inside the imported directory: the llama.cpp engine serves
/// it, so what is served is the very blocks the trainer trains on.
pub const SOURCE_FILE: &str = "model.gguf";

/// A base model's GGUF to serve (written by `export::served`, loaded by the llama.cpp engine).
#[derive(Debug, Clone)]
pub struct ServedGguf {
    /// The file.
    pub path: std::path::PathBuf,
    /// Its weights are f32 (an exact copy of an f32 directory, served with an f32 KV cache).
    pub f32: bool,
}

fn write_dir(out: &Path, files: &Files) -> Result<(), GgufError> {
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_owned());
    let staging = out.with_file_name(format!(".{name}.importing"));
    let _ = std::fs::remove_dir_all(&staging);
    let written = write_files(&staging, files).and_then(|()| {
        std::fs::rename(&staging, out).map_err(|e| GgufError::Write {
            path: out.display().to_string(),
            reason: e.to_string(),
        })
    });
    if written.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    written
}

fn write_files(dir: &Path, files: &Files) -> Result<(), GgufError> {
    let Files {
        config,
        tensors,
        blocks,
        tokenizer,
        meta,
        tokens,
        source,
    } = files;
    let fail = |path: &Path, e: &dyn std::fmt::Display| GgufError::Write {
        path: path.display().to_string(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(dir, &e))?;
    let token = |key: &str| {
        meta.token_id(key)
            .and_then(|id| tokens.get(id as usize))
            .cloned()
    };
    let mut tokenizer_config = json!({
        "bos_token": token("tokenizer.ggml.bos_token_id"),
        "eos_token": token("tokenizer.ggml.eos_token_id"),
        "pad_token": token("tokenizer.ggml.padding_token_id").or_else(|| token("tokenizer.ggml.eos_token_id")),
        "unk_token": token("tokenizer.ggml.unknown_token_id"),
        "add_bos_token": meta.get("tokenizer.ggml.add_bos_token").ok().and_then(|v| v.to_bool().ok()).unwrap_or(false),
        "model_max_length": config["max_position_embeddings"],
    });
    if let Ok(template) = meta.string("tokenizer.chat_template") {
        tokenizer_config["chat_template"] = json!(template);
    }
    let generation = json!({
        "bos_token_id": config["bos_token_id"],
        "eos_token_id": config["eos_token_id"],
    });
    for (file, value) in [
        (super::CONFIG, config),
        (super::TOKENIZER_CONFIG, &tokenizer_config),
        (super::GENERATION_CONFIG, &generation),
    ] {
        let path = dir.join(file);
        let text = serde_json::to_string_pretty(value).map_err(|e| fail(&path, &e))?;
        std::fs::write(&path, text).map_err(|e| fail(&path, &e))?;
    }
    let path = dir.join(super::TOKENIZER);
    tokenizer.save(&path, false).map_err(|e| fail(&path, &e))?;
    let path = dir.join(super::SINGLE_WEIGHTS);
    candle_core::safetensors::save(tensors, &path).map_err(|e| fail(&path, &e))?;
    let kept = dir.join(SOURCE_FILE);
    std::fs::hard_link(source, &kept)
        .or_else(|_| std::fs::copy(source, &kept).map(|_| ()))
        .map_err(|e| fail(&kept, &e))?;
    stored_blocks::write(dir, blocks).map_err(|e| fail(&dir.join(stored_blocks::FILE), &e))
}
