//! The real model end to end through `ferrotune serve`: a 20-step fine-tune of SmolLM2 on 12
//! health examples — on the GGUF's stored Q4_1 blocks, QLoRA without requantizing — lowers the
//! validation loss and scores base vs fine-tuned answers, the result is served with the greedy
//! answers the trainer predicts for three prompts, and its exports (a Hugging Face directory, GGUF q8_0 and q4_k) import back to the
//! fine-tuned model's logits within each format's precision.

use std::path::{Path, PathBuf};
use std::time::Duration;

use candle_core::DType;
use ferrotune::model_dir::quant::Storage;
use ferrotune::model_dir::template::ChatTemplate;
use ferrotune::train::generate::Prompter;
use serde_json::{Value, json};

use crate::helpers::binary::{free_port, serve, terminate, wait_healthy};
use crate::helpers::fixtures::model_logits;
use crate::helpers::fixtures::rel_err;
use crate::helpers::fixtures::{find_adapter, trained_model, user};
use crate::helpers::wait::eventually;
use crate::real_model::greedy_chat;

fn examples(file: &str, n: usize) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/data")
        .join(file);
    let all: Vec<Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::to_vec(&all[..n]).unwrap()
}

pub async fn upload(client: &reqwest::Client, base: &str, name: &str, bytes: Vec<u8>) -> String {
    let form = reqwest::multipart::Form::new()
        .text("purpose", "fine-tune")
        .part(
            "file",
            reqwest::multipart::Part::bytes(bytes).file_name(name.to_owned()),
        );
    let file: Value = client
        .post(format!("{base}/v1/files"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    file["id"].as_str().unwrap().to_owned()
}

/// POST `body` as JSON and read the JSON answer.
pub async fn post_json(client: &reqwest::Client, url: String, body: &Value) -> Value {
    client
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// GET `url` and read the JSON answer.
pub async fn get_json(client: &reqwest::Client, url: String) -> Value {
    client.get(url).send().await.unwrap().json().await.unwrap()
}

/// Poll job `id` until it ends (20 minutes at most) and return it.
pub async fn finished_job(client: &reqwest::Client, base: &str, id: &str) -> Value {
    let what = format!("job {id} to end");
    eventually(&what, Duration::from_secs(1200), || async {
        let job = get_json(client, format!("{base}/v1/fine_tuning/jobs/{id}")).await;
        let status = job["status"].as_str().unwrap();
        ["succeeded", "failed", "cancelled"]
            .contains(&status)
            .then_some(job)
    })
    .await
}

#[tokio::test]
async fn a_short_fine_tune_of_the_real_model_lowers_validation_loss_serves_and_exports() {
    let model_dir = PathBuf::from(crate::real_model::pulled());
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = serve(
        &data.path().join("data"),
        port,
        &[
            "--base-model",
            model_dir.to_str().unwrap(),
            "--base-model-name",
            "smollm2",
        ],
    );
    wait_healthy(port).await;
    let base = format!("http://127.0.0.1:{port}");
    // No pooled connections: the server closes idle ones after 5 s, and the logits computed
    // between requests take longer than that.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let train = upload(&client, &base, "train.json", examples("health_qa.json", 12)).await;
    let valid = upload(
        &client,
        &base,
        "valid.json",
        examples("health_qa_heldout.json", 4),
    )
    .await;
    // 12 examples in batches of 3: 4 steps an epoch, 5 epochs.
    let hp = json!({"n_epochs": 5, "batch_size": 3, "learning_rate": 5e-4, "logging_steps": 1,
                    "max_length": 256, "eval_max_new_tokens": 24});
    let job = post_json(
        &client,
        format!("{base}/v1/fine_tuning/jobs"),
        &json!({"model": "smollm2", "training_file": train, "validation_file": valid,
                      "suffix": "health", "seed": 7,
                      "method": {"type": "supervised", "supervised": {"hyperparameters": hp}}}),
    )
    .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let job = finished_job(&client, &base, &id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let events = get_json(
        &client,
        format!("{base}/v1/fine_tuning/jobs/{id}/events?limit=100"),
    )
    .await;
    // SmolLM2's GGUF stores its projections in Q4_1: the job trains on those blocks.
    let stored = events["data"].as_array().unwrap().iter().any(|e| {
        e["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("QLoRA: training on the GGUF's stored blocks"))
    });
    assert!(stored, "{events}");
    let metrics: Vec<&Value> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "metrics")
        .map(|e| &e["data"])
        .collect();
    assert_eq!(metrics.len(), 20, "a metrics event per step");
    let (first, last) = (metrics[19], metrics[0]);
    let (before, after) = (
        first["valid_loss"].as_f64().unwrap(),
        last["full_valid_loss"].as_f64().unwrap(),
    );
    println!("validation loss after step 1: {before:.4}, after step 20: {after:.4}");
    assert!(after < before, "validation loss {before} -> {after}");
    let g = &last["generation"];
    assert_eq!(g["samples"], 4, "{last}");
    println!(
        "ROUGE-L on 4 held-out questions: base {} fine-tuned {}",
        g["base"]["rougeL"], g["fine_tuned"]["rougeL"]
    );

    // Served by name.
    let model = job["fine_tuned_model"].as_str().unwrap().to_owned();
    let chat = greedy_chat(
        &client,
        &base,
        &model,
        "What should I do for a mild headache?",
        24,
    )
    .await;
    let answer = chat["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or_default();
    println!("fine-tuned answer: {answer:?}");
    assert!(!answer.trim().is_empty(), "{chat}");

    // Served over the weights it trained on: mistral.rs's greedy answers are the trainer's.
    let adapter = find_adapter(&data.path().join("data")).expect("the job's adapter");
    let tuned = trained_model(&model_dir, &adapter, Storage::StoredBlocks);
    let tok = ferrotune::train::data::load_tokenizer(&model_dir).unwrap();
    let template = ChatTemplate::from_model_dir(&model_dir).unwrap();
    let prompter = Prompter::new(&tok, &template).with_generation_config(&model_dir);
    for question in [
        "What should I do for a mild headache?",
        "How much water should I drink a day?",
        "Is it safe to exercise with a cold?",
    ] {
        let ours = prompter
            .answer(&tuned, &[user(question)], None, 256, 24)
            .unwrap();
        let chat = greedy_chat(&client, &base, &model, question, 24).await;
        assert_eq!(
            chat["choices"][0]["message"]["content"],
            ours.as_str(),
            "{question}"
        );
    }

    // Exports import back to the fine-tuned model.
    let ids: Vec<u32> = crate::real_model::reference()["prompt_ids"][1]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap() as u32)
        .collect();
    let want = model_logits(&model_dir, Some(&adapter), &ids);
    assert!(
        rel_err(&model_logits(&model_dir, None, &ids), &want) > 1e-3,
        "the adapter changes the model"
    );
    for (query, tolerance) in [
        ("format=hf&quant=f32", 1e-5),
        // Largest logit error relative to the largest logit: q8_0 measured 3.8e-2 and q4_k
        // 0.27 here (the source GGUF is already 4-bit, so q4_k quantizes twice).
        ("quant=q8_0", 0.08),
        ("quant=q4_k", 0.5),
    ] {
        let res = client
            .get(format!("{base}/v1/models/{model}/export?{query}"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{query}");
        let bytes = res.bytes().await.unwrap();
        let out = data.path().join(query.replace(['=', '&'], "-"));
        if query.starts_with("format=hf") {
            let gz = flate2::read::GzDecoder::new(bytes.as_ref());
            tar::Archive::new(gz).unpack(&out).unwrap();
            let err = rel_err(&model_logits(&out.join("model"), None, &ids), &want);
            println!("{query}: relative error {err:.2e}");
            assert!(err < tolerance, "{query}: {err}");
        } else {
            let file = out.with_extension("gguf");
            std::fs::write(&file, &bytes).unwrap();
            ferrotune::model_dir::gguf::import(&file, &out, DType::F32).unwrap();
            let err = rel_err(&model_logits(&out, None, &ids), &want);
            println!("{query}: {} bytes, relative error {err:.2e}", bytes.len());
            assert!(err < tolerance, "{query}: {err}");
        }
    }
    terminate(server);
}
