use serde_json::{Value, json};

use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn cancel_pause_and_resume_follow_the_state_machine() {
    let app = spawn_app().await;
    let file = app.training_file(10).await;
    let job = app.create_job(&file, json!({})).await;
    let id = job["id"].as_str().unwrap();
    let act = |action: &'static str| {
        let path = format!("/v1/fine_tuning/jobs/{id}/{action}");
        let app = &app;
        async move { app.post_empty(&path).await }
    };
    let err = assert_error(act("resume").await, 409, None).await;
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("validating_files"),
        "{err}"
    );
    let paused: Value = act("pause").await.json().await.unwrap();
    assert_eq!(paused["status"], "paused");
    assert_error(act("pause").await, 409, None).await;
    let resumed: Value = act("resume").await.json().await.unwrap();
    assert_eq!(resumed["status"], "queued");
    let cancelled: Value = act("cancel").await.json().await.unwrap();
    assert_eq!(cancelled["status"], "cancelled");
    assert!(cancelled["finished_at"].is_i64());
    for action in ["cancel", "pause", "resume"] {
        let err = assert_error(act(action).await, 409, None).await;
        assert_eq!(err["code"], "conflict");
    }
    assert_eq!(
        app.event_messages(id).await[1..],
        [
            "Fine-tuning job paused",
            "Fine-tuning job resumed",
            "Fine-tuning job cancelled"
        ]
    );
}

#[tokio::test]
async fn events_page_newest_first_with_after() {
    let app = spawn_app().await;
    let file = app.training_file(10).await;
    let job = app.create_job(&file, json!({})).await;
    let id = job["id"].as_str().unwrap();
    for _ in 0..3 {
        app.post_empty(&format!("/v1/fine_tuning/jobs/{id}/pause"))
            .await;
        app.post_empty(&format!("/v1/fine_tuning/jobs/{id}/resume"))
            .await;
    }
    // 1 created + 6 transitions.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page: Value = app
            .get(&format!(
                "/v1/fine_tuning/jobs/{id}/events?limit=3&after={after}"
            ))
            .await
            .json()
            .await
            .unwrap();
        let data = page["data"].as_array().unwrap();
        for e in data {
            assert_eq!(e["object"], "fine_tuning.job.event");
            assert_eq!(e["type"], "message");
            assert_eq!(e["data"], Value::Null);
            seen.push(e["message"].as_str().unwrap().to_owned());
        }
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        after = data.last().unwrap()["id"].as_str().unwrap().to_owned();
    }
    assert_eq!(seen.len(), 7);
    assert_eq!(seen[0], "Fine-tuning job resumed");
    assert!(seen[6].starts_with("Created fine-tuning job"));
    assert_error(
        app.get(&format!("/v1/fine_tuning/jobs/{id}/events?limit=0"))
            .await,
        400,
        Some("limit"),
    )
    .await;
}
