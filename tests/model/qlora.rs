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

use crate::helpers::fixtures::rel_err;
use crate::helpers::fixtures::{first_batch, setup, spec};

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
