//! The Batch API on a real server: a batch of chat, Responses and legacy completion requests
//! answered into output and error files, cancelling, bad files and batches refused, and a
//! batch that survives a `kill -9` of the real binary with no line lost or doubled.

use std::collections::HashSet;
use std::time::Duration;

use reqwest::multipart::{Form, Part};
use serde_json::{Value, json};

use crate::helpers::binary::{free_port, serve, wait_healthy};
use crate::helpers::wait::eventually;
use crate::helpers::{TestApp, assert_error, spawn_app};

/// A batch file line.
fn line(id: &str, url: &str, body: Value) -> String {
    json!({"custom_id": id, "method": "POST", "url": url, "body": body}).to_string()
}

fn chat_line(id: &str, model: &str, tokens: u32) -> String {
    line(
        id,
        "/v1/chat/completions",
        json!({"model": model, "max_tokens": tokens, "temperature": 0,
               "messages": [{"role": "user", "content": format!("Question {id}")}]}),
    )
}

async fn upload_batch(app: &TestApp, lines: &[String]) -> reqwest::Response {
    app.upload("batch.jsonl", lines.join("\n").into_bytes(), "batch")
        .await
}

async fn create(app: &TestApp, file: &str, endpoint: &str) -> reqwest::Response {
    app.post(
        "/v1/batches",
        &json!({"input_file_id": file, "endpoint": endpoint, "completion_window": "24h"}),
    )
    .await
}

/// Upload `lines` and start a batch calling `endpoint` over them; the batch's id.
async fn start_batch(app: &TestApp, lines: &[String], endpoint: &str) -> String {
    let file: Value = upload_batch(app, lines).await.json().await.unwrap();
    let batch: Value = create(app, file["id"].as_str().unwrap(), endpoint)
        .await
        .json()
        .await
        .unwrap();
    batch["id"].as_str().unwrap().to_owned()
}

/// `n` chat lines of `tokens` tokens each on the tiny model.
fn chat_lines(n: usize, tokens: u32) -> Vec<String> {
    (0..n)
        .map(|i| chat_line(&format!("q{i}"), "ferrotune-tiny", tokens))
        .collect()
}

