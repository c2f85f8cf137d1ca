//! Fine-tuning jobs trained for real: the candle trainer on the generated tiny model, driven by
//! the worker, observed through the HTTP API.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::fixtures::QA;
use crate::helpers::wait_for_status;
use crate::helpers::{TestApp, spawn_app, upload_qa};

fn supervised(hp: Value) -> Value {
    json!({"type": "supervised", "supervised": {"hyperparameters": hp}})
}

#[tokio::test]
async fn a_job_trains_to_succeeded_with_events_checkpoints_results_and_a_model() {
    let app = spawn_app().await;
    let train = upload_qa(&app, 10).await;
    let valid = upload_qa(&app, 3).await;
    let job = app
        .create_job(&train, json!({"validation_file": valid, "suffix": "health", "method": supervised(json!(
            {"n_epochs": 4, "batch_size": 2, "learning_rate": 0.01, "logging_steps": 5, "save_steps": 5}))}))
        .await;
    let id = job["id"].as_str().unwrap();
    assert!(app.worker().run_once().await.unwrap());
    let job = app.job(id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["error"], Value::Null);
    let model = job["fine_tuned_model"].as_str().unwrap();
    assert_eq!(
        model,
        format!("ft:ferrotune-tiny:org-local:health:{}", &id[6..14])
    );
    assert!(job["trained_tokens"].as_i64().unwrap() > 0);
    assert_eq!(job["hyperparameters"]["n_epochs"], 4);
    assert_eq!(job["hyperparameters"]["learning_rate_multiplier"], 1.0);
    assert_eq!(
        job["method"]["supervised"]["hyperparameters"]["batch_size"],
        2
    );

    // Events: metrics every 5 steps with validation numbers, then success.
    let events: Value = app
        .get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=100"))
        .await
        .json()
        .await
        .unwrap();
    let events = events["data"].as_array().unwrap();
    assert_eq!(events[0]["message"], "The job has successfully completed");
    let metrics: Vec<&Value> = events.iter().filter(|e| e["type"] == "metrics").collect();
    assert_eq!(metrics.len(), 4, "steps 5, 10, 15, 20");
    let last = &metrics[0]["data"];
    assert_eq!(
        (last["step"].clone(), last["total_steps"].clone()),
        (json!(20), json!(20))
    );
    assert!(
        last["train_loss"].as_f64().unwrap() < metrics[3]["data"]["train_loss"].as_f64().unwrap()
    );
    assert!(last["valid_loss"].is_f64() && last["valid_mean_token_accuracy"].is_f64());
    assert_eq!(
        last["full_valid_loss"], last["valid_loss"],
        "the last step reports the full set"
    );
    assert!(last["full_valid_mean_token_accuracy"].is_f64());
    assert!(metrics[1]["data"].get("full_valid_loss").is_none());
    // Greedy answers to the 3 validation prompts, base and fine-tuned, scored once at the end.
    let generation = &last["generation"];
    assert_eq!(generation["samples"], 3, "{last}");
    for model in ["base", "fine_tuned"] {
        for score in ["rouge1", "rouge2", "rougeL", "bleu4"] {
            let v = generation[model][score].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&v), "{model}.{score} = {v}");
        }
    }
    assert!(metrics[1]["data"].get("generation").is_none());
    assert!(
        metrics[0]["message"]
            .as_str()
            .unwrap()
            .contains("ROUGE-L base="),
        "{}",
        metrics[0]["message"]
    );
    assert!(
        metrics[0]["message"]
            .as_str()
            .unwrap()
            .starts_with("Step 20/20: training loss=")
    );

    // Checkpoints: every 5 steps, all within the last three epochs (5 steps each).
    let ckpts: Value = app
        .get(&format!("/v1/fine_tuning/jobs/{id}/checkpoints"))
        .await
        .json()
        .await
        .unwrap();
    let steps: Vec<i64> = ckpts["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["step_number"].as_i64().unwrap())
        .collect();
    assert_eq!(steps, vec![20, 15, 10]);
    let newest = &ckpts["data"][0];
    assert_eq!(
        newest["fine_tuned_model_checkpoint"],
        format!("{model}:ckpt-step-20")
    );
    assert_eq!(newest["fine_tuning_job_id"], id);
    assert!(newest["metrics"]["train_loss"].is_f64());
    assert_eq!(ckpts["first_id"], newest["id"]);

    // Result files: the metrics CSV, the loss curve and the adapter archive.
    let mut names = Vec::new();
    for file_id in job["result_files"].as_array().unwrap() {
        let file: Value = app
            .get(&format!("/v1/files/{}", file_id.as_str().unwrap()))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(file["purpose"], "fine-tune-results");
        names.push(file["filename"].as_str().unwrap().to_owned());
        let bytes = app
            .get(&format!(
                "/v1/files/{}/content",
                file["id"].as_str().unwrap()
            ))
            .await
            .bytes()
            .await
            .unwrap();
        assert_eq!(bytes.len() as i64, file["bytes"].as_i64().unwrap());
        if file["filename"] == "eval.jsonl" {
            let text = String::from_utf8(bytes.to_vec()).unwrap();
            let lines: Vec<Value> = text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect();
            assert_eq!(lines.len(), 3);
            assert_eq!(lines[0]["prompt"], QA[0].0);
            assert_eq!(lines[0]["reference"], QA[0].1);
            for key in ["base_answer", "fine_tuned_answer"] {
                assert!(lines[0][key].is_string(), "{}", lines[0]);
            }
            assert!(lines[0]["fine_tuned"]["rougeL"].is_f64());
        }
        if file["filename"] == "eval_summary.csv" {
            let text = String::from_utf8(bytes.to_vec()).unwrap();
            assert!(text.starts_with("model,samples,rouge1,rouge2,rougeL,bleu4\nbase,3,"));
            assert!(text.contains("\nfine_tuned,3,"));
        }
        if file["filename"] == "step_metrics.csv" {
            let csv = String::from_utf8(bytes.to_vec()).unwrap();
            assert!(csv.starts_with(
                "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,\
                 train_loss_mean\n1,"
            ));
        }
    }
    names.sort();
    assert_eq!(
        names,
        [
            "adapter.tar.gz",
            "eval.jsonl",
            "eval_summary.csv",
            "loss.svg",
            "step_metrics.csv"
        ]
    );
}

