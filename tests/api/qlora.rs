//! QLoRA: frozen projections stored quantized (NF4, ggml blocks) and dequantized per use. A step
//! on them gives the loss and LoRA gradients of the same step on the dequantized weights, with
//! and without gradient checkpointing; a 4-bit job trains through the API, and the served model
//! (the adapter merged into the dequantized base by mistral.rs) answers as the trainer predicts.

use std::collections::HashMap;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use ferrotune::model_dir::quant::{self, Quantization, Storage};
use ferrotune::train::lora::LoraSet;
use ferrotune::train::model::{CausalLm, Config, ForwardCtx, Weights};
use ferrotune::train::step::loss_and_grads;
use ferrotune::train::tiny::TinyArch;
use serde_json::{Value, json};

use crate::tensors::rel_err;
use crate::train_loop::{QA, first_batch, setup, spec};

/// Loss and every LoRA gradient of one forward/backward on the first batch.
fn step(model: &CausalLm, lora: &LoraSet, dir: &std::path::Path, ckpt: bool) -> (f32, Vec<Tensor>) {
    let batch = first_batch(dir, model);
    let mut grads = vec![None; lora.vars().len()];
    let out = loss_and_grads(
        model,
        lora,
        &batch,
        ForwardCtx::default(),
        1.0,
        ckpt,
        &mut grads,
    )
    .unwrap();
    (out.loss, grads.into_iter().map(Option::unwrap).collect())
}

fn assert_same_step(what: &str, a: &(f32, Vec<Tensor>), b: &(f32, Vec<Tensor>)) {
    assert!((a.0 - b.0).abs() < 1e-5, "{what}: loss {} vs {}", a.0, b.0);
    for (x, y) in a.1.iter().zip(&b.1) {
        let err = rel_err(x, y);
        assert!(err < 1e-4, "{what}: gradient relative error {err}");
    }
}

#[test]
fn a_qlora_step_equals_the_step_on_the_dequantized_weights_with_or_without_checkpointing() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let model_dir = dir.path().join("model");
    let dev = Device::Cpu;
    let (plain, plain_lora) =
        CausalLm::load(&model_dir, Some(&spec()), 3, &dev, DType::F32).unwrap();
    let dense = step(&plain, &plain_lora, dir.path(), false);
    for how in [
        Quantization::Nf4 { double: true },
        Quantization::Nf4 { double: false },
        Quantization::Ggml(GgmlDType::Q8_0),
        Quantization::Ggml(GgmlDType::Q4_0),
    ] {
        let what = how.label();
        let (q_model, q_lora) = CausalLm::load_stored(
            &model_dir,
            Some(&spec()),
            3,
            &dev,
            DType::F32,
            Storage::Quantize(how),
        )
        .unwrap();
        // The reference: every projection replaced by its quantize → dequantize round trip
        // (ggml rows no block divides — down_proj's 176 — stay dense in both).
        let mut tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load(model_dir.join("model.safetensors"), &dev).unwrap();
        for (name, t) in tensors.iter_mut() {
            *t = quant::round_trip(name, t, how).unwrap();
        }
        let weights = Weights::from_map(tensors);
        let cfg = Config::load(&model_dir).unwrap();
        let (d_model, d_lora) =
            CausalLm::build(cfg, &weights, Some(&spec()), 3, &dev, DType::F32).unwrap();
        let quantized = step(&q_model, &q_lora, dir.path(), false);
        assert_same_step(
            &what,
            &quantized,
            &step(&d_model, &d_lora, dir.path(), false),
        );
        // Checkpointing recomputes each layer, dequantizing again: the same step.
        let recomputed = step(&q_model, &q_lora, dir.path(), true);
        assert_same_step(&format!("{what} checkpointed"), &quantized, &recomputed);
        // And quantization changed something: the dense model's loss differs.
        assert_ne!(dense.0, quantized.0, "{what}");
    }
}

/// The adapter directory a job wrote under `dir`.
pub fn find_adapter(dir: &std::path::Path) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.ends_with("adapter") && path.join("adapter_model.safetensors").exists() {
            return Some(path);
        }
        if path.is_dir()
            && let Some(found) = find_adapter(&path)
        {
            return Some(found);
        }
    }
    None
}

