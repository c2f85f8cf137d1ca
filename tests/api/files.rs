use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{AppOptions, alpaca_jsonl, assert_error, spawn_app, spawn_app_with};

#[tokio::test]
async fn upload_stores_the_file_and_reports_format_and_count() {
    let app = spawn_app().await;
    let res = app
        .upload("train.jsonl", alpaca_jsonl(12), "fine-tune")
        .await;
    assert_eq!(res.status(), 200);
    let file: Value = res.json().await.unwrap();
    assert!(file["id"].as_str().unwrap().starts_with("file-"));
    assert_eq!(file["object"], "file");
    assert_eq!(file["filename"], "train.jsonl");
    assert_eq!(file["purpose"], "fine-tune");
    assert_eq!(file["status"], "processed");
    assert_eq!(file["bytes"], alpaca_jsonl(12).len());
    assert_eq!(file["dataset_format"], "alpaca");
    assert_eq!(file["example_count"], 12);
    assert_eq!(
        app.stored_blobs(),
        vec![file["id"].as_str().unwrap().to_owned()]
    );
}

#[tokio::test]
async fn upload_accepts_every_supported_dataset_format() {
    let app = spawn_app().await;
    let chat =
        json!({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a", "weight": 1}]})
        .to_string();
    let completion = json!({"prompt": "p", "completion": "c"}).to_string();
    let sharegpt =
        json!({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]})
            .to_string();
    let array = json!([{"instruction": "i", "input": "x", "output": "o"},
        {"instruction": "j", "input": "", "output": "p", "history": [["a", "b"]]}]);
    let cases = [
        (format!("{chat}\n{chat}\n"), "chat", 2),
        (format!("{completion}\n"), "completion", 1),
        (
            format!("{sharegpt}\n{sharegpt}\n{sharegpt}\n"),
            "sharegpt",
            3,
        ),
        (serde_json::to_string_pretty(&array).unwrap(), "alpaca", 2),
    ];
    for (body, format, count) in cases {
        let res = app
            .upload("data.jsonl", body.into_bytes(), "fine-tune")
            .await;
        assert_eq!(res.status(), 200, "{format}");
        let file: Value = res.json().await.unwrap();
        assert_eq!(file["dataset_format"], format);
        assert_eq!(file["example_count"], count);
    }
}

#[tokio::test]
async fn upload_returns_400_naming_the_line_when_a_line_is_not_json() {
    let app = spawn_app().await;
    let mut body = alpaca_jsonl(3);
    body.extend_from_slice(b"{not json}\n");
    let err = assert_error(
        app.upload("t.jsonl", body, "fine-tune").await,
        400,
        Some("file"),
    )
    .await;
    assert!(err["message"].as_str().unwrap().contains("line 4"), "{err}");
    assert_eq!(err["code"], "invalid_file_format");
    assert!(
        app.stored_blobs().is_empty(),
        "a rejected upload left {:?}",
        app.stored_blobs()
    );
    let list: Value = app.get("/v1/files").await.json().await.unwrap();
    assert_eq!(list["data"], json!([]));
}

#[tokio::test]
async fn tool_use_lines_are_accepted_and_a_call_to_an_unoffered_function_names_its_line() {
    let app = spawn_app().await;
    let good = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/data/tool_use.jsonl"
    ))
    .unwrap();
    let res = app.upload("tools.jsonl", good.clone(), "fine-tune").await;
    assert_eq!(res.status(), 200);
    let mut bad = good[..good.iter().position(|b| *b == b'\n').unwrap() + 1].to_vec();
    bad.extend_from_slice(
        br#"{"messages": [{"role": "user", "content": "Stock price?"}, {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {"name": "get_stock", "arguments": "{}"}}]}], "tools": [{"type": "function", "function": {"name": "get_weather"}}]}"#,
    );
    bad.push(b'\n');
    let err = assert_error(
        app.upload("bad.jsonl", bad, "fine-tune").await,
        400,
        Some("file"),
    )
    .await;
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("line 2") && message.contains("get_stock"),
        "{err}"
    );
}

#[tokio::test]
async fn upload_returns_400_for_bad_utf8_non_objects_and_unknown_formats() {
    let app = spawn_app().await;
    let cases: [(&[u8], &str); 5] = [
        (b"{\"prompt\":\"a\",\"completion\":\"b\"}\n\xff\xfe\n", "line 2"),
        (b"[1, 2]\n", "line 1"),
        (b"\"just a string\"\n", "line 1"),
        (b"{\"text\": \"hello\"}\n", "unrecognised example format"),
        (b"{\"prompt\":\"a\",\"completion\":\"b\"}\n{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}\n", "one format per file"),
    ];
    for (body, needle) in cases {
        let err = assert_error(
            app.upload("t.jsonl", body.to_vec(), "fine-tune").await,
            400,
            Some("file"),
        )
        .await;
        assert!(
            err["message"].as_str().unwrap().contains(needle),
            "{needle}: {err}"
        );
    }
    assert!(app.stored_blobs().is_empty());
}

