//! Preference tuning through the API on the tiny model: a DPO job on OpenAI-format pairs trains
//! to `succeeded` with TRL's reward metrics and is served; IPO and SimPO run; files of the wrong
//! kind fail the job clearly; malformed pairs are rejected at upload with their line.

use serde_json::{Value, json};

use crate::helpers::fixtures::QA;
use crate::helpers::{TestApp, assert_error, spawn_app};

/// Rambling answers the model should learn to prefer less.
const RAMBLE: &str =
    "Well, that is a big question and there are many things one could say about it";

fn openai_pairs(n: usize) -> Vec<u8> {
    QA.iter()
        .cycle()
        .take(n)
        .map(|(q, a)| {
            json!({"input": {"messages": [{"role": "user", "content": q}]},
                   "preferred_output": [{"role": "assistant", "content": a}],
                   "non_preferred_output": [{"role": "assistant", "content": RAMBLE}]})
            .to_string()
                + "\n"
        })
        .collect::<String>()
        .into_bytes()
}

async fn upload(app: &TestApp, name: &str, bytes: Vec<u8>) -> Value {
    let res = app.upload(name, bytes, "fine-tune").await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

fn dpo(hp: Value) -> Value {
    json!({"method": {"type": "dpo", "dpo": {"hyperparameters": hp}}})
}

#[tokio::test]
async fn a_dpo_job_trains_reports_rewards_and_is_served() {
    let app = spawn_app().await;
    let file = upload(&app, "pairs.jsonl", openai_pairs(12)).await;
    assert_eq!(file["dataset_format"], "preference");
    assert_eq!(file["example_count"], 12);
    let valid = upload(&app, "valid.jsonl", openai_pairs(4)).await;
    let hp = json!({"beta": 0.5, "n_epochs": 4, "batch_size": 2, "learning_rate": 0.01,
                    "lora_dropout": 0.0, "logging_steps": 1});
    let mut body = dpo(hp);
    body["validation_file"] = valid["id"].clone();
    let job = app.create_job(file["id"].as_str().unwrap(), body).await;
    let id = job["id"].as_str().unwrap();
    assert_eq!(job["method"]["type"], "dpo");
    assert_eq!(job["method"]["dpo"]["hyperparameters"]["beta"], 0.5);
    assert!(app.worker().run_once().await.unwrap());
    let job = app.job(id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["hyperparameters"]["pref_loss"], "sigmoid");

    let rows = app.metrics_events(id).await;
    assert_eq!(
        rows.len(),
        24,
        "12 pairs, batch 2, 4 epochs, every step logged"
    );
    for key in [
        "rewards/chosen",
        "rewards/rejected",
        "rewards/accuracies",
        "rewards/margins",
        "eval_rewards/chosen",
        "eval_rewards/accuracies",
        "eval_rewards/margins",
    ] {
        assert!(
            rows.iter().all(|r| r[key].is_number()),
            "{key} in {}",
            rows[0]
        );
    }
    let first = &rows[0];
    // Step 1 starts at the reference: rewards 0, loss ln 2.
    assert!(
        first["rewards/margins"].as_f64().unwrap().abs() < 1e-3,
        "{first}"
    );
    assert!((first["train_loss"].as_f64().unwrap() - std::f64::consts::LN_2).abs() < 1e-3);
    let last = rows.last().unwrap();
    assert!(last["rewards/margins"].as_f64().unwrap() > 1.0, "{last}");
    assert_eq!(last["rewards/accuracies"], 1.0);
    assert_eq!(last["eval_rewards/accuracies"], 1.0);
    assert!(last["valid_loss"].as_f64().unwrap() < 0.3, "{last}");

    // The dashboard draws the reward curves.
    for metric in ["reward_margins", "reward_accuracy"] {
        let res = app.get(&format!("/ui/charts/{metric}?jobs={id}")).await;
        assert_eq!(res.status(), 200);
        assert_eq!(
            res.headers()["x-chart-points"],
            "48",
            "{metric}: 24 train + 24 validation"
        );
    }

    // The preferred answer is served.
    let model = job["fine_tuned_model"].as_str().unwrap();
    let res = app
        .post(
            "/v1/chat/completions",
            &json!({"model": model, "max_tokens": 12,
                    "messages": [{"role": "user", "content": QA[0].0}]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let answer: Value = res.json().await.unwrap();
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.starts_with("Well, that"), "{text}");
}

#[tokio::test]
async fn ipo_and_simpo_run_and_llama_factory_pairs_are_accepted() {
    let app = spawn_app().await;
    let alpaca: Vec<Value> = QA
        .iter()
        .map(|(q, a)| json!({"instruction": q, "input": "", "chosen": a, "rejected": RAMBLE}))
        .collect();
    let file = upload(&app, "alpaca.json", serde_json::to_vec(&alpaca).unwrap()).await;
    assert_eq!(file["dataset_format"], "alpaca_preference");
    let sharegpt: String = QA
        .iter()
        .map(|(q, a)| {
            json!({"conversations": [{"from": "human", "value": q}],
                   "chosen": {"from": "gpt", "value": a}, "rejected": {"from": "gpt", "value": RAMBLE}})
            .to_string()
                + "\n"
        })
        .collect();
    let sg = upload(&app, "sharegpt.jsonl", sharegpt.into_bytes()).await;
    assert_eq!(sg["dataset_format"], "sharegpt_preference");
    for (file, pref_loss) in [(&file, "ipo"), (&sg, "simpo")] {
        let hp = json!({"pref_loss": pref_loss, "pref_ftx": 0.1, "n_epochs": 1, "batch_size": 2,
                        "learning_rate": 0.01, "logging_steps": 1});
        let job = app.create_job(file["id"].as_str().unwrap(), dpo(hp)).await;
        let id = job["id"].as_str().unwrap();
        assert!(app.worker().run_once().await.unwrap());
        let job = app.job(id).await;
        assert_eq!(job["status"], "succeeded", "{pref_loss}: {job}");
        let rows = app.metrics_events(id).await;
        assert_eq!(rows.len(), 5, "{pref_loss}");
        assert!(
            rows.iter()
                .all(|r| r["train_loss"].as_f64().unwrap().is_finite())
        );
    }
    // A held-out split takes whole pairs: 2 of 10 for validation, 8 (4 steps) to train.
    let hp = json!({"validation_split": 0.2, "n_epochs": 1, "batch_size": 2, "logging_steps": 1});
    let job = app.create_job(file["id"].as_str().unwrap(), dpo(hp)).await;
    let id = job["id"].as_str().unwrap();
    assert!(app.worker().run_once().await.unwrap());
    assert_eq!(app.job(id).await["status"], "succeeded");
    let rows = app.metrics_events(id).await;
    assert_eq!(rows.len(), 4);
    assert!(rows.iter().all(|r| r["eval_rewards/margins"].is_number()));
}

#[tokio::test]
async fn the_wrong_kind_of_file_fails_the_job_and_bad_pairs_fail_the_upload() {
    let app = spawn_app().await;
    let pairs = upload(&app, "pairs.jsonl", openai_pairs(10)).await;
    let sft = crate::helpers::upload_qa(&app, 10).await;

    let job = app
        .create_job(pairs["id"].as_str().unwrap(), json!({}))
        .await;
    app.run_to_failure(&job, "invalid_file_format", "method type dpo")
        .await;

    let job = app.create_job(&sft, dpo(json!({}))).await;
    app.run_to_failure(&job, "invalid_file_format", "preference pairs")
        .await;

    let bad = b"{\"instruction\": \"Q\", \"chosen\": \"a\", \"rejected\": \"a\"}\n".to_vec();
    let err = assert_error(
        app.upload("bad.jsonl", bad, "fine-tune").await,
        400,
        Some("file"),
    )
    .await;
    assert!(err["message"].as_str().unwrap().contains("line 1"), "{err}");
    assert!(
        err["message"].as_str().unwrap().contains("identical"),
        "{err}"
    );
    let res = app
        .post(
            "/v1/fine_tuning/jobs",
            &json!({"model": "ferrotune-tiny", "training_file": pairs["id"],
                    "method": {"type": "dpo", "dpo": {"hyperparameters": {"pref_loss": "orpo"}}}}),
        )
        .await;
    assert_error(res, 400, Some("method.dpo.hyperparameters.pref_loss")).await;
}

#[tokio::test]
async fn a_job_continues_from_a_fine_tuned_model_sft_then_dpo() {
    let app = spawn_app().await;
    let sft_file = crate::helpers::upload_qa(&app, 10).await;
    let hp = json!({"n_epochs": 2, "batch_size": 2, "learning_rate": 0.01, "lora_rank": 4,
                    "lora_alpha": 16});
    let sft = app
        .create_job(&sft_file, json!({"suffix": "sft", "method": {"type": "supervised", "supervised": {"hyperparameters": hp}}}))
        .await;
    assert!(app.worker().run_once().await.unwrap());
    let sft = app.job(sft["id"].as_str().unwrap()).await;
    let from = sft["fine_tuned_model"].as_str().unwrap().to_owned();

    let pairs = upload(&app, "pairs.jsonl", openai_pairs(10)).await;
    let res = app
        .post(
            "/v1/fine_tuning/jobs",
            &json!({"model": from, "training_file": pairs["id"], "suffix": "dpo",
                    "method": {"type": "dpo", "dpo": {"hyperparameters":
                        {"n_epochs": 1, "batch_size": 2, "learning_rate": 0.01, "logging_steps": 1}}}}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let job: Value = res.json().await.unwrap();
    assert_eq!(job["model"], "ferrotune-tiny");
    assert_eq!(job["hyperparameters"]["init_model"], from.as_str());
    let id = job["id"].as_str().unwrap();
    assert!(app.worker().run_once().await.unwrap());
    let job = app.job(id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let messages = app.all_event_messages(id).await;
    assert!(
        messages
            .iter()
            .any(|m| m.contains("Continuing from an adapter of rank 4 (alpha 16)")),
        "{messages:?}"
    );
    // The policy starts at the SFT adapter, the reference is the base: rewards are not zero at
    // the first step, as they are for a fresh adapter.
    let first = &app.metrics_events(id).await[0];
    assert!(
        first["rewards/chosen"].as_f64().unwrap().abs() > 1e-3,
        "{first}"
    );

    // Plain continued SFT from the same model works the same way.
    let more = app
        .post(
            "/v1/fine_tuning/jobs",
            &json!({"model": from, "training_file": sft_file,
                    "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 1}}}}),
        )
        .await;
    assert_eq!(more.status(), 200);
    let more: Value = more.json().await.unwrap();
    assert!(app.worker().run_once().await.unwrap());
    let more = app.job(more["id"].as_str().unwrap()).await;
    assert_eq!(more["status"], "succeeded", "{more}");
    // The job shows the adapter's shape, which is what trains.
    assert_eq!(more["hyperparameters"]["lora_rank"], 4);
    assert_eq!(more["hyperparameters"]["lora_alpha"], 16.0);

    // Only the caller's own fine-tuned models can be continued.
    for model in [
        "ft:ferrotune-tiny:org-local:nope:12345678",
        "ft:not-a-model",
    ] {
        let res = app
            .post(
                "/v1/fine_tuning/jobs",
                &json!({"model": model, "training_file": pairs["id"]}),
            )
            .await;
        assert_error(res, 400, Some("model")).await;
    }
}
