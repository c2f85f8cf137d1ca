//! The candle trainer on the generated tiny model: gradients, determinism, pause/resume,
//! checkpoints, and that it actually learns.

use std::cell::Cell;
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use ferrotune::domain::dataset::{Role, Turn};
use ferrotune::model_dir::template::ChatTemplate;
use ferrotune::train::data::{self, Batch};
use ferrotune::train::generate::greedy;
use ferrotune::train::lora::LoraSpec;
use ferrotune::train::loss::causal_lm_loss;
use ferrotune::train::model::{CausalLm, ForwardCtx};
use ferrotune::train::run::{self, RunConfig, RunEnd, Update};
use ferrotune::train::step::loss_and_grads;
use ferrotune::train::tiny::TinyArch;
use serde_json::json;

use crate::helpers::fixtures::{
    Noted, QA, config, finish, finish_noting, first_batch, max_abs, rel_err, samples, setup, spec,
};

#[test]
fn a_fresh_adapter_leaves_the_model_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Qwen2);
    let dev = Device::Cpu;
    let (base, _) = CausalLm::load(&dir.path().join("model"), None, 1, &dev, DType::F32).unwrap();
    let (adapted, lora) = CausalLm::load(
        &dir.path().join("model"),
        Some(&spec()),
        1,
        &dev,
        DType::F32,
    )
    .unwrap();
    assert_eq!(lora.adapters.len(), 14);
    let batch = first_batch(dir.path(), &base);
    let a = base
        .forward(&batch.input_ids, &batch.segments, ForwardCtx::default())
        .unwrap();
    let b = adapted
        .forward(&batch.input_ids, &batch.segments, ForwardCtx::default())
        .unwrap();
    assert_eq!(max_abs(&(a - b).unwrap()), 0.0);
}

