//! GGUF out: a Hugging Face llama-family model (weights merged one tensor at a time, tokenizer and
//! config from its directory) written as one GGUF file that llama.cpp-family tools and our own importer read —
//! the `llama.*`/`qwen2.*` metadata, the byte-level BPE tokenizer as `tokenizer.ggml.*` with its
//! chat template, and every tensor under llama.cpp's name, q/k rows permuted as its converter
//! does, quantized as asked. The header is written first (tensor sizes follow from their shapes and
//! formats), then each tensor is merged, quantized and written in turn.

use std::collections::HashMap;
use std::io::{Seek, Write};
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use serde_json::Value as Json;

use super::merge::MergedModel;
use super::{ExportError, Quant};
use crate::model_dir::Config;
use crate::model_dir::gguf::{gguf_name, permute, pre_tokenizer_name};

/// The ggml type a tensor is stored as: 1-D tensors (norms, biases) stay f32; matrices take
/// `quant`, falling back (as llama.cpp does) when their rows do not split into its blocks.
fn ggml_type(dims: &[usize], quant: Quant) -> GgmlDType {
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

/// GGUF's id of a tensor format (ggml's `enum ggml_type`).
fn type_id(kind: GgmlDType) -> u32 {
    match kind {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

/// GGUF aligns the tensor data, and each tensor in it, to this many bytes.
const ALIGNMENT: u64 = 32;

/// One tensor of the output: its GGUF name, Hugging Face name, shape and format.
struct Planned {
    gguf: String,
    hf: String,
    dims: Vec<usize>,
    kind: GgmlDType,
}

impl Planned {
    fn bytes(&self) -> u64 {
        let elems: usize = self.dims.iter().product();
        (elems / self.kind.block_size() * self.kind.type_size()) as u64
    }
}

/// Write `model` (whose config and tokenizer are in `dir`) to the GGUF file `out`.
pub fn write(
    dir: &Path,
    model: &MergedModel,
    quant: Quant,
    out: &Path,
    name: &str,
) -> Result<(), ExportError> {
    let cfg = Config::load(dir).map_err(|e| ExportError::Input(e.to_string()))?;
    let arch = cfg
        .arch()
        .map_err(|e| ExportError::Input(e.to_string()))?
        .gguf_name();
    if let Some(s) = cfg.rope_scaling() {
        return Err(ExportError::Unsupported(format!(
            "GGUF export of a model with rope_scaling {s} is not supported yet"
        )));
    }
    let mut meta = model_metadata(&cfg, arch, name, quant);
    meta.extend(tokenizer_metadata(dir)?);
    let mut plan = Vec::new();
    for (hf, dims) in model.shapes() {
        if hf == "lm_head.weight" && cfg.tie_word_embeddings {
            continue;
        }
        let Some(gguf) = gguf_name(hf) else {
            return Err(ExportError::Unsupported(format!(
                "tensor {hf} has no GGUF name"
            )));
        };
        plan.push(Planned {
            gguf,
            hf: hf.to_owned(),
            dims: dims.to_vec(),
            kind: ggml_type(dims, quant),
        });
    }
    plan.sort_by_key(|p| order_key(&p.hf));
    let tensor = |p: &Planned| -> Result<QTensor, ExportError> {
        let fail = |e: candle_core::Error| ExportError::Input(format!("tensor {}: {e}", p.hf));
        let mut t = model.tensor(&p.hf)?;
        if arch == "llama" && p.hf.ends_with("q_proj.weight") {
            t = permute(&t, cfg.num_attention_heads).map_err(fail)?;
        } else if arch == "llama" && p.hf.ends_with("k_proj.weight") {
            t = permute(&t, cfg.kv_heads()).map_err(fail)?;
        }
        let t = t.contiguous().map_err(fail)?;
        QTensor::quantize(&t, p.kind).map_err(fail)
    };
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut failure = None;
    super::write_atomically(out, |file| {
        let mut w = std::io::BufWriter::new(file);
        write_header(&mut w, &meta_refs, &plan)?;
        for p in &plan {
            let q = tensor(p).map_err(|e| {
                let text = e.to_string();
                failure = Some(e);
                std::io::Error::other(text)
            })?;
            let data = q.data().map_err(|e| std::io::Error::other(e.to_string()))?;
            if data.len() as u64 != p.bytes() {
                return Err(std::io::Error::other(format!(
                    "tensor {} has {} bytes, {} were planned",
                    p.hf,
                    data.len(),
                    p.bytes()
                )));
            }
            w.write_all(&data)?;
            pad(&mut w)?;
        }
        w.flush()
    })
    .map_err(|e| failure.take().unwrap_or(e))
}

/// The bytes a metadata value takes in the file (GGUF v2+: 64-bit lengths).
fn value_size(v: &Value) -> usize {
    match v {
        Value::U8(_) | Value::I8(_) | Value::Bool(_) => 1,
        Value::U16(_) | Value::I16(_) => 2,
        Value::U32(_) | Value::I32(_) | Value::F32(_) => 4,
        Value::U64(_) | Value::I64(_) | Value::F64(_) => 8,
        Value::String(s) => 8 + s.len(),
        Value::Array(items) => 4 + 8 + items.iter().map(value_size).sum::<usize>(),
    }
}

/// Zeros up to the next multiple of [`ALIGNMENT`].
fn pad<W: Write + Seek>(w: &mut W) -> std::io::Result<()> {
    let pos = w.stream_position()?;
    let padding = (ALIGNMENT - pos % ALIGNMENT) % ALIGNMENT;
    w.write_all(&vec![0u8; padding as usize])
}

/// candle writes an empty array with element type u32; llama.cpp wants string arrays (a
/// tokenizer with no merges, as the generated tiny model's) typed as strings even when empty.
fn type_empty_string_arrays(head: &mut [u8], meta: &[(&str, &Value)]) {
    const ARRAY: u32 = 9;
    const U32: u32 = 4;
    const STRING: u32 = 8;
    for (key, value) in meta {
        if !matches!(value, Value::Array(items) if items.is_empty())
            || !key.starts_with("tokenizer.")
        {
            continue;
        }
        let mut pattern = (key.len() as u64).to_le_bytes().to_vec();
        pattern.extend_from_slice(key.as_bytes());
        pattern.extend_from_slice(&ARRAY.to_le_bytes());
        pattern.extend_from_slice(&U32.to_le_bytes());
        if let Some(at) = head
            .windows(pattern.len())
            .position(|w| w == pattern.as_slice())
        {
            let elem = at + pattern.len() - 4;
            head[elem..elem + 4].copy_from_slice(&STRING.to_le_bytes());
        }
    }
}

/// The header: magic, version, counts and metadata (candle's writer, with no tensors), then
/// every tensor's name, shape, format and offset, padded to the data.
fn write_header<W: Write + Seek>(
    w: &mut W,
    meta: &[(&str, &Value)],
    plan: &[Planned],
) -> std::io::Result<()> {
    let mut head = std::io::Cursor::new(Vec::new());
    candle_core::quantized::gguf_file::write(&mut head, meta, &[])
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut head = head.into_inner();
    type_empty_string_arrays(&mut head, meta);
    // Bytes 8..16 count the tensors; the alignment padding candle wrote after the metadata
    // comes after the tensor infos instead.
    head[8..16].copy_from_slice(&(plan.len() as u64).to_le_bytes());
    let kvs: usize = meta
        .iter()
        .map(|(k, v)| 8 + k.len() + 4 + value_size(v))
        .sum();
    head.truncate(24 + kvs);
    w.write_all(&head)?;
    let mut offset = 0u64;
    for p in plan {
        w.write_all(&(p.gguf.len() as u64).to_le_bytes())?;
        w.write_all(p.gguf.as_bytes())?;
        w.write_all(&(p.dims.len() as u32).to_le_bytes())?;
        for d in p.dims.iter().rev() {
            w.write_all(&(*d as u64).to_le_bytes())?;
        }
        w.write_all(&type_id(p.kind).to_le_bytes())?;
        w.write_all(&offset.to_le_bytes())?;
        offset += p.bytes().div_ceil(ALIGNMENT) * ALIGNMENT;
    }
    pad(w)
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
