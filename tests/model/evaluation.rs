//! The end-of-run generation evaluation on the tiny model: KV-cache decoding against the full
//! forward pass, base vs fine-tuned answers with their scores and result files, held-out splits,
//! and a resumed run that reuses the base answers of its first attempt.

use std::cell::Cell;

use candle_core::{DType, Device, Tensor};
use ferrotune::model_dir::template::ChatTemplate;
use ferrotune::train::data;
use ferrotune::train::generate::Prompter;
use ferrotune::train::model::{CausalLm, ForwardCtx, KvCache};
use ferrotune::train::run::{self, RunEnd, Update};
use ferrotune::train::tiny::TinyArch;

use crate::helpers::fixtures::rel_err;
use crate::helpers::fixtures::{QA, config, finish, finish_noting, setup};

#[test]
fn decoding_with_a_kv_cache_gives_the_logits_of_the_full_forward_pass() {
    for arch in [TinyArch::Llama, TinyArch::Qwen2] {
        let dir = tempfile::tempdir().unwrap();
        setup(dir.path(), arch);
        let (model, _) =
            CausalLm::load(&dir.path().join("model"), None, 0, &Device::Cpu, DType::F32).unwrap();
        let ids: Vec<u32> = (0..12).map(|i| (i * 37 + 5) % 250).collect();
        let input = Tensor::new(ids.as_slice(), &Device::Cpu)
            .unwrap()
            .unsqueeze(0)
            .unwrap();
        let full = model
            .forward(&input, &[(0, ids.len())], ForwardCtx::default())
            .unwrap()
            .squeeze(0)
            .unwrap();
        let mut cache = KvCache::default();
        // A five-token prefill, then one token at a time.
        let mut got = vec![model.forward_cached(&ids[..5], &mut cache).unwrap()];
        for id in &ids[5..] {
            got.push(model.forward_cached(&[*id], &mut cache).unwrap());
        }
        assert_eq!(cache.len(), ids.len());
        for (k, logits) in got.iter().enumerate() {
            let pos = 4 + k;
            let want = full.get(pos).unwrap();
            let err = rel_err(logits, &want);
            assert!(err < 1e-5, "{arch:?} position {pos}: relative error {err}");
        }
        // With trainable adapters attached, decoding keeps no autograd graph (which would hold
        // every earlier step's activations alive through the cache).
        let spec = ferrotune::train::lora::LoraSpec {
            rank: 4,
            alpha: 8.0,
            dropout: 0.05,
            targets: vec!["q_proj".into(), "k_proj".into(), "v_proj".into()],
        };
        let (adapted, _lora) = CausalLm::load(
            &dir.path().join("model"),
            Some(&spec),
            0,
            &Device::Cpu,
            DType::F32,
        )
        .unwrap();
        let mut c = KvCache::default();
        assert!(!adapted.forward_cached(&ids, &mut c).unwrap().track_op());
        assert!(!adapted.forward_cached(&[3], &mut c).unwrap().track_op());
        // A multi-token step after the prefill is refused.
        assert!(model.forward_cached(&ids[..2], &mut cache).is_err());
        // Greedy continuation stops at the limit (a random model never says its end token).
        let tok = data::load_tokenizer(&dir.path().join("model")).unwrap();
        let template = ChatTemplate::from_model_dir(&dir.path().join("model")).unwrap();
        let prompter = Prompter::new(&tok, &template);
        assert_eq!(prompter.continue_ids(&model, &ids, 8).unwrap().len(), 8);
    }
}

#[test]
fn left_padded_rows_decode_as_they_would_alone() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Qwen2);
    let (model, _) =
        CausalLm::load(&dir.path().join("model"), None, 0, &Device::Cpu, DType::F32).unwrap();
    let prompts: Vec<Vec<u32>> = [7usize, 3, 11]
        .iter()
        .map(|n| (0..*n as u32).map(|i| (i * 53 + *n as u32) % 250).collect())
        .collect();
    let steps: [u32; 3] = [17, 101, 5];
    let mut batch = KvCache::default();
    let mut got = vec![model.prefill(&prompts, &mut batch).unwrap()];
    for id in steps {
        got.push(model.decode_step(&[id, id, id], &mut batch).unwrap());
    }
    for (row, prompt) in prompts.iter().enumerate() {
        let mut alone = KvCache::default();
        let mut want = vec![model.forward_cached(prompt, &mut alone).unwrap()];
        for id in steps {
            want.push(model.forward_cached(&[id], &mut alone).unwrap());
        }
        for (k, w) in want.iter().enumerate() {
            let err = rel_err(&got[k].get(row).unwrap(), w);
            assert!(err < 1e-5, "row {row} step {k}: relative error {err}");
        }
    }
    // Wrong shapes are errors, not panics.
    assert!(model.decode_step(&[1, 2], &mut batch).is_err());
    assert!(model.prefill(&[vec![]], &mut KvCache::default()).is_err());
}