#[test]
fn every_lora_tensor_receives_a_finite_nonzero_gradient() {
    for arch in [TinyArch::Llama, TinyArch::Qwen2] {
        let dir = tempfile::tempdir().unwrap();
        setup(dir.path(), arch);
        let (model, lora) = CausalLm::load(
            &dir.path().join("model"),
            Some(&spec()),
            1,
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        // With B = 0 the gradient of A is zero by construction; give B values first.
        for a in &lora.adapters {
            let b = Tensor::randn(0f32, 0.1, a.b.dims(), &Device::Cpu).unwrap();
            a.b.set(&b).unwrap();
        }
        let batch = first_batch(dir.path(), &model);
        let logits = model
            .forward(&batch.input_ids, &batch.segments, ForwardCtx::default())
            .unwrap();
        let grads = causal_lm_loss(&logits, &batch.labels)
            .unwrap()
            .loss
            .backward()
            .unwrap();
        for (name, t) in lora.named_tensors() {
            let g = grads
                .get(&t)
                .unwrap_or_else(|| panic!("{arch:?}: {name} got no gradient"));
            let v: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
            assert!(
                v.iter().all(|x| x.is_finite()),
                "{name} has a non-finite gradient"
            );
            assert!(
                v.iter().any(|x| *x != 0.0),
                "{arch:?}: {name} has an all-zero gradient"
            );
        }
    }
}

#[test]
fn gradient_checkpointing_gives_the_same_loss_and_gradients() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let spec = LoraSpec {
        dropout: 0.1,
        ..spec()
    };
    let (model, lora) = CausalLm::load(
        &dir.path().join("model"),
        Some(&spec),
        1,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    for a in &lora.adapters {
        let b = Tensor::randn(0f32, 0.1, a.b.dims(), &Device::Cpu).unwrap();
        a.b.set(&b).unwrap();
    }
    let batch = first_batch(dir.path(), &model);
    let masks = model
        .dropout_masks(7, 3, batch.input_ids.elem_count())
        .unwrap();
    assert!(masks.is_some(), "dropout 0.1 must draw masks");
    let ctx = ForwardCtx {
        dropout: masks.as_ref(),
        embedding_noise: None,
    };
    let run = |checkpointing: bool| {
        let mut grads = vec![None; lora.vars().len()];
        let out =
            loss_and_grads(&model, &lora, &batch, ctx, 0.5, checkpointing, &mut grads).unwrap();
        (out, grads)
    };
    let (plain, plain_grads) = run(false);
    let (ckpt, ckpt_grads) = run(true);
    assert_eq!(plain.loss, ckpt.loss);
    assert_eq!((plain.correct, plain.count), (ckpt.correct, ckpt.count));
    for ((name, _), (p, c)) in lora
        .named_tensors()
        .iter()
        .zip(plain_grads.iter().zip(&ckpt_grads))
    {
        let p = p.as_ref().unwrap_or_else(|| panic!("{name}: no gradient"));
        let c = c
            .as_ref()
            .unwrap_or_else(|| panic!("{name}: no checkpointed gradient"));
        assert!(max_abs(p) > 0.0, "{name}: zero gradient");
        let err = rel_err(c, p);
        assert!(err <= 1e-5, "{name}: relative difference {err}");
    }
    // Through the training loop: the same loss curve with and without checkpointing.
    let mut cfg = config(dir.path(), 1, 5e-3);
    let plain = finish(&cfg).metrics;
    cfg.output_dir = dir.path().join("out-ckpt");
    cfg.hyperparameters.gradient_checkpointing = Some(true);
    let ckpt = finish(&cfg).metrics;
    assert_eq!(plain.len(), ckpt.len());
    for (p, c) in plain.iter().zip(&ckpt) {
        assert!((p.train_loss - c.train_loss).abs() < 1e-5, "{p:?} vs {c:?}");
    }
}

#[test]
fn a_packed_batch_gives_each_example_what_it_gets_alone() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let dev = Device::Cpu;
    let (model, lora) = CausalLm::load(
        &dir.path().join("model"),
        Some(&spec()),
        1,
        &dev,
        DType::F32,
    )
    .unwrap();
    for a in &lora.adapters {
        a.b.set(&Tensor::randn(0f32, 0.1, a.b.dims(), &dev).unwrap())
            .unwrap();
    }
    let mut examples = samples(dir.path(), 3);
    // The second example cut short, so the packed row mixes lengths (a prefix trains like any
    // example).
    let cut = examples[1].input_ids.len() - 5;
    examples[1].input_ids.truncate(cut);
    examples[1].labels.truncate(cut);
    assert!(examples[0].input_ids.len() != examples[1].input_ids.len());
    let packed = Batch::new(&examples.iter().collect::<Vec<_>>(), &dev).unwrap();
    let alone: Vec<Batch> = examples
        .iter()
        .map(|e| Batch::new(&[e], &dev).unwrap())
        .collect();
    // Logits: the packed row is the examples' own logits back to back.
    let logits = |b: &Batch| {
        model
            .forward(&b.input_ids, &b.segments, ForwardCtx::default())
            .unwrap()
    };
    let each: Vec<Tensor> = alone.iter().map(logits).collect();
    let err = rel_err(&logits(&packed), &Tensor::cat(&each, 1).unwrap());
    assert!(err <= 1e-5, "packed logits differ by {err}");
    // Loss and gradients: the packed mean equals the token-weighted mean of the examples alone,
    // with and without gradient checkpointing.
    for checkpointing in [false, true] {
        let run = |b: &Batch, scale: f64, grads: &mut Vec<Option<Tensor>>| {
            loss_and_grads(
                &model,
                &lora,
                b,
                ForwardCtx::default(),
                scale,
                checkpointing,
                grads,
            )
            .unwrap()
        };
        let mut packed_grads = vec![None; lora.vars().len()];
        let whole = run(&packed, 1.0, &mut packed_grads);
        let mut split_grads = vec![None; lora.vars().len()];
        let (mut loss, mut count) = (0f64, 0usize);
        for b in &alone {
            let n = b.labels[0]
                .iter()
                .skip(1)
                .filter(|l| **l != data::IGNORE)
                .count();
            let out = run(b, n as f64 / whole.count as f64, &mut split_grads);
            assert_eq!(out.count, n);
            loss += f64::from(out.loss) * n as f64;
            count += n;
        }
        assert_eq!(count, whole.count);
        let mean = (loss / count as f64) as f32;
        assert!(
            (whole.loss - mean).abs() <= 1e-5 * mean.abs(),
            "{} vs {mean}",
            whole.loss
        );
        for (p, s) in packed_grads.iter().zip(&split_grads) {
            let err = rel_err(p.as_ref().unwrap(), s.as_ref().unwrap());
            assert!(
                err <= 1e-4,
                "gradients differ by {err} (checkpointing {checkpointing})"
            );
        }
    }
}

