use serde_json::{Value, json};

use crate::helpers::{AppOptions, alpaca_jsonl, assert_error, spawn_app_with};

#[tokio::test]
async fn requests_without_a_valid_key_get_401_invalid_api_key() {
    let mut app = spawn_app_with(AppOptions {
        api_keys: vec!["sk-a".into()],
        ..Default::default()
    })
    .await;
    app.api_key = None;
    let err = assert_error(app.get("/v1/files").await, 401, None).await;
    assert_eq!(err["code"], "invalid_api_key");
    app.api_key = Some("sk-wrong".into());
    let err = assert_error(app.get("/v1/fine_tuning/jobs").await, 401, None).await;
    assert_eq!(err["code"], "invalid_api_key");
    assert_error(
        app.upload("t.jsonl", alpaca_jsonl(10), "fine-tune").await,
        401,
        None,
    )
    .await;
    // Health stays open for probes.
    assert_eq!(app.get("/health").await.status(), 200);
    app.api_key = Some("sk-a".into());
    assert_eq!(app.get("/v1/files").await.status(), 200);
}

#[tokio::test]
async fn each_key_sees_only_its_own_files_and_jobs() {
    let mut app = spawn_app_with(AppOptions {
        api_keys: vec!["sk-a".into(), "sk-b".into()],
        ..Default::default()
    })
    .await;
    let file = app.training_file(10).await;
    let job = app.create_job(&file, json!({})).await;
    let job_id = job["id"].as_str().unwrap();
    assert_ne!(job["organization_id"], "org-local");

    app.api_key = Some("sk-b".into());
    let files: Value = app.get("/v1/files").await.json().await.unwrap();
    assert_eq!(files["data"], json!([]));
    let jobs: Value = app.get("/v1/fine_tuning/jobs").await.json().await.unwrap();
    assert_eq!(jobs["data"], json!([]));
    assert_error(app.get(&format!("/v1/files/{file}")).await, 404, Some("id")).await;
    assert_error(
        app.get(&format!("/v1/files/{file}/content")).await,
        404,
        Some("id"),
    )
    .await;
    assert_error(
        app.delete(&format!("/v1/files/{file}")).await,
        404,
        Some("id"),
    )
    .await;
    assert_error(
        app.get(&format!("/v1/fine_tuning/jobs/{job_id}")).await,
        404,
        Some("id"),
    )
    .await;
    assert_error(
        app.get(&format!("/v1/fine_tuning/jobs/{job_id}/events"))
            .await,
        404,
        Some("id"),
    )
    .await;
    assert_error(
        app.post_empty(&format!("/v1/fine_tuning/jobs/{job_id}/cancel"))
            .await,
        404,
        Some("id"),
    )
    .await;
    let res = app
        .post(
            "/v1/fine_tuning/jobs",
            &json!({"model": "ferrotune-tiny", "training_file": file}),
        )
        .await;
    assert_error(res, 400, Some("training_file")).await;
    assert_error(
        app.get(&format!("/v1/files?after={file}")).await,
        400,
        Some("after"),
    )
    .await;

    app.api_key = Some("sk-a".into());
    assert_eq!(app.job(job_id).await["status"], "validating_files");
}

#[tokio::test]
async fn fine_tuned_models_are_private_to_their_key() {
    let mut app = spawn_app_with(AppOptions {
        api_keys: vec!["sk-a".into(), "sk-b".into()],
        ..Default::default()
    })
    .await;
    let (_, model) = crate::helpers::fine_tune(&app, "private").await;
    app.api_key = Some("sk-b".into());
    let chat = app
        .post(
            "/v1/chat/completions",
            &json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
    let err = assert_error(chat, 404, Some("model")).await;
    assert_eq!(err["code"], "model_not_found");
    assert_error(
        app.get(&format!("/v1/models/{model}")).await,
        404,
        Some("model"),
    )
    .await;
    assert_error(
        app.delete(&format!("/v1/models/{model}")).await,
        404,
        Some("model"),
    )
    .await;
    let list: Value = app.get("/v1/models").await.json().await.unwrap();
    assert_eq!(list["data"].as_array().unwrap().len(), 1);
}