async fn final_loss(app: &TestApp, id: &str) -> f64 {
    let rows = app.metrics_events(id).await;
    let last = rows.last().expect("a metrics event");
    assert_eq!(last["step"], last["total_steps"]);
    last["train_loss"].as_f64().unwrap()
}

#[tokio::test]
async fn a_job_paused_mid_training_resumes_to_the_same_final_loss() {
    let app = spawn_app().await;
    let train = upload_qa(&app, 10).await;
    let hp = json!({"n_epochs": 50, "batch_size": 1, "learning_rate": 0.005, "logging_steps": 10});
    let reference = app
        .create_job(
            &train,
            json!({"seed": 11, "method": supervised(hp.clone())}),
        )
        .await;
    let paused = app
        .create_job(&train, json!({"seed": 11, "method": supervised(hp)}))
        .await;
    let (reference, paused) = (
        reference["id"].as_str().unwrap(),
        paused["id"].as_str().unwrap().to_owned(),
    );
    assert!(app.worker().run_once().await.unwrap());
    assert_eq!(app.job(reference).await["status"], "succeeded");

    let worker = app.worker();
    let run = tokio::spawn(async move { worker.run_once().await.unwrap() });
    wait_for_status(&app, &paused, "running").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        app.post_empty(&format!("/v1/fine_tuning/jobs/{paused}/pause"))
            .await
            .status(),
        200
    );
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap()
        .unwrap();
    let messages = app.event_messages(&paused).await;
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("Saved training state at step")),
        "{messages:?}"
    );
    assert_eq!(app.job(&paused).await["status"], "paused");

    app.post_empty(&format!("/v1/fine_tuning/jobs/{paused}/resume"))
        .await;
    assert!(app.worker().run_once().await.unwrap());
    assert_eq!(app.job(&paused).await["status"], "succeeded");
    assert!(
        app.event_messages(&paused)
            .await
            .iter()
            .any(|m| m.starts_with("Resuming from step"))
    );
    assert_eq!(
        final_loss(&app, &paused).await,
        final_loss(&app, reference).await
    );
}