/// The rows without the measured speed, which is all a rerun does not reproduce.
fn untimed(rows: &[run::MetricsRow]) -> Vec<run::MetricsRow> {
    rows.iter()
        .map(|r| run::MetricsRow {
            tokens_per_second: None,
            ..r.clone()
        })
        .collect()
}

#[test]
fn the_same_seed_and_data_give_the_same_loss_curve_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let mut cfg = config(dir.path(), 2, 5e-3);
    let first = untimed(&finish(&cfg).metrics);
    cfg.output_dir = dir.path().join("out2");
    let second = untimed(&finish(&cfg).metrics);
    assert_eq!(first.len(), 10);
    assert_eq!(first, second);
    cfg.seed = 8;
    cfg.output_dir = dir.path().join("out3");
    assert_ne!(
        untimed(&finish(&cfg).metrics),
        first,
        "another seed must change the run"
    );
}

#[test]
fn pausing_and_resuming_ends_exactly_where_an_uninterrupted_run_does() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    pause_at_7_and_resume(dir.path(), config(dir.path(), 4, 5e-3));
}

#[test]
fn a_dpo_run_pauses_and_resumes_exactly_too() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let pairs: Vec<_> = QA
        .iter()
        .map(|(q, a)| json!({"instruction": q, "chosen": a, "rejected": "No idea, sorry."}))
        .collect();
    std::fs::write(
        dir.path().join("pairs.json"),
        serde_json::to_vec(&pairs).unwrap(),
    )
    .unwrap();
    let mut cfg = config(dir.path(), 4, 5e-3);
    cfg.train_file = dir.path().join("pairs.json");
    cfg.hyperparameters.preference = Some(Default::default());
    pause_at_7_and_resume(dir.path(), cfg);
}

/// Run `cfg` (20 steps) whole, then again stopped after step 7 and resumed: the same metrics.
fn pause_at_7_and_resume(dir: &Path, mut cfg: RunConfig) {
    let reference = finish(&cfg).metrics;
    cfg.output_dir = dir.join("paused");
    let polls = Cell::new(0);
    let stop_at_7 = || {
        polls.set(polls.get() + 1);
        polls.get() == 7
    };
    match run::train(&cfg, &stop_at_7, &mut |_| {}).unwrap() {
        RunEnd::Stopped { step } => assert_eq!(step, 7),
        RunEnd::Finished(_) => panic!("the run ignored the stop signal"),
    }
    assert!(cfg.output_dir.join("state/state.json").exists());
    let mut messages = Vec::new();
    let resumed = match run::train(&cfg, &|| false, &mut |u| match u {
        Update::Message(m) => messages.push(m),
        Update::Resumed { step, total } => {
            messages.push(format!("Resuming from step {step}/{total}"))
        }
        _ => {}
    })
    .unwrap()
    {
        RunEnd::Finished(out) => out,
        RunEnd::Stopped { .. } => panic!("stopped"),
    };
    assert!(
        messages
            .iter()
            .any(|m| m.contains("Resuming from step 7/20")),
        "{messages:?}"
    );
    assert_eq!(untimed(&resumed.metrics), untimed(&reference));
    assert!(
        !cfg.output_dir.join("state/state.json").exists(),
        "state is cleared after the run"
    );
}

