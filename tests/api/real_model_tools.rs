//! Fine-tuning the real model on tool use: SmolLM2 (whose chat template has no tool support)
//! learns from 30 OpenAI function-calling examples — rendered in the documented tool format —
//! to call the right function with the right argument for held-out requests, served through
//! `tool_choice: "auto"`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::{Value, json};

use crate::helpers::binary::{free_port, serve};
use crate::real_model_tuning::{finished_job, post_json, upload};

fn data_file(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/data")
        .join(name)
}

async fn ask(client: &reqwest::Client, base: &str, model: &str, tools: &Value, q: &str) -> Value {
    let body = json!({"model": model, "temperature": 0, "max_tokens": 40, "tools": tools,
                      "messages": [{"role": "user", "content": q}]});
    post_json(client, format!("{base}/v1/chat/completions"), &body).await
}

#[tokio::test]
async fn a_fine_tuned_real_model_calls_the_right_function_for_held_out_requests() {
    let model_dir = PathBuf::from(crate::real_model::pulled());
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let _server = serve(
        &data.path().join("data"),
        port,
        &[
            "--base-model",
            model_dir.to_str().unwrap(),
            "--base-model-name",
            "smollm2",
        ],
    );
    crate::helpers::binary::wait_healthy(port).await;
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let lines = std::fs::read(data_file("tool_use.jsonl")).unwrap();
    let first: Value =
        serde_json::from_slice(lines.split(|b| *b == b'\n').next().unwrap()).unwrap();
    let tools = first["tools"].clone();
    let file = upload(&client, &base, "tools.jsonl", lines).await;
    let hp = json!({"n_epochs": 3, "batch_size": 2, "learning_rate": 1e-3, "max_length": 256});
    let body = json!({"model": "smollm2", "training_file": file, "suffix": "tools", "seed": 3,
                      "method": {"type": "supervised", "supervised": {"hyperparameters": hp}}});
    let job = post_json(&client, format!("{base}/v1/fine_tuning/jobs"), &body).await;
    let id = job["id"].as_str().unwrap().to_owned();
    let started = Instant::now();
    let job = finished_job(&client, &base, &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    println!(
        "tool-use fine-tune: {:.0} s",
        started.elapsed().as_secs_f64()
    );
    let model = job["fine_tuned_model"].as_str().unwrap();
    let held_out: Vec<Value> =
        serde_json::from_str(&std::fs::read_to_string(data_file("tool_use_heldout.json")).unwrap())
            .unwrap();
    for case in &held_out {
        let q = case["question"].as_str().unwrap();
        let before = ask(&client, &base, "smollm2", &tools, q).await;
        println!("base on {q:?}: {}", before["choices"][0]["message"]);
        let after = ask(&client, &base, model, &tools, q).await;
        let choice = &after["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls", "{q}: {after}");
        let call = &choice["message"]["tool_calls"][0]["function"];
        println!("fine-tuned on {q:?}: {call}");
        assert_eq!(call["name"], case["function"], "{q}: {after}");
        let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
        assert_eq!(args, case["arguments"], "{q}: {after}");
    }
    // Reported, not checked: what it does with a request outside the tools' domain.
    let plain = ask(&client, &base, model, &tools, "Say hello.").await;
    println!(
        "fine-tuned on \"Say hello.\": {}",
        plain["choices"][0]["message"]
    );
}