#[test]
fn a_learned_validation_set_scores_far_above_the_base_model() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let mut cfg = config(dir.path(), 20, 1e-2);
    cfg.hyperparameters.lora.dropout = 0.0;
    // Validating on the training set: the fine-tuned model recites, the random base cannot.
    cfg.valid_file = Some(dir.path().join("train.json"));
    let out = finish(&cfg);
    let e = out
        .evaluation
        .expect("a validation file gives an evaluation");
    assert_eq!(e.metrics.samples, QA.len());
    assert_eq!(e.records[0].prompt, QA[0].0);
    assert_eq!(e.records[0].reference, QA[0].1);
    assert_eq!(e.records[0].fine_tuned_answer, QA[0].1);
    assert!(
        e.metrics.fine_tuned.rouge_l > 0.8 && e.metrics.base.rouge_l < 0.1,
        "{:?}",
        e.metrics
    );
    assert!(e.metrics.fine_tuned.bleu4 > e.metrics.base.bleu4 + 0.5);
    let last = out.metrics.last().unwrap();
    assert_eq!(last.generation, Some(e.metrics));
    assert!(
        out.metrics[..out.metrics.len() - 1]
            .iter()
            .all(|m| m.generation.is_none())
    );
    let lines = std::fs::read_to_string(&e.jsonl).unwrap();
    assert_eq!(lines.lines().count(), QA.len());
    let summary = std::fs::read_to_string(&e.summary_csv).unwrap();
    assert_eq!(summary.lines().count(), 3);
}

#[test]
fn a_held_out_split_is_answered_and_a_resumed_run_reuses_the_base_answers() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let mut cfg = config(dir.path(), 3, 5e-3);
    cfg.hyperparameters.evaluation.validation_split = Some(3.0);
    cfg.hyperparameters.evaluation.eval_max_new_tokens = 8;
    let mut messages = Vec::new();
    let reference = match run::train(&cfg, &|| false, &mut |u| {
        if let Update::Message(m) = u {
            messages.push(m)
        }
    })
    .unwrap()
    {
        RunEnd::Finished(out) => out.evaluation.unwrap(),
        RunEnd::Stopped { .. } => panic!("stopped"),
    };
    assert_eq!(reference.metrics.samples, 3);
    assert!(
        messages.iter().any(|m| m.contains("on 7 examples")),
        "7 of 10 examples are trained on: {messages:?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m == "Answering 3 validation prompts with the base model")
    );
    // The same run paused after two steps, then resumed.
    cfg.output_dir = dir.path().join("paused");
    let polls = Cell::new(0);
    let stop_at_2 = || {
        polls.set(polls.get() + 1);
        polls.get() == 2
    };
    assert!(matches!(
        run::train(&cfg, &stop_at_2, &mut |_| {}).unwrap(),
        RunEnd::Stopped { step: 2 }
    ));
    let saved = cfg.output_dir.join("eval/base_answers.json");
    assert!(saved.exists(), "the base answers outlive the pause");
    let mut messages = Vec::new();
    let resumed = match run::train(&cfg, &|| false, &mut |u| {
        if let Update::Message(m) = u {
            messages.push(m)
        }
    })
    .unwrap()
    {
        RunEnd::Finished(out) => out.evaluation.unwrap(),
        RunEnd::Stopped { .. } => panic!("stopped"),
    };
    assert!(
        !messages.iter().any(|m| m.contains("with the base model")),
        "the base answers were not generated again: {messages:?}"
    );
    assert_eq!(resumed.records, reference.records);

    // Without generation, no evaluation and no result files for it.
    cfg.output_dir = dir.path().join("quiet");
    cfg.hyperparameters.evaluation.predict_with_generate = false;
    assert!(finish(&cfg).evaluation.is_none());
}

#[test]
fn a_split_that_leaves_nothing_to_train_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let mut cfg = config(dir.path(), 1, 5e-3);
    cfg.hyperparameters.evaluation.validation_split = Some(10.0);
    let err = run::train(&cfg, &|| false, &mut |_| {}).err().unwrap();
    assert!(err.to_string().contains("leaves no training"), "{err}");
}

#[test]
fn a_hundred_examples_spare_a_validation_split_unless_told_not_to() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let records: Vec<_> = (0..100)
        .map(|i| {
            let (q, a) = QA[i % QA.len()];
            serde_json::json!({"instruction": format!("{q} ({i})"), "input": "", "output": a})
        })
        .collect();
    std::fs::write(
        dir.path().join("train.json"),
        serde_json::to_string(&records).unwrap(),
    )
    .unwrap();
    let mut cfg = config(dir.path(), 1, 5e-3);
    cfg.hyperparameters.evaluation.predict_with_generate = false;
    let run = |cfg: &run::RunConfig| {
        let noted = finish_noting(cfg);
        (noted.resolved, noted.messages, noted.out.metrics)
    };
    let (shown, messages, rows) = run(&cfg);
    assert_eq!(shown.evaluation.validation_split, Some(10.0));
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("Holding out 10 of 100 training examples")),
        "{messages:?}"
    );
    assert_eq!(rows.len(), 45, "90 examples in batches of 2");
    assert!(rows.iter().any(|r| r.valid_loss.is_some()));
    // `validation_split: 0` trains on all of them and validates on none.
    cfg.hyperparameters.evaluation.validation_split = Some(0.0);
    cfg.output_dir = dir.path().join("all");
    let (shown, _, rows) = run(&cfg);
    assert_eq!(shown.evaluation.validation_split, Some(0.0));
    assert_eq!(rows.len(), 50);
    assert!(rows.iter().all(|r| r.valid_loss.is_none()));
}