#[test]
fn checkpoints_are_peft_directories_and_only_the_last_three_epochs_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let mut cfg = config(dir.path(), 5, 5e-3);
    cfg.hyperparameters.save_steps = 2;
    let mut written = Vec::new();
    let mut pruned = Vec::new();
    run::train(&cfg, &|| false, &mut |u| match u {
        Update::Checkpoint { step, .. } => written.push(step),
        Update::Pruned(step) => pruned.push(step),
        _ => {}
    })
    .unwrap();
    // 5 steps per epoch: saves at 2, 4, 5 (epoch end), 6, 8, 10, …, 25.
    assert!(written.contains(&5) && written.contains(&25));
    let kept: Vec<usize> = written
        .iter()
        .copied()
        .filter(|s| !pruned.contains(s))
        .collect();
    assert!(kept.iter().all(|s| *s > 10), "kept {kept:?}");
    for step in &kept {
        let ckpt = run::checkpoint_dir(&cfg.output_dir, *step);
        let config: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(ckpt.join("adapter_config.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(config["peft_type"], "LORA");
        assert_eq!(config["task_type"], "CAUSAL_LM");
        assert_eq!(config["r"], 8);
        assert_eq!(config["lora_alpha"], 32.0);
        assert_eq!(config["lora_dropout"], 0.05);
        assert_eq!(config["target_modules"].as_array().unwrap().len(), 7);
        let tensors =
            candle_core::safetensors::load(ckpt.join("adapter_model.safetensors"), &Device::Cpu)
                .unwrap();
        assert!(
            tensors.contains_key("base_model.model.model.layers.1.mlp.down_proj.lora_B.weight")
        );
        assert_eq!(tensors.len(), 28);
    }
    for step in &pruned {
        assert!(!run::checkpoint_dir(&cfg.output_dir, *step).exists());
    }
}

#[test]
fn ten_examples_are_learned_well_enough_to_recite_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let mut cfg = config(dir.path(), 20, 1e-2);
    cfg.hyperparameters.lora.dropout = 0.0;
    let out = finish(&cfg);
    let first = out.metrics.first().unwrap().train_loss;
    let last = out.metrics.last().unwrap().train_loss;
    assert!(
        last < 0.3,
        "training loss went from {first} to {last}, expected < 0.3"
    );
    // Load the written adapter and decode greedily.
    let model_dir = dir.path().join("model");
    let spec = LoraSpec {
        dropout: 0.0,
        ..spec()
    };
    let (model, lora) =
        CausalLm::load(&model_dir, Some(&spec), 0, &Device::Cpu, DType::F32).unwrap();
    lora.load_peft(
        &out.adapter_dir.join("adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let tok = data::load_tokenizer(&model_dir).unwrap();
    let template = ChatTemplate::from_model_dir(&model_dir).unwrap();
    let turns = [Turn::new(Role::User, QA[0].0)];
    let answer = greedy(&model, &tok, &template, &turns, 40).unwrap();
    assert_eq!(answer, QA[0].1);
    let csv = std::fs::read_to_string(&out.metrics_csv).unwrap();
    assert!(csv.starts_with(
        "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,train_loss_mean\n"
    ));
    assert_eq!(csv.lines().count(), 101);
    assert!(
        std::fs::read_to_string(&out.loss_svg)
            .unwrap()
            .contains("<polyline")
    );
}

#[test]
fn sharded_checkpoints_load_like_a_single_file() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let single = dir.path().join("model");
    let sharded = dir.path().join("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(single.join(f), sharded.join(f)).unwrap();
    }
    let all =
        candle_core::safetensors::load(single.join("model.safetensors"), &Device::Cpu).unwrap();
    let mut shards = [
        std::collections::HashMap::new(),
        std::collections::HashMap::new(),
    ];
    let mut map = serde_json::Map::new();
    for (i, (name, t)) in all.into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i % 2 + 1);
        map.insert(name.clone(), json!(file));
        shards[i % 2].insert(name, t);
    }
    for (i, shard) in shards.iter().enumerate() {
        let path = sharded.join(format!("model-0000{}-of-00002.safetensors", i + 1));
        ferrotune::train::tensor_file::write_safetensors(&path, shard).unwrap();
    }
    let index = json!({"metadata": {}, "weight_map": map});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let (a, _) = CausalLm::load(&single, None, 0, &Device::Cpu, DType::F32).unwrap();
    let (b, _) = CausalLm::load(&sharded, None, 0, &Device::Cpu, DType::F32).unwrap();
    let batch = first_batch(dir.path(), &a);
    let la = a
        .forward(&batch.input_ids, &batch.segments, ForwardCtx::default())
        .unwrap();
    let lb = b
        .forward(&batch.input_ids, &batch.segments, ForwardCtx::default())
        .unwrap();
    assert_eq!(la.to_vec3::<f32>().unwrap(), lb.to_vec3::<f32>().unwrap());
}