#[tokio::test]
async fn upload_returns_400_when_purpose_or_file_is_missing_or_wrong() {
    let app = spawn_app().await;
    assert_error(
        app.upload("t.jsonl", alpaca_jsonl(1), "fine-tune-results")
            .await,
        400,
        Some("purpose"),
    )
    .await;
    assert_error(
        app.upload("t.jsonl", alpaca_jsonl(1), "training").await,
        400,
        Some("purpose"),
    )
    .await;
    let no_file = reqwest::multipart::Form::new().text("purpose", "fine-tune");
    let res = app
        .client
        .post(format!("{}/v1/files", app.address))
        .multipart(no_file)
        .send()
        .await
        .unwrap();
    assert_error(res, 400, Some("file")).await;
    let no_purpose = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(alpaca_jsonl(1)).file_name("t.jsonl"),
    );
    let res = app
        .client
        .post(format!("{}/v1/files", app.address))
        .multipart(no_purpose)
        .send()
        .await
        .unwrap();
    assert_error(res, 400, Some("purpose")).await;
    let res = app
        .client
        .post(format!("{}/v1/files", app.address))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_error(res, 400, None).await;
    assert!(app.stored_blobs().is_empty());
}

#[tokio::test]
async fn upload_over_the_size_limit_returns_413_and_leaves_nothing() {
    let app = spawn_app_with(AppOptions {
        max_upload_bytes: Some(1024),
        ..Default::default()
    })
    .await;
    let err = assert_error(
        app.upload("big.bin", vec![b'x'; 4096], "user_data").await,
        413,
        Some("file"),
    )
    .await;
    assert!(err["message"].as_str().unwrap().contains("1024"));
    assert!(app.stored_blobs().is_empty());
    let ok = app.upload("small.bin", vec![b'x'; 1000], "user_data").await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test]
async fn files_of_other_purposes_are_stored_without_dataset_checks() {
    let app = spawn_app().await;
    let res = app
        .upload("image.png", vec![0u8, 159, 146, 150], "vision")
        .await;
    assert_eq!(res.status(), 200);
    let file: Value = res.json().await.unwrap();
    assert!(file.get("dataset_format").is_none());
}

#[tokio::test]
async fn retrieve_content_and_delete_round_trip() {
    let app = spawn_app().await;
    let id = app.training_file(10).await;
    let file: Value = app
        .get(&format!("/v1/files/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(file["id"], id.as_str());
    let content = app.get(&format!("/v1/files/{id}/content")).await;
    assert_eq!(content.status(), 200);
    assert_eq!(content.bytes().await.unwrap().to_vec(), alpaca_jsonl(10));
    let deleted: Value = app
        .delete(&format!("/v1/files/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        deleted,
        json!({"id": id, "object": "file", "deleted": true})
    );
    assert!(app.stored_blobs().is_empty());
    assert_error(app.get(&format!("/v1/files/{id}")).await, 404, Some("id")).await;
    assert_error(
        app.get(&format!("/v1/files/{id}/content")).await,
        404,
        Some("id"),
    )
    .await;
    assert_error(
        app.delete(&format!("/v1/files/{id}")).await,
        404,
        Some("id"),
    )
    .await;
}

#[tokio::test]
async fn list_pages_with_after_limit_order_and_purpose() {
    let app = spawn_app().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(app.training_file(10).await);
    }
    app.upload("b.jsonl", b"{}".to_vec(), "user_data").await;
    // Newest first, two at a time, over three pages.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page: Value = app
            .get(&format!(
                "/v1/files?purpose=fine-tune&limit=2&after={after}"
            ))
            .await
            .json()
            .await
            .unwrap();
        let data = page["data"].as_array().unwrap();
        assert_eq!(page["first_id"], data[0]["id"]);
        assert_eq!(page["last_id"], data[data.len() - 1]["id"]);
        seen.extend(data.iter().map(|f| f["id"].as_str().unwrap().to_owned()));
        after = page["last_id"].as_str().unwrap().to_owned();
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
    }
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(seen, newest_first);
    let asc: Value = app
        .get("/v1/files?order=asc&limit=1")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(asc["data"][0]["id"], ids[0].as_str());
    assert_eq!(asc["has_more"], true);
    let all: Value = app.get("/v1/files").await.json().await.unwrap();
    assert_eq!(all["data"].as_array().unwrap().len(), 6);
    let empty: Value = app
        .get("/v1/files?purpose=vision")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (empty["first_id"].clone(), empty["has_more"].clone()),
        (Value::Null, json!(false))
    );
}