async fn file_lines(app: &TestApp, id: &Value) -> Vec<Value> {
    let text = app
        .get(&format!("/v1/files/{}/content", id.as_str().unwrap()))
        .await
        .text()
        .await
        .unwrap();
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn until_status(app: &TestApp, id: &str, statuses: &[&str]) -> Value {
    eventually("the batch to end", Duration::from_secs(120), || async {
        let batch: Value = app
            .get(&format!("/v1/batches/{id}"))
            .await
            .json()
            .await
            .unwrap();
        statuses
            .contains(&batch["status"].as_str().unwrap())
            .then_some(batch)
    })
    .await
}

#[tokio::test]
async fn a_batch_answers_each_line_into_its_output_and_error_files() {
    let app = spawn_app().await;
    let mut lines = chat_lines(3, 4);
    lines.push(chat_line("nobody", "no-such-model", 4));
    lines.push(line(
        "bad-body",
        "/v1/chat/completions",
        json!({"model": "ferrotune-tiny", "messages": "not a list"}),
    ));
    let file: Value = upload_batch(&app, &lines).await.json().await.unwrap();
    assert_eq!(file["purpose"], "batch");
    let res = create(&app, file["id"].as_str().unwrap(), "/v1/chat/completions").await;
    assert_eq!(res.status(), 200);
    let batch: Value = res.json().await.unwrap();
    assert_eq!(batch["object"], "batch");
    assert_eq!(batch["request_counts"]["total"], 5);
    let id = batch["id"].as_str().unwrap();
    let done = until_status(&app, id, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(
        done["request_counts"],
        json!({"total": 5, "completed": 3, "failed": 2})
    );
    for stamp in ["in_progress_at", "finalizing_at", "completed_at"] {
        assert!(done[stamp].is_i64(), "{stamp}: {done}");
    }
    let output = file_lines(&app, &done["output_file_id"]).await;
    let ids: Vec<&str> = output
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["q0", "q1", "q2"]);
    for l in &output {
        assert_eq!(l["response"]["status_code"], 200);
        assert_eq!(l["response"]["body"]["object"], "chat.completion");
        assert_eq!(l["error"], Value::Null);
    }
    let errors = file_lines(&app, &done["error_file_id"]).await;
    let by_id = |id: &str| {
        errors
            .iter()
            .find(|l| l["custom_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(by_id("nobody")["response"]["status_code"], 404);
    assert_eq!(by_id("bad-body")["response"]["status_code"], 400);
    assert_eq!(
        by_id("bad-body")["response"]["body"]["error"]["param"],
        "messages"
    );
    let listed: Value = app.get("/v1/batches?limit=1").await.json().await.unwrap();
    assert_eq!(listed["data"][0]["id"], id);
}

#[tokio::test]
async fn responses_and_completions_lines_are_answered_by_their_endpoints() {
    let app = spawn_app().await;
    for (url, body, object) in [
        (
            "/v1/responses",
            json!({"model": "ferrotune-tiny", "input": "hi", "max_output_tokens": 3}),
            "response",
        ),
        (
            "/v1/completions",
            json!({"model": "ferrotune-tiny", "prompt": "Once", "max_tokens": 3}),
            "text_completion",
        ),
    ] {
        let id = start_batch(&app, &[line("a", url, body)], url).await;
        let done = until_status(&app, &id, &["completed"]).await;
        let output = file_lines(&app, &done["output_file_id"]).await;
        assert_eq!(
            output[0]["response"]["body"]["object"], object,
            "{output:?}"
        );
        assert_eq!(done["error_file_id"], Value::Null);
    }
}

#[tokio::test]
async fn a_cancelled_batch_keeps_what_it_answered_and_stops() {
    let app = spawn_app().await;
    let id = start_batch(&app, &chat_lines(40, 64), "/v1/chat/completions").await;
    let id = id.as_str();
    eventually("a first answer", Duration::from_secs(60), || async {
        let b: Value = app
            .get(&format!("/v1/batches/{id}"))
            .await
            .json()
            .await
            .unwrap();
        (b["request_counts"]["completed"].as_i64() > Some(0)).then_some(())
    })
    .await;
    let cancelling: Value = app
        .post_empty(&format!("/v1/batches/{id}/cancel"))
        .await
        .json()
        .await
        .unwrap();
    assert!(
        ["cancelling", "cancelled"].contains(&cancelling["status"].as_str().unwrap()),
        "{cancelling}"
    );
    let done = until_status(&app, id, &["cancelled"]).await;
    let answered = done["request_counts"]["completed"].as_i64().unwrap();
    assert!(answered > 0 && answered < 40, "{done}");
    let output = file_lines(&app, &done["output_file_id"]).await;
    assert_eq!(output.len() as i64, answered);
    // Cancelling a finished batch changes nothing.
    let again: Value = app
        .post_empty(&format!("/v1/batches/{id}/cancel"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(again["status"], "cancelled");
}

#[tokio::test]
async fn a_batch_past_its_window_expires_with_the_rest_in_its_error_file() {
    let app = spawn_app().await;
    let id = start_batch(&app, &chat_lines(40, 64), "/v1/chat/completions").await;
    let id = id.as_str();
    // The window closes now (24 h is the only window a client may ask for).
    sqlx::query("update batch set expires_at = now() where id = $1")
        .bind(id)
        .execute(app.store.pool())
        .await
        .unwrap();
    let done = until_status(&app, id, &["expired"]).await;
    assert!(done["expired_at"].is_i64(), "{done}");
    let answered = done["request_counts"]["completed"].as_i64().unwrap();
    let errors = file_lines(&app, &done["error_file_id"]).await;
    assert_eq!(errors.len() as i64, 40 - answered, "{done}");
    for l in &errors {
        assert_eq!(l["error"]["code"], "batch_expired");
        assert_eq!(l["response"], Value::Null);
    }
}

#[tokio::test]
async fn bad_batch_files_and_batches_are_refused_naming_the_problem() {
    let app = spawn_app().await;
    let ok = chat_line("a", "ferrotune-tiny", 2);
    for (lines, needle) in [
        (
            vec![ok.clone(), ok.clone()],
            "line 2: custom_id 'a' is used twice",
        ),
        (
            vec![line("b", "/v1/embeddings", json!({"model": "m"}))],
            "line 1: url '/v1/embeddings'",
        ),
        (
            vec![ok.clone(), "{".to_owned()],
            "line 2: the line is not JSON",
        ),
    ] {
        let err = assert_error(upload_batch(&app, &lines).await, 400, Some("file")).await;
        assert!(err["message"].as_str().unwrap().contains(needle), "{err}");
        assert_eq!(err["code"], "invalid_file_format");
    }
    let file: Value = upload_batch(&app, std::slice::from_ref(&ok))
        .await
        .json()
        .await
        .unwrap();
    let file = file["id"].as_str().unwrap();
    let res = create(&app, file, "/v1/responses").await;
    let err = assert_error(res, 400, Some("endpoint")).await;
    assert!(err["message"].as_str().unwrap().contains("line 1"), "{err}");
    assert_error(
        create(&app, file, "/v1/embeddings").await,
        400,
        Some("endpoint"),
    )
    .await;
    let res = app
        .post(
            "/v1/batches",
            &json!({"input_file_id": file, "endpoint": "/v1/chat/completions",
                    "completion_window": "1h"}),
        )
        .await;
    assert_error(res, 400, Some("completion_window")).await;
    let training = app.training_file(4).await;
    let res = create(&app, &training, "/v1/chat/completions").await;
    assert_error(res, 400, Some("input_file_id")).await;
    let res = create(&app, "file-nothing", "/v1/chat/completions").await;
    assert_error(res, 404, Some("input_file_id")).await;
    assert_error(app.get("/v1/batches/batch_nothing").await, 404, Some("id")).await;
    let none: i64 = sqlx::query_scalar("select count(*) from batch")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    assert_eq!(none, 0);
}

#[tokio::test]
async fn a_batch_survives_a_kill_of_the_server_with_no_line_lost_or_doubled() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let port = free_port();
    let args = [
        "--base-model",
        "ferrotune-tiny",
        "--poll-interval-ms",
        "100",
    ];
    let mut server = serve(dir.path(), port, &args);
    wait_healthy(port).await;
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let lines = chat_lines(40, 200);
    let form = Form::new().text("purpose", "batch").part(
        "file",
        Part::bytes(lines.join("\n").into_bytes()).file_name("b.jsonl"),
    );
    let file: Value = client
        .post(format!("{url}/v1/files"))
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let batch: Value = client
        .post(format!("{url}/v1/batches"))
        .json(
            &json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                      "completion_window": "24h"}),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = batch["id"].as_str().unwrap().to_owned();
    let get = |client: reqwest::Client, url: String, id: String| async move {
        let res = client
            .get(format!("{url}/v1/batches/{id}"))
            .send()
            .await
            .ok()?;
        res.json::<Value>().await.ok()
    };
    let before = eventually("some lines answered", Duration::from_secs(120), || {
        let (c, u, i) = (client.clone(), url.clone(), id.clone());
        async move {
            let b = get(c, u, i).await?;
            (b["request_counts"]["completed"].as_i64()? >= 3).then_some(b)
        }
    })
    .await;
    server.kill_hard();
    let killed_at = chrono::Utc::now().timestamp();
    assert_eq!(before["status"], "in_progress", "{before}");
    let port = free_port();
    let _restarted = serve(dir.path(), port, &args);
    wait_healthy(port).await;
    let url = format!("http://127.0.0.1:{port}");
    let done = eventually("the batch to complete", Duration::from_secs(180), || {
        let (c, u, i) = (client.clone(), url.clone(), id.clone());
        async move {
            let b = get(c, u, i).await?;
            (b["status"] == "completed").then_some(b)
        }
    })
    .await;
    assert_eq!(
        done["request_counts"],
        json!({"total": 40, "completed": 40, "failed": 0})
    );
    // The restarted server finished it (the kill left it mid-way).
    assert!(
        done["completed_at"].as_i64().unwrap() >= killed_at,
        "{done}"
    );
    let text = client
        .get(format!(
            "{url}/v1/files/{}/content",
            done["output_file_id"].as_str().unwrap()
        ))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let ids: Vec<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["custom_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 40, "{ids:?}");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 40, "{ids:?}");
}