#[tokio::test]
async fn cancelling_a_training_job_stops_it_and_frees_its_outputs() {
    let app = spawn_app().await;
    let train = upload_qa(&app, 10).await;
    let job = app
        .create_job(
            &train,
            json!({"method": supervised(json!({"n_epochs": 50, "batch_size": 1}))}),
        )
        .await;
    let id = job["id"].as_str().unwrap().to_owned();
    let worker = app.worker();
    let run = tokio::spawn(async move { worker.run_once().await.unwrap() });
    wait_for_status(&app, &id, "running").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    app.post_empty(&format!("/v1/fine_tuning/jobs/{id}/cancel"))
        .await;
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .unwrap()
        .unwrap();
    let job = app.job(&id).await;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["fine_tuned_model"], Value::Null);
    assert!(!app.data_dir.path().join("jobs").join(&id).exists());
}

#[tokio::test]
async fn data_that_cannot_be_trained_on_fails_the_job_with_a_clear_error() {
    let app = spawn_app().await;
    let train = upload_qa(&app, 10).await;
    let job = app
        .create_job(
            &train,
            json!({"method": supervised(json!({"max_length": 16}))}),
        )
        .await;
    app.run_to_failure(&job, "invalid_training_data", "truncation to 16 tokens")
        .await;
}

#[tokio::test]
async fn a_job_whose_validation_loss_rises_stops_early_and_serves_its_best_checkpoint() {
    let app = spawn_app().await;
    let train = upload_qa(&app, 10).await;
    // The training questions with another answer: learning the training answers makes these worse.
    let contrary: Vec<Value> = QA
        .iter()
        .map(|(q, _)| json!({"instruction": q, "input": "", "output": "Nobody can say, sorry."}))
        .collect();
    let valid: Value = app
        .upload(
            "contrary.json",
            serde_json::to_vec(&contrary).unwrap(),
            "fine-tune",
        )
        .await
        .json()
        .await
        .unwrap();
    let hp = json!({"n_epochs": 20, "batch_size": 2, "learning_rate": 0.005, "logging_steps": 1,
                    "early_stopping_patience": 3, "predict_with_generate": false});
    let job = app
        .create_job(
            &train,
            json!({"seed": 7, "validation_file": valid["id"], "method": supervised(hp)}),
        )
        .await;
    let id = job["id"].as_str().unwrap();
    assert!(app.worker().run_once().await.unwrap());
    let job = app.job(id).await;
    assert_eq!(job["status"], "succeeded", "{job}");
    let shown = &job["hyperparameters"];
    assert_eq!(shown["warmup_ratio"], 0.1, "auto warm-up resolved: {shown}");
    assert_eq!(shown["early_stopping_patience"], 3);
    let messages = app.all_event_messages(id).await;
    assert!(
        messages.iter().any(|m| m.starts_with("Stopping early")),
        "{messages:?}"
    );
    let kept = messages
        .iter()
        .find(|m| m.starts_with("The fine-tuned model is the checkpoint of step"))
        .unwrap_or_else(|| panic!("{messages:?}"));
    let metrics = app.metrics_events(id).await;
    let last = metrics.last().unwrap();
    assert!(last["step"].as_u64().unwrap() < 100, "{last}");
    let best = metrics
        .iter()
        .filter_map(|m| Some((m["step"].as_u64()?, m["valid_loss"].as_f64()?)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    assert!(
        kept.contains(&format!("step {} ", best.0)),
        "{kept} vs {best:?}"
    );
    assert_eq!(last["step"].as_u64().unwrap(), best.0 + 3);
    // The model it names answers.
    let model = job["fine_tuned_model"].as_str().unwrap();
    let answer = crate::helpers::ask(&app, model, QA[0].0).await;
    assert_eq!(answer["model"], model);
}
