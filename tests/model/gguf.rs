//! `ferrotune model import-gguf`: the generated model written as a llama.cpp-style GGUF (q/k rows
//! permuted as llama.cpp's converter does, tokenizer in `tokenizer.ggml.*`) imports back to the
//! same weights and the same tokenization; bad files are clear errors that leave nothing behind.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use ferrotune::model_dir::gguf::{self as gguf, GgufError, gguf_name, hf_name, permute};
use ferrotune::model_dir::quant::Storage;
use ferrotune::train::tiny::{TinyArch, init_tiny};

/// Write the tiny model in `dir` as a GGUF file with `arch`, without the metadata `drop_key`.
fn write_gguf(dir: &Path, out: &Path, arch: &str, drop_key: Option<&str>) {
    write_gguf_as(dir, out, arch, drop_key, &|_, _| GgmlDType::F32);
}

/// [`write_gguf`] with each tensor stored as `kind(name, tensor)` says.
fn write_gguf_as(
    dir: &Path,
    out: &Path,
    arch: &str,
    drop_key: Option<&str>,
    kind: &dyn Fn(&str, &Tensor) -> GgmlDType,
) {
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    let tok = tokenizers::Tokenizer::from_file(dir.join("tokenizer.json")).unwrap();
    let mut vocab: Vec<(String, u32)> = tok.get_vocab(true).into_iter().collect();
    vocab.sort_by_key(|(_, id)| *id);
    let special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
    let u = |k: &str| Value::U32(config[k].as_u64().unwrap() as u32);
    let mut meta = model_meta(&config, arch);
    meta.extend([
        ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(
                vocab
                    .iter()
                    .map(|(t, _)| Value::String(t.clone()))
                    .collect(),
            ),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(
                vocab
                    .iter()
                    .map(|(t, _)| Value::I32(if special.contains(&t.as_str()) { 3 } else { 1 }))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.merges".into(), Value::Array(vec![])),
        ("tokenizer.ggml.eos_token_id".into(), u("eos_token_id")),
        ("tokenizer.ggml.bos_token_id".into(), u("bos_token_id")),
        (
            "tokenizer.chat_template".into(),
            Value::String("{% for m in messages %}{{ m.content }}{% endfor %}".into()),
        ),
    ]);
    if let Some(key) = drop_key {
        meta.retain(|(k, _)| k != key);
    }
    let weights =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    write_file_as(&config, weights, &meta, out, kind);
}

/// The `llama.*` metadata of a tiny model's config, under `general.architecture = arch`.
pub fn model_meta(config: &serde_json::Value, arch: &str) -> Vec<(String, Value)> {
    let u = |k: &str| Value::U32(config[k].as_u64().unwrap() as u32);
    vec![
        ("general.architecture".into(), Value::String(arch.into())),
        ("llama.block_count".into(), u("num_hidden_layers")),
        ("llama.embedding_length".into(), u("hidden_size")),
        ("llama.feed_forward_length".into(), u("intermediate_size")),
        (
            "llama.attention.head_count".into(),
            u("num_attention_heads"),
        ),
        (
            "llama.attention.head_count_kv".into(),
            u("num_key_value_heads"),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon".into(),
            Value::F32(1e-6),
        ),
        ("llama.rope.freq_base".into(), Value::F32(10_000.0)),
        ("llama.context_length".into(), Value::U32(2048)),
    ]
}

/// Write `weights` (Hugging Face names; q/k rows permuted as llama.cpp's converter does) and
/// `meta` as the GGUF file `out`.
pub fn write_file(
    config: &serde_json::Value,
    weights: std::collections::HashMap<String, Tensor>,
    meta: &[(String, Value)],
    out: &Path,
) {
    write_file_as(config, weights, meta, out, &|_, _| GgmlDType::F32);
}

fn write_file_as(
    config: &serde_json::Value,
    weights: std::collections::HashMap<String, Tensor>,
    meta: &[(String, Value)],
    out: &Path,
    kind: &dyn Fn(&str, &Tensor) -> GgmlDType,
) {
    let heads = config["num_attention_heads"].as_u64().unwrap() as usize;
    let kv_heads = config["num_key_value_heads"].as_u64().unwrap() as usize;
    let mut tensors: Vec<(String, QTensor)> = Vec::new();
    for (name, t) in &weights {
        let t = if name.ends_with("q_proj.weight") {
            permute(t, heads).unwrap()
        } else if name.ends_with("k_proj.weight") {
            permute(t, kv_heads).unwrap()
        } else {
            t.clone()
        };
        tensors.push((
            gguf_name(name).unwrap(),
            QTensor::quantize(&t, kind(name, &t)).unwrap(),
        ));
    }
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tensor_refs: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut file = std::fs::File::create(out).unwrap();
    gguf_file::write(&mut file, &meta_refs, &tensor_refs).unwrap();
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    crate::helpers::fixtures::max_abs(&(a - b).unwrap())
}

#[test]
fn a_gguf_of_the_tiny_model_imports_to_the_same_weights_and_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    let original = tmp.path().join("tiny");
    init_tiny(&original, TinyArch::Llama, 3).unwrap();
    let file = tmp.path().join("tiny.gguf");
    write_gguf(&original, &file, "llama", None);
    let out = tmp.path().join("imported");
    let done = gguf::import(&file, &out, DType::F32).unwrap();
    assert_eq!(done.architecture, "LlamaForCausalLM");
    let a =
        candle_core::safetensors::load(original.join("model.safetensors"), &Device::Cpu).unwrap();
    let b = candle_core::safetensors::load(out.join("model.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(a.len(), b.len());
    for (name, t) in &a {
        assert_eq!(
            hf_name(&gguf_name(name).unwrap()).as_deref(),
            Some(name.as_str())
        );
        assert_eq!(
            max_diff(t, &b[name]),
            0.0,
            "{name} differs after the round trip"
        );
    }
    let config = ferrotune::model_dir::Config::load(&out).unwrap();
    assert_eq!((config.num_attention_heads, config.kv_heads()), (4, 2));
    assert!(!config.tie_word_embeddings);
    let before = tokenizers::Tokenizer::from_file(original.join("tokenizer.json")).unwrap();
    let after = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
    for text in [
        "The quick brown fox, 1234 times!",
        "fn main() { println!(\"{}\", x[0]); }",
        "café naïve Ærø — “quotes”",
        "emoji 🙂🚀 and 漢字かな 한국어",
        "tabs\tand   runs of    spaces\n\n\nnewlines",
        "<|im_start|>user\nhi<|im_end|>\n",
    ] {
        let x = before.encode(text, false).unwrap();
        let y = after.encode(text, false).unwrap();
        assert_eq!(x.get_ids(), y.get_ids(), "{text:?}");
        assert_eq!(after.decode(y.get_ids(), false).unwrap(), text);
    }
    let tc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap())
            .unwrap();
    assert_eq!(tc["eos_token"], "<|im_end|>");
    assert!(tc["chat_template"].as_str().unwrap().contains("messages"));
}

#[test]
fn bad_gguf_files_are_clear_errors_and_leave_no_model_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let original = tmp.path().join("tiny");
    init_tiny(&original, TinyArch::Llama, 3).unwrap();
    let good = tmp.path().join("good.gguf");
    write_gguf(&original, &good, "llama", None);
    let bytes = std::fs::read(&good).unwrap();
    let not_gguf = tmp.path().join("not.gguf");
    std::fs::write(&not_gguf, b"this is not a gguf file at all").unwrap();
    let truncated = tmp.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();
    let mamba = tmp.path().join("mamba.gguf");
    write_gguf(&original, &mamba, "mamba", None);
    let no_tokens = tmp.path().join("no-tokens.gguf");
    write_gguf(
        &original,
        &no_tokens,
        "llama",
        Some("tokenizer.ggml.tokens"),
    );
    for (file, needle) in [
        (&not_gguf, "not a readable GGUF file"),
        (&truncated, "not a readable GGUF file"),
        (&mamba, "architecture 'mamba' is not supported"),
        (&no_tokens, "tokenizer.ggml.tokens"),
        (&tmp.path().join("missing.gguf"), "not a readable GGUF file"),
    ] {
        let out = tmp.path().join("out");
        let err = gguf::import(file, &out, DType::F32).unwrap_err();
        assert!(
            err.to_string().contains(needle),
            "{}: {err}",
            file.display()
        );
        assert!(
            !out.exists(),
            "a model dir was left behind for {}",
            file.display()
        );
        let leftovers: Vec<_> = std::fs::read_dir(tmp.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("importing"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }
    let existing = tmp.path().join("tiny");
    let err = gguf::import(&good, &existing, DType::F32).unwrap_err();
    assert!(matches!(err, GgufError::Unsupported(_)), "{err}");
}

#[test]
fn a_quantized_gguf_trains_on_its_stored_blocks() {
    let tmp = tempfile::tempdir().unwrap();
    crate::helpers::fixtures::setup(tmp.path(), TinyArch::Llama);
    let file = tmp.path().join("q8.gguf");
    // Projections in q8_0 where the rows split into its blocks of 32 (not down_proj's 176).
    let q8 = |name: &str, t: &Tensor| {
        if name.ends_with("_proj.weight") && t.dims()[1].is_multiple_of(32) {
            GgmlDType::Q8_0
        } else {
            GgmlDType::F32
        }
    };
    write_gguf_as(&tmp.path().join("model"), &file, "llama", None, &q8);
    let dir = tmp.path().join("imported");
    gguf::import(&file, &dir, DType::F32).unwrap();
    let stored = ferrotune::model_dir::stored_blocks::read(&dir, &Device::Cpu).unwrap();
    // 2 layers × (q, k, v, o, gate, up).
    assert_eq!(stored.len(), 12);
    assert!(stored.iter().all(|(_, q)| q.dtype() == GgmlDType::Q8_0));
    assert_eq!(Storage::for_model(&dir, None), Storage::StoredBlocks);
    // The blocks are exactly the dequantized weights the directory holds (q/k unpermuted).
    let dense =
        candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
    for (name, q) in &stored {
        assert_eq!(
            max_diff(&q.dequantize(&Device::Cpu).unwrap(), &dense[name]),
            0.0,
            "{name}"
        );
    }
    // A run says so and trains to the end.
    let mut cfg = crate::helpers::fixtures::config(tmp.path(), 1, 1e-3);
    cfg.model_dir = dir.clone();
    let mut messages = Vec::new();
    let end = ferrotune::train::run::train(&cfg, &|| false, &mut |u| {
        if let ferrotune::train::run::Update::Message(m) = u {
            messages.push(m);
        }
    })
    .unwrap();
    assert!(matches!(end, ferrotune::train::run::RunEnd::Finished(_)));
    let said = messages
        .iter()
        .find(|m| m.starts_with("QLoRA: training on the GGUF's stored blocks"))
        .unwrap_or_else(|| panic!("{messages:?}"));
    assert!(said.contains("12 projections in q8_0"), "{said}");
    // Asking for a quantization requantizes instead.
    let nf4 = Some(ferrotune::model_dir::quant::Quantization::Nf4 { double: true });
    assert!(matches!(
        Storage::for_model(&dir, nf4),
        Storage::Quantize(_)
    ));
}
