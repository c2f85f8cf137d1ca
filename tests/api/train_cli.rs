//! `ferrotune train --config FILE` as a user runs it: a LLaMA-Factory config with a held-out
//! split trains the tiny model and prints base and fine-tuned scores side by side.

use std::process::Command;

use ferrotune::train::tiny::TinyArch;

use crate::train_loop::setup;

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
