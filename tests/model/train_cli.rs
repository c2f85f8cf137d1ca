//! `ferrotune train --config FILE` as a user runs it: a LLaMA-Factory config with a held-out
//! split trains the tiny model and prints base and fine-tuned scores side by side.

use std::process::Command;

use ferrotune::train::tiny::TinyArch;

use crate::helpers::fixtures::setup;

fn train(config: &std::path::Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args(["train", "--config"])
        .arg(config)
        .output()
        .unwrap()
}

#[test]
fn a_held_out_split_is_scored_and_printed_side_by_side() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let config = dir.path().join("train.yaml");
    std::fs::write(
        &config,
        "model_name_or_path: model\ndataset: train.json\nlora_rank: 8\nlora_alpha: 32\n\
         learning_rate: 1.0e-2\nnum_train_epochs: 3\nper_device_train_batch_size: 2\n\
         val_size: 3\nmax_new_tokens: 8\noutput_dir: out\n",
    )
    .unwrap();
    let out = train(&config);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("generation on 3 validation prompts:"),
        "{stdout}"
    );
    let header = stdout.lines().find(|l| l.contains("metric")).unwrap();
    assert!(
        header.contains("base") && header.contains("fine-tuned"),
        "{header}"
    );
    for metric in ["rouge1", "rouge2", "rougeL", "bleu4"] {
        let row = stdout
            .lines()
            .find(|l| l.trim_start().starts_with(metric))
            .unwrap_or_else(|| panic!("{metric} missing: {stdout}"));
        assert_eq!(row.split_whitespace().count(), 3, "{row}");
    }
    assert!(stdout.lines().any(|l| l.starts_with("Q: ")), "{stdout}");
    let eval = std::fs::read_to_string(dir.path().join("out/results/eval.jsonl")).unwrap();
    assert_eq!(eval.lines().count(), 3);

    // A validation file and a split at once is one clear error.
    std::fs::write(
        &config,
        "model_name_or_path: model\ndataset: train.json\neval_dataset: train.json\nval_size: 0.2\n",
    )
    .unwrap();
    let out = train(&config);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("eval_dataset or val_size, not both"),
        "{stderr}"
    );
}

/// `stage: dpo` on LLaMA-Factory alpaca pairs, continuing from the adapter an SFT run wrote
/// (`adapter_name_or_path`); SFT data under `stage: dpo` and unknown stages are clear errors.
#[test]
fn stage_dpo_trains_on_pairs_from_an_sft_adapter() {
    let dir = tempfile::tempdir().unwrap();
    setup(dir.path(), TinyArch::Llama);
    let config = dir.path().join("train.yaml");
    let sft = "model_name_or_path: model\ndataset: train.json\nlora_rank: 4\nlora_alpha: 8\n\
               learning_rate: 1.0e-2\nnum_train_epochs: 1\nper_device_train_batch_size: 2\n\
               predict_with_generate: false\noutput_dir: sft\n";
    std::fs::write(&config, sft).unwrap();
    let out = train(&config);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let pairs: Vec<serde_json::Value> = crate::helpers::fixtures::QA
        .iter()
        .map(|(q, a)| serde_json::json!({"instruction": q, "chosen": a, "rejected": "I could not say."}))
        .collect();
    std::fs::write(
        dir.path().join("pairs.json"),
        serde_json::to_vec(&pairs).unwrap(),
    )
    .unwrap();
    std::fs::write(
        &config,
        "model_name_or_path: model\ndataset: pairs.json\nstage: dpo\npref_beta: 0.2\n\
         pref_loss: sigmoid\nadapter_name_or_path: sft/adapter\nlearning_rate: 1.0e-2\n\
         num_train_epochs: 2\nper_device_train_batch_size: 2\noutput_dir: dpo\n",
    )
    .unwrap();
    let out = train(&config);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let csv = std::fs::read_to_string(dir.path().join("dpo/results/metrics.csv")).unwrap();
    assert_eq!(
        csv.lines().count(),
        1 + 10,
        "10 pairs, batch 2, 2 epochs: {csv}"
    );
    assert!(
        dir.path()
            .join("dpo/adapter/adapter_model.safetensors")
            .exists()
    );

    for (body, needle) in [
        (
            "dataset: train.json\nstage: dpo\n",
            "without a rejected answer",
        ),
        ("dataset: pairs.json\n", "train on them with DPO"),
        (
            "dataset: pairs.json\nstage: ppo\n",
            "stage 'ppo' is not supported",
        ),
        ("dataset: train.json\npref_beta: 0.1\n", "dpo only"),
    ] {
        std::fs::write(
            &config,
            format!("model_name_or_path: model\n{body}output_dir: bad\n"),
        )
        .unwrap();
        let out = train(&config);
        assert!(!out.status.success(), "{body}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(needle), "{body}: {stderr}");
    }
}