#[tokio::test]
async fn list_rejects_bad_limit_order_and_cursor() {
    let app = spawn_app().await;
    assert_error(app.get("/v1/files?limit=0").await, 400, Some("limit")).await;
    assert_error(app.get("/v1/files?limit=10001").await, 400, Some("limit")).await;
    assert_error(
        app.get("/v1/files?order=sideways").await,
        400,
        Some("order"),
    )
    .await;
    assert_error(
        app.get("/v1/files?after=file-doesnotexist").await,
        400,
        Some("after"),
    )
    .await;
    assert_error(app.get("/v1/files?limit=abc").await, 400, None).await;
}

#[tokio::test]
async fn expiring_files_are_accepted_and_bad_expiry_is_rejected() {
    let app = spawn_app().await;
    let form = reqwest::multipart::Form::new()
        .text("purpose", "user_data")
        .text("expires_after[anchor]", "created_at")
        .text("expires_after[seconds]", "3600")
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("a.txt"),
        );
    let res = app
        .client
        .post(format!("{}/v1/files", app.address))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let file: Value = res.json().await.unwrap();
    assert_eq!(
        file["expires_at"].as_i64().unwrap() - file["created_at"].as_i64().unwrap(),
        3600
    );
    let form = reqwest::multipart::Form::new()
        .text("purpose", "user_data")
        .text("expires_after[seconds]", "5")
        .part(
            "file",
            reqwest::multipart::Part::bytes(b"x".to_vec()).file_name("a.txt"),
        );
    let res = app
        .client
        .post(format!("{}/v1/files", app.address))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_error(res, 400, Some("expires_after[seconds]")).await;
}

#[tokio::test]
async fn the_shipped_health_datasets_upload_as_fine_tune_files() {
    let app = spawn_app().await;
    for (file, examples) in [("health_qa.json", 200), ("health_qa_heldout.json", 40)] {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/data/").to_owned() + file;
        let res = app
            .upload(file, std::fs::read(&path).unwrap(), "fine-tune")
            .await;
        assert_eq!(res.status(), 200, "{file}");
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["example_count"], examples, "{file}");
        assert_eq!(body["dataset_format"], "alpaca", "{file}");
    }
}

#[tokio::test]
async fn the_orphan_sweep_removes_old_bytes_that_no_file_owns_and_keeps_the_rest() {
    let app = spawn_app().await;
    let kept = app.training_file(10).await;
    // Bytes whose row went while they could not be removed (a delete with the object store
    // down), and a name that is no file id at all.
    let files = app.data_dir.path().join("files");
    std::fs::write(files.join("file-strayBytesWithoutARow"), b"{}").unwrap();
    std::fs::write(files.join("notes.txt"), b"not ours").unwrap();
    let worker = app.worker();
    let young = worker
        .sweep_orphans(Duration::from_secs(3600))
        .await
        .unwrap();
    assert_eq!(
        young, 0,
        "bytes younger than the age may be an upload in progress"
    );
    assert_eq!(worker.sweep_orphans(Duration::ZERO).await.unwrap(), 1);
    let mut left = app.stored_blobs();
    left.sort();
    assert_eq!(left, vec![kept.clone(), "notes.txt".to_owned()]);
    let content = app.get(&format!("/v1/files/{kept}/content")).await;
    assert_eq!(content.status(), 200);
}

#[tokio::test]
async fn a_server_without_a_worker_sweeps_bytes_of_files_deleted_elsewhere() {
    let app = spawn_app_with(AppOptions {
        sweep_interval_seconds: Some(1),
        ..Default::default()
    })
    .await;
    let kept = app.training_file(10).await;
    // A cached copy of a file another node deleted, and a live file, both two hours old.
    let files = app.data_dir.path().join("files");
    let stray = files.join("file-deletedThroughAnotherNode");
    std::fs::write(&stray, b"{}").unwrap();
    let two_hours_ago = std::time::SystemTime::now() - Duration::from_secs(7200);
    for path in [&stray, &files.join(&kept)] {
        let file = std::fs::File::options().write(true).open(path).unwrap();
        file.set_modified(two_hours_ago).unwrap();
    }
    for _ in 0..100 {
        if !stray.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!stray.exists(), "the server never swept the stray bytes");
    assert_eq!(app.stored_blobs(), vec![kept.clone()]);
    let content = app.get(&format!("/v1/files/{kept}/content")).await;
    assert_eq!(content.status(), 200);
}
