//! The worker loop over a real database. The trainer here is a test double that only waits for
//! its stop signal: it checks that cancel/pause reach a running job, not training itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ferrotune::domain::job::JobError;
use ferrotune::worker::trainer::{
    Progress, StopSignal, Trainer, TrainingFailure, TrainingOutcome, TrainingRequest,
};
use serde_json::{Value, json};

use crate::helpers::{spawn_app, wait_for_status};

/// Blocks until stopped (or 60 s), like a long training run.
struct WaitsForStop;

impl Trainer for WaitsForStop {
    fn train(
        &self,
        _: TrainingRequest,
        _: &Progress,
        stop: &StopSignal,
    ) -> Result<TrainingOutcome, TrainingFailure> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if stop.is_cancelled() {
                return Err(TrainingFailure::Stopped { step: 0 });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(TrainingFailure::Failed(JobError::new(
            "test_timeout",
            "never stopped",
        )))
    }
}

#[tokio::test]
async fn a_job_whose_trainer_is_unavailable_fails_honestly() {
    let app = spawn_app().await;
    let file = app.training_file(12).await;
    let job = app.create_job(&file, json!({})).await;
    let id = job["id"].as_str().unwrap();
    let worker = app.worker_with(Arc::new(ferrotune::worker::Unavailable), 30);
    assert!(worker.run_once().await.unwrap());
    let job = app.job(id).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["code"], "trainer_unavailable");
    assert_eq!(job["fine_tuned_model"], Value::Null);
    assert!(job["finished_at"].is_i64());
    let messages = app.event_messages(id).await;
    assert_eq!(messages[1], format!("Validating training file: {file}"));
    assert_eq!(messages[2], "Files validated, moving job to queued state");
    assert_eq!(messages[3], "Fine-tuning job started");
    assert!(messages[4].contains("not available"), "{messages:?}");
    assert!(
        !app.worker().run_once().await.unwrap(),
        "a failed job must not be claimed again"
    );
}

#[tokio::test]
async fn a_training_file_with_too_few_examples_fails_validation() {
    let app = spawn_app().await;
    let file = app.training_file(3).await;
    let job = app.create_job(&file, json!({})).await;
    app.worker().run_once().await.unwrap();
    let job = app.job(job["id"].as_str().unwrap()).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(
        job["error"],
        json!({"code": "invalid_n_examples", "param": "training_file",
               "message": "Training file has 3 example(s), but must have at least 10 examples"})
    );
}

#[tokio::test]
async fn examples_without_an_assistant_turn_fail_validation() {
    let app = spawn_app().await;
    let line = json!({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]});
    let body = format!("{line}\n").repeat(10).into_bytes();
    let res = app.upload("t.jsonl", body, "fine-tune").await;
    let file: Value = res.json().await.unwrap();
    let job = app
        .create_job(file["id"].as_str().unwrap(), json!({}))
        .await;
    app.worker().run_once().await.unwrap();
    let job = app.job(job["id"].as_str().unwrap()).await;
    assert_eq!(job["error"]["code"], "invalid_file_format");
    assert!(
        job["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no assistant message")
    );
}

#[tokio::test]
async fn a_deleted_training_file_fails_the_job_clearly() {
    let app = spawn_app().await;
    let file = app.training_file(10).await;
    let job = app.create_job(&file, json!({})).await;
    app.delete(&format!("/v1/files/{file}")).await;
    app.worker().run_once().await.unwrap();
    let job = app.job(job["id"].as_str().unwrap()).await;
    assert_eq!(job["error"]["code"], "invalid_file");
    assert_eq!(job["error"]["param"], "training_file");
}

#[tokio::test]
async fn cancel_reaches_a_running_job_within_seconds() {
    let app = spawn_app().await;
    let file = app.training_file(10).await;
    let id = app.create_job(&file, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let worker = app.worker_with(Arc::new(WaitsForStop), 30);
    let running = tokio::spawn(async move { worker.run_once().await.unwrap() });
    wait_for_status(&app, &id, "running").await;
    let asked = Instant::now();
    let res = app
        .post_empty(&format!("/v1/fine_tuning/jobs/{id}/cancel"))
        .await;
    assert_eq!(res.status(), 200);
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .expect("the worker stopped the trainer")
        .unwrap();
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "took {:?}",
        asked.elapsed()
    );
    let job = app.job(&id).await;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["error"], Value::Null);
}

#[tokio::test]
async fn a_paused_running_job_is_released_and_runs_again_after_resume() {
    let app = spawn_app().await;
    let file = app.training_file(10).await;
    let id = app.create_job(&file, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let worker = app.worker_with(Arc::new(WaitsForStop), 30);
    let w = worker.clone();
    let running = tokio::spawn(async move { w.run_once().await.unwrap() });
    wait_for_status(&app, &id, "running").await;
    app.post_empty(&format!("/v1/fine_tuning/jobs/{id}/pause"))
        .await;
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(app.job(&id).await["status"], "paused");
    assert!(
        !worker.run_once().await.unwrap(),
        "a paused job must not be claimed"
    );
    let resumed: Value = app
        .post_empty(&format!("/v1/fine_tuning/jobs/{id}/resume"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(resumed["status"], "queued");
    // Claimed again, straight to running (files were validated already), then cancelled.
    let w = worker.clone();
    let running = tokio::spawn(async move { w.run_once().await.unwrap() });
    wait_for_status(&app, &id, "running").await;
    app.post_empty(&format!("/v1/fine_tuning/jobs/{id}/cancel"))
        .await;
    assert!(
        tokio::time::timeout(Duration::from_secs(10), running)
            .await
            .unwrap()
            .unwrap()
    );
    let messages = app.event_messages(&id).await;
    assert_eq!(
        messages
            .iter()
            .filter(|m| m.starts_with("Validating"))
            .count(),
        1,
        "{messages:?}"
    );
    assert_eq!(
        messages
            .iter()
            .filter(|m| *m == "Fine-tuning job started")
            .count(),
        2,
        "{messages:?}"
    );
}

#[tokio::test]
async fn the_worker_loop_picks_up_jobs_and_stops_on_shutdown() {
    let app = spawn_app().await;
    let file = app.training_file(10).await;
    let id = app.create_job(&file, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(app.worker().run_until_stopped(shutdown.clone()));
    wait_for_status(&app, &id, "succeeded").await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .unwrap()
        .unwrap();
}
