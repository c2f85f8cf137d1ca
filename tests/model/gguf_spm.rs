//! A SentencePiece tokenizer in GGUF (`tokenizer.ggml.model = llama`, as Llama 2 and Mistral
//! ship): pieces, scores and token types from a sentencepiece BPE model
//! (`scripts/parity/spm_reference.py`) imported, then compared with sentencepiece's own ids.

use candle_core::quantized::gguf_file::Value;
use candle_core::{DType, Device, Tensor};
use ferrotune::model_dir::gguf;
use ferrotune::train::tiny::{TinyArch, init_tiny};
use serde_json::Value as Json;

use crate::gguf::{model_meta, write_file};

fn reference() -> Json {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/spm/reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn a_sentencepiece_gguf_tokenizes_as_sentencepiece_does() {
    let r = reference();
    let tmp = tempfile::tempdir().unwrap();
    let tiny = tmp.path().join("tiny");
    init_tiny(&tiny, TinyArch::Llama, 0).unwrap();
    let config: Json =
        serde_json::from_str(&std::fs::read_to_string(tiny.join("config.json")).unwrap()).unwrap();
    let tokens = r["tokens"].as_array().unwrap();
    // The tiny model's layers with embeddings as wide as this vocabulary.
    let mut weights =
        candle_core::safetensors::load(tiny.join("model.safetensors"), &Device::Cpu).unwrap();
    let hidden = config["hidden_size"].as_u64().unwrap() as usize;
    for name in ["model.embed_tokens.weight", "lm_head.weight"] {
        let t = Tensor::randn(0f32, 0.02, (tokens.len(), hidden), &Device::Cpu).unwrap();
        weights.insert(name.to_owned(), t);
    }
    let array = |key: &str, f: fn(&Json) -> Value| {
        Value::Array(r[key].as_array().unwrap().iter().map(f).collect())
    };
    let mut meta = model_meta(&config, "llama");
    meta.extend([
        ("tokenizer.ggml.model".into(), Value::String("llama".into())),
        (
            "tokenizer.ggml.tokens".into(),
            array("tokens", |t| Value::String(t.as_str().unwrap().into())),
        ),
        (
            "tokenizer.ggml.scores".into(),
            array("scores", |s| Value::F32(s.as_f64().unwrap() as f32)),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            array("token_type", |t| Value::I32(t.as_i64().unwrap() as i32)),
        ),
        ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
        ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id".into(), Value::U32(0)),
        ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
    ]);
    let file = tmp.path().join("spm.gguf");
    write_file(&config, weights, &meta, &file);
    let out = tmp.path().join("imported");
    gguf::import(&file, &out, DType::F32).unwrap();
    let tok = ferrotune::train::data::load_tokenizer(&out).unwrap();
    let corpus = r["corpus"].as_array().unwrap();
    for (text, want) in corpus.iter().zip(r["ids"].as_array().unwrap()) {
        let text = text.as_str().unwrap();
        let want: Vec<u32> = serde_json::from_value(want.clone()).unwrap();
        let got = tok.encode(text, false).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "{text:?}");
        // Byte fallback and the `▁` spaces decode back to the text.
        assert_eq!(tok.decode(&got, false).unwrap(), text, "{text:?}");
    }
    let config = std::fs::read_to_string(out.join("tokenizer_config.json")).unwrap();
    assert!(config.contains("\"bos_token\": \"<s>\""), "{config}");
    // The imported model loads and runs on those ids.
    let (model, _) =
        ferrotune::train::model::CausalLm::load(&out, None, 0, &Device::Cpu, DType::F32).unwrap();
    let ids = tok
        .encode("Drink water.", false)
        .unwrap()
        .get_ids()
        .to_vec();
    let input = Tensor::new(ids.as_slice(), &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let logits = model
        .forward(&input, &[(0, ids.len())], Default::default())
        .unwrap();
    assert_eq!(logits.dims(), [1, ids.len(), tokens.len()]);
}
