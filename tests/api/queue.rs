//! The queue's guarantees, exercised through the store directly.

use std::time::Duration;

use ferrotune::domain::hyperparameters::WorkerDevice;
use ferrotune::domain::job::{JobError, JobStatus};
use ferrotune::store::NewEvent;
use serde_json::json;

use crate::helpers::spawn_app;

const CPU: WorkerDevice = WorkerDevice::Cpu;

#[tokio::test]
async fn concurrent_claims_hand_a_job_to_exactly_one_worker() {
    let app = spawn_app().await;
    let file = app.training_file(10).await;
    app.create_job(&file, json!({})).await;
    let lease = Duration::from_secs(30);
    let claims = futures_util::future::join_all((0..8).map(|i| {
        let store = app.store.clone();
        async move { store.claim_job(&format!("w{i}"), CPU, lease).await.unwrap() }
    }))
    .await;
    assert_eq!(claims.iter().filter(|c| c.is_some()).count(), 1);
}

#[tokio::test]
async fn a_job_that_asks_for_a_gpu_waits_for_a_gpu_worker() {
    let app = spawn_app().await;
    let file = app.training_file(10).await;
    let gpu_job = app
        .create_job(&file, json!({"hyperparameters": {"device": "cuda"}}))
        .await;
    assert_eq!(gpu_job["hyperparameters"]["device"], "cuda");
    let lease = Duration::from_secs(30);
    let cpu = app.store.claim_job("cpu-worker", CPU, lease).await.unwrap();
    assert!(cpu.is_none(), "a CPU worker took a job that asked for cuda");
    let any_job = app.create_job(&file, json!({})).await;
    let cpu = app.store.claim_job("cpu-worker", CPU, lease).await.unwrap();
    assert_eq!(
        cpu.unwrap().job.id.as_str(),
        any_job["id"].as_str().unwrap()
    );
    let gpu = app
        .store
        .claim_job("gpu-worker", WorkerDevice::Cuda, lease)
        .await
        .unwrap();
    assert_eq!(
        gpu.unwrap().job.id.as_str(),
        gpu_job["id"].as_str().unwrap()
    );
}

#[tokio::test]
async fn an_expired_lease_is_reclaimed_and_the_stale_worker_is_fenced_off() {
    let app = spawn_app().await;
    let file = app.training_file(10).await;
    let id = app.create_job(&file, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stale = app
        .store
        .claim_job("dead", CPU, Duration::from_millis(300))
        .await
        .unwrap()
        .unwrap();
    assert!(
        app.store
            .claim_job("other", CPU, Duration::from_secs(30))
            .await
            .unwrap()
            .is_none()
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let fresh = app
        .store
        .claim_job("other", CPU, Duration::from_secs(30))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fresh.job.id.as_str(), id);
    assert_eq!(fresh.attempt, stale.attempt + 1);
    assert_eq!(fresh.job.lost_leases, 1);
    // The stale worker can no longer write.
    let event = NewEvent::info("stale write");
    let moved = app
        .store
        .advance_job(
            &stale,
            &[JobStatus::ValidatingFiles],
            JobStatus::Queued,
            &event,
        )
        .await
        .unwrap();
    assert!(!moved);
    assert!(
        app.store
            .heartbeat(&stale, Duration::from_secs(30))
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        !app.store
            .fail_job(&stale, &JobError::new("stale", "stale"))
            .await
            .unwrap()
    );
    assert_eq!(app.job(&id).await["status"], "validating_files");
    assert!(
        !app.event_messages(&id)
            .await
            .contains(&"stale write".to_owned())
    );
}

#[tokio::test]
async fn a_job_abandoned_too_often_fails_instead_of_looping() {
    let app = spawn_app().await;
    let file = app.training_file(10).await;
    let id = app.create_job(&file, json!({})).await["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..4 {
        app.store
            .claim_job("dies", CPU, Duration::from_millis(100))
            .await
            .unwrap()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    app.worker().run_once().await.unwrap();
    let job = app.job(&id).await;
    assert_eq!(job["status"], "failed");
    assert_eq!(job["error"]["code"], "worker_lost");
}