/// `base_dir` stored as `storage` with the trained adapter in `adapter` loaded: the model the
/// trainer's forward predicts with.
pub fn trained_model(
    base_dir: &std::path::Path,
    adapter: &std::path::Path,
    storage: Storage,
) -> CausalLm {
    let (model, lora) = CausalLm::load_stored(
        base_dir,
        Some(&spec_of(adapter)),
        0,
        &Device::Cpu,
        DType::F32,
        storage,
    )
    .unwrap();
    lora.load_peft(&adapter.join("adapter_model.safetensors"), &Device::Cpu)
        .unwrap();
    model
}

#[tokio::test]
async fn a_4_bit_job_succeeds_and_is_served_as_the_trainer_predicts() {
    let app = crate::helpers::spawn_app().await;
    let (id, model_name) =
        crate::chat::fine_tune_with(&app, "nf4", json!({"quantization_bit": 4})).await;
    let messages = app.event_messages(&id).await;
    assert!(
        messages.iter().any(|m| m.starts_with(
            "QLoRA: the frozen projections are stored as nf4 (double-quantized scales)"
        )),
        "{messages:?}"
    );
    // The trainer's greedy answers: its own NF4 base with the job's adapter.
    let adapter = find_adapter(app.data_dir.path()).expect("the job's adapter");
    let base_dir = app.engine.base_dir().to_path_buf();
    let storage = Storage::Quantize(Quantization::Nf4 { double: true });
    let model = trained_model(&base_dir, &adapter, storage);
    let tok = ferrotune::train::data::load_tokenizer(&base_dir).unwrap();
    let template = ferrotune::model_dir::template::ChatTemplate::from_model_dir(&base_dir).unwrap();
    for (question, _) in &QA[..3] {
        let turns = [user(question)];
        let ours = ferrotune::train::generate::greedy(&model, &tok, &template, &turns, 40).unwrap();
        let served = crate::chat::ask(&app, &model_name, question).await;
        assert_eq!(
            served["choices"][0]["message"]["content"],
            ours.as_str(),
            "{question}"
        );
    }
    // It learned: the first answer is recited.
    let turns = [user(QA[0].0)];
    let ours = ferrotune::train::generate::greedy(&model, &tok, &template, &turns, 40).unwrap();
    assert_eq!(ours, QA[0].1);
}

/// A user turn saying `text`.
pub fn user(text: &str) -> ferrotune::domain::dataset::Turn {
    ferrotune::domain::dataset::Turn::new(ferrotune::domain::dataset::Role::User, text)
}

/// The LoRA spec an adapter directory was written with.
pub fn spec_of(adapter: &std::path::Path) -> ferrotune::train::lora::LoraSpec {
    let cfg: Value = serde_json::from_str(
        &std::fs::read_to_string(adapter.join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    ferrotune::train::lora::LoraSpec {
        rank: cfg["r"].as_u64().unwrap() as usize,
        alpha: cfg["lora_alpha"].as_f64().unwrap(),
        dropout: 0.0,
        targets: cfg["target_modules"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect(),
    }
}

#[tokio::test]
async fn bad_quantization_values_are_400s_naming_the_field() {
    let app = crate::helpers::spawn_app().await;
    let train = crate::training_jobs::upload_qa(&app, 10).await;
    for (hp, param) in [
        (json!({"quantization_bit": 3}), "quantization_bit"),
        (json!({"quantization_method": "fp4"}), "quantization_method"),
        (
            json!({"quantization_bit": 8, "quantization_method": "nf4"}),
            "quantization_method",
        ),
        (
            json!({"quantization_method": "q4_0", "double_quantization": true}),
            "double_quantization",
        ),
    ] {
        let res = app
            .post(
                "/v1/fine_tuning/jobs",
                &json!({"model": "ferrotune-tiny", "training_file": train, "hyperparameters": hp}),
            )
            .await;
        assert_eq!(res.status(), 400, "{hp}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(
            body["error"]["param"],
            format!("hyperparameters.{param}"),
            "{body}"
        );
    }
}
