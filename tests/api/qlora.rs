//! QLoRA: frozen projections stored in ggml blocks and dequantized per use. A step on them gives
//! the loss and LoRA gradients of the same step on the dequantized weights, and a job with
//! `quantization_bit` trains to `succeeded` through the API.

use std::collections::HashMap;

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use ferrotune::train::loss::causal_lm_loss;
use ferrotune::train::model::{CausalLm, Config, ForwardCtx, Weights};
use ferrotune::train::tiny::TinyArch;

use crate::tensors::rel_err;
use crate::train_loop::{first_batch, setup, spec};

/// Loss and every LoRA gradient of one forward/backward on the first batch.
fn step(
    model: &CausalLm,
    lora: &ferrotune::train::lora::LoraSet,
    dir: &std::path::Path,
) -> (f32, Vec<Tensor>) {
    let batch = first_batch(dir, model);
    let logits = model
        .forward(
            &batch.input_ids,
            &batch.attention_mask,
            ForwardCtx::default(),
        )
        .unwrap();
    let out = causal_lm_loss(&logits, &batch.labels).unwrap();
    let grads = out.loss.backward().unwrap();
    let g = lora
        .vars()
        .iter()
        .map(|v| grads.get(v.as_tensor()).unwrap().clone())
        .collect();
    (out.loss.to_scalar::<f32>().unwrap(), g)
}

#[test]
fn a_qlora_step_equals_the_step_on_the_dequantized_weights() {
    for kind in [GgmlDType::Q8_0, GgmlDType::Q4_0] {
        let dir = tempfile::tempdir().unwrap();
        setup(dir.path(), TinyArch::Llama);
        let model_dir = dir.path().join("model");
        let dev = Device::Cpu;
        let (q_model, q_lora) =
            CausalLm::load_quantized(&model_dir, Some(&spec()), 3, &dev, DType::F32, Some(kind))
                .unwrap();
        // The reference: every projection whose rows split into blocks (down_proj's 176 do not,
        // and stays dense in both) replaced by its quantize → dequantize round trip.
        let mut tensors: HashMap<String, Tensor> =
            candle_core::safetensors::load(model_dir.join("model.safetensors"), &dev).unwrap();
        for (name, t) in tensors.iter_mut() {
            if name.contains("_proj.weight") && t.dims()[1].is_multiple_of(kind.block_size()) {
                *t = QTensor::quantize(t, kind)
                    .unwrap()
                    .dequantize(&dev)
                    .unwrap();
            }
        }
        let weights = Weights::from_map(tensors);
        let cfg = Config::load(&model_dir).unwrap();
        let (d_model, d_lora) =
            CausalLm::build(cfg, &weights, Some(&spec()), 3, &dev, DType::F32).unwrap();
        let (q_loss, q_grads) = step(&q_model, &q_lora, dir.path());
        let (d_loss, d_grads) = step(&d_model, &d_lora, dir.path());
        assert!(
            (q_loss - d_loss).abs() < 1e-5,
            "{kind:?}: loss {q_loss} vs {d_loss}"
        );
        for (q, d) in q_grads.iter().zip(&d_grads) {
            let err = rel_err(q, d);
            assert!(err < 1e-4, "{kind:?}: gradient relative error {err}");
        }
        // And quantization changed something: the dense model's loss differs.
        let (plain, plain_lora) =
            CausalLm::load(&model_dir, Some(&spec()), 3, &dev, DType::F32).unwrap();
        let (loss, _) = step(&plain, &plain_lora, dir.path());
        assert_ne!(loss, q_loss, "{kind:?}");
    }
}

#[tokio::test]
async fn a_qlora_job_trains_to_succeeded() {
    let app = crate::helpers::spawn_app().await;
    let train = crate::training_jobs::upload_qa(&app, 10).await;
    let job = app
        .create_job(
            &train,
            serde_json::json!({"method": {"type": "supervised", "supervised": {"hyperparameters":
                {"n_epochs": 2, "batch_size": 2, "learning_rate": 0.01, "quantization_bit": 8}}}}),
        )
        .await;
    let id = job["id"].as_str().unwrap();
    assert_eq!(
        job["method"]["supervised"]["hyperparameters"]["quantization_bit"],
        8
    );
    assert!(app.worker().run_once().await.unwrap());
    let job = app.job(id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let messages = app.event_messages(id).await;
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("QLoRA: the frozen projections are stored as Q8_0")),
        "{messages:?}"
    );
    // Bad values are a 400 naming the field.
    let res = app
        .post(
            "/v1/fine_tuning/jobs",
            &serde_json::json!({"model": "ferrotune-tiny", "training_file": train,
                "hyperparameters": {"quantization_bit": 3}}),
        )
        .await;
    assert_eq!(res.status(), 400);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["error"]["param"], "hyperparameters.quantization_bit");
}