#[test]
fn unsupported_architectures_are_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let path = dir.path().join("model/config.json");
    let text = std::fs::read_to_string(&path)
        .unwrap()
        .replace("LlamaForCausalLM", "GPT2LMHeadModel");
    std::fs::write(&path, text).unwrap();
    let err = CausalLm::load(&dir.path().join("model"), None, 0, &Device::Cpu, DType::F32)
        .err()
        .unwrap();
    assert!(err.to_string().contains("GPT2LMHeadModel"), "{err}");
}

/// Validation examples that ask the training questions and want another answer: the better the
/// run learns its training answers, the worse it does on these.
fn contrary_validation(dir: &Path) -> std::path::PathBuf {
    let records: Vec<_> = QA
        .iter()
        .map(|(q, _)| json!({"instruction": q, "input": "", "output": "Nobody can say, sorry."}))
        .collect();
    let path = dir.join("contrary.json");
    std::fs::write(&path, serde_json::to_string(&records).unwrap()).unwrap();
    path
}

#[test]
fn a_rising_validation_loss_stops_the_run_early_and_the_best_checkpoint_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let mut cfg = config(dir.path(), 20, 5e-3);
    cfg.valid_file = Some(contrary_validation(dir.path()));
    cfg.hyperparameters.logging_steps = 1;
    cfg.hyperparameters.evaluation.early_stopping_patience = Some(3);
    cfg.hyperparameters.evaluation.predict_with_generate = false;
    let Noted { out, messages, .. } = finish_noting(&cfg);
    let rows = &out.metrics;
    assert!(rows.len() < 100, "ran all {} steps", rows.len());
    let (best_step, best_loss) = rows
        .iter()
        .filter_map(|r| Some((r.step, r.valid_loss?)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    assert_eq!(rows.last().unwrap().step, best_step + 3, "{messages:?}");
    assert!(
        messages.iter().any(|m| m.starts_with("Stopping early")),
        "{messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.contains(&format!("checkpoint of step {best_step} "))),
        "{messages:?}"
    );
    // The adapter the run hands over scores the best validation loss, not the last one.
    let (model, lora) = CausalLm::load(
        &dir.path().join("model"),
        Some(&LoraSpec {
            dropout: 0.05,
            ..spec()
        }),
        1,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    lora.load_peft(
        &out.adapter_dir.join("adapter_model.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let tok = data::load_tokenizer(&dir.path().join("model")).unwrap();
    let template = ChatTemplate::from_model_dir(&dir.path().join("model")).unwrap();
    let limits = data::Limits {
        max_length: cfg.hyperparameters.max_length as usize,
        max_source_length: None,
        max_target_length: None,
    };
    let valid: Vec<data::Sample> = data::read_examples(cfg.valid_file.as_ref().unwrap())
        .unwrap()
        .iter()
        .map(|e| data::encode(e, &template, &tok, limits).unwrap().unwrap())
        .collect();
    let (loss, _) = run::evaluate(&model, &valid, 2, &Device::Cpu).unwrap();
    let last = rows.last().unwrap().valid_loss.unwrap();
    assert!(
        (loss - best_loss).abs() < 1e-5,
        "{loss} vs best {best_loss}"
    );
    assert!(last > best_loss + 1e-4, "last {last}, best {best_loss}");
}

#[test]
fn without_best_checkpoint_selection_the_last_step_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let mut cfg = config(dir.path(), 4, 5e-3);
    cfg.valid_file = Some(contrary_validation(dir.path()));
    cfg.hyperparameters.evaluation.load_best_model_at_end = Some(false);
    cfg.hyperparameters.evaluation.predict_with_generate = false;
    let Noted { out, messages, .. } = finish_noting(&cfg);
    assert_eq!(out.metrics.len(), 20);
    assert!(!messages.iter().any(|m| m.contains("checkpoint of step")));
    assert!(!cfg.output_dir.join("best").exists());
}

#[test]
fn the_logged_training_loss_is_the_mean_since_the_last_log() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let cfg = config(dir.path(), 3, 5e-3);
    let mut logged = Vec::new();
    let end = run::train(&cfg, &|| false, &mut |u| {
        if let Update::Metrics { row, .. } = u {
            logged.push(row);
        }
    })
    .unwrap();
    let RunEnd::Finished(out) = end else {
        panic!("the run did not finish")
    };
    // Logging every 5 of 15 steps.
    assert_eq!(
        logged.iter().map(|r| r.step).collect::<Vec<_>>(),
        [5, 10, 15]
    );
    for row in &logged {
        let window: Vec<f32> = out
            .metrics
            .iter()
            .filter(|r| r.step + 5 > row.step && r.step <= row.step)
            .map(|r| r.step_loss.unwrap())
            .collect();
        let mean = window.iter().sum::<f32>() / window.len() as f32;
        assert_eq!(window.len(), 5);
        assert!((row.train_loss - mean).abs() < 1e-6, "step {}", row.step);
        assert_ne!(row.train_loss, row.step_loss.unwrap());
    }
    // The CSV keeps every step's own loss, then the logged mean.
    let csv = std::fs::read_to_string(&out.metrics_csv).unwrap();
    let line = csv.lines().nth(7).unwrap(); // step 7
    let cells: Vec<&str> = line.split(',').collect();
    let seventh = &out.metrics[6];
    assert_eq!(cells[0], "7");
    assert_eq!(cells[1], seventh.step_loss.unwrap().to_string());
    assert_eq!(cells[5], seventh.train_loss.to_string());
}

#[test]
fn neftune_noise_changes_training_reproducibly_and_leaves_evaluation_alone() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let mut cfg = config(dir.path(), 1, 5e-3);
    let plain = untimed(&finish(&cfg).metrics);
    cfg.hyperparameters.neftune_noise_alpha = Some(5.0);
    cfg.output_dir = dir.path().join("noisy");
    let noisy = untimed(&finish(&cfg).metrics);
    cfg.output_dir = dir.path().join("noisy-again");
    let again = untimed(&finish(&cfg).metrics);
    assert_eq!(noisy, again);
    assert_ne!(plain[0].step_loss, noisy[0].step_loss);
    // Same first-step adapter (zero B), so only the noise moved the first loss: a little.
    let (a, b) = (plain[0].step_loss.unwrap(), noisy[0].step_loss.unwrap());
    assert!((a - b).abs() / a < 0.2, "{a} vs {b}");
}

#[test]
fn a_learning_rate_range_test_picks_the_rate_and_leaves_the_adapter_as_it_found_it() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let mut cfg = config(dir.path(), 2, 5e-3);
    cfg.hyperparameters.learning_rate = None;
    cfg.hyperparameters.find_learning_rate = true;
    let Noted {
        out: found_run,
        messages,
        resolved: shown,
    } = finish_noting(&cfg);
    assert!(!shown.find_learning_rate);
    let lr = shown.learning_rate.unwrap();
    assert!((1e-7..=1e-2).contains(&lr), "{lr}");
    assert!(
        messages
            .iter()
            .any(|m| m.contains("smoothed loss was lowest") && m.contains(&format!("{lr:.2e}"))),
        "{messages:?}"
    );
    // The real run starts from the adapter the test started from: the same curve as a run told
    // that rate from the start.
    cfg.hyperparameters.find_learning_rate = false;
    cfg.hyperparameters.learning_rate = Some(lr);
    cfg.output_dir = dir.path().join("told");
    assert_eq!(untimed(&found_run.metrics), untimed(&finish(&cfg).metrics));
}
