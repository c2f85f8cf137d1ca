//! Runtime PEFT adapters (`/v1/load_lora_adapter`, `/v1/unload_lora_adapter`).

use std::path::Path;

use serde_json::{Value, json};

use crate::helpers::fine_tune_lazily;
use crate::helpers::fixtures::QA;
use crate::helpers::{AppOptions, TestApp, assert_error, spawn_app, spawn_app_with};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

fn edit_config(dir: &Path, edit: impl FnOnce(&mut Value)) {
    let path = dir.join("adapter_config.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(path, config.to_string()).unwrap();
}

/// A server with an adapter root holding `good/`, a real adapter trained through a job.
async fn app_with_adapter() -> (TestApp, tempfile::TempDir) {
    let root = tempfile::tempdir().unwrap();
    let app = spawn_app_with(AppOptions {
        adapter_root: Some(root.path().to_owned()),
        ..Default::default()
    })
    .await;
    let (job, _) = fine_tune_lazily(&app, "src").await;
    copy_dir(
        &app.data_dir.path().join("jobs").join(job).join("adapter"),
        &root.path().join("good"),
    );
    (app, root)
}

#[tokio::test]
async fn adapter_endpoints_are_disabled_without_a_root() {
    let app = spawn_app().await;
    let res = app
        .post(
            "/v1/load_lora_adapter",
            &json!({"lora_name": "x", "lora_path": "/tmp"}),
        )
        .await;
    let err = assert_error(res, 400, None).await;
    assert_eq!(err["code"], "adapters_disabled");
    let res = app
        .post("/v1/unload_lora_adapter", &json!({"lora_name": "x"}))
        .await;
    assert_error(res, 400, None).await;
}

#[tokio::test]
async fn an_adapter_from_the_root_is_loaded_served_and_unloaded() {
    let (app, _root) = app_with_adapter().await;
    let res = app
        .post(
            "/v1/load_lora_adapter",
            &json!({"lora_name": "health-ext", "lora_path": "good"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "loaded");
    let answer: Value = app
        .post(
            "/v1/chat/completions",
            &json!({"model": "health-ext", "temperature": 0, "max_tokens": 40,
            "messages": [{"role": "user", "content": QA[4].0}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(answer["choices"][0]["message"]["content"], QA[4].1);
    let models: Value = app.get("/v1/models").await.json().await.unwrap();
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "health-ext")
    );
    let again = app
        .post(
            "/v1/load_lora_adapter",
            &json!({"lora_name": "health-ext", "lora_path": "good"}),
        )
        .await;
    assert_error(again, 409, None).await;
    let res = app
        .post(
            "/v1/unload_lora_adapter",
            &json!({"lora_name": "health-ext"}),
        )
        .await;
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "unloaded");
    let chat = app
        .post(
            "/v1/chat/completions",
            &json!({"model": "health-ext", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_error(chat, 404, Some("model")).await;
    let res = app
        .post(
            "/v1/unload_lora_adapter",
            &json!({"lora_name": "health-ext"}),
        )
        .await;
    assert_error(res, 404, Some("model")).await;
}

#[tokio::test]
async fn bad_adapters_are_refused_with_the_reason() {
    let (app, root) = app_with_adapter().await;
    let r = root.path();
    for (name, edit) in [
        (
            "modules",
            Box::new(|c: &mut Value| c["target_modules"] = json!(["lm_head"]))
                as Box<dyn Fn(&mut Value)>,
        ),
        (
            "base",
            Box::new(|c: &mut Value| c["base_model_name_or_path"] = json!("Qwen/Qwen2.5-7B")),
        ),
        ("rank", Box::new(|c: &mut Value| c["r"] = json!(4))),
        (
            "dora",
            Box::new(|c: &mut Value| c["use_dora"] = json!(true)),
        ),
    ] {
        copy_dir(&r.join("good"), &r.join(name));
        edit_config(&r.join(name), edit);
    }
    std::fs::create_dir_all(r.join("empty")).unwrap();
    let outside = tempfile::tempdir().unwrap();
    copy_dir(&r.join("good"), outside.path());
    // A directory inside the root whose weights file links to one outside it.
    std::fs::create_dir_all(r.join("linked")).unwrap();
    std::fs::copy(
        r.join("good/adapter_config.json"),
        r.join("linked/adapter_config.json"),
    )
    .unwrap();
    std::os::unix::fs::symlink(
        outside.path().join("adapter_model.safetensors"),
        r.join("linked/adapter_model.safetensors"),
    )
    .unwrap();
    let cases: Vec<(&str, String, &str)> = vec![
        ("a", "missing".into(), "does not exist"),
        (
            "a",
            outside.path().display().to_string(),
            "outside the adapter root",
        ),
        ("a", "../".into(), "outside the adapter root"),
        ("a", "empty".into(), "adapter_config.json is missing"),
        ("a", "linked".into(), "links outside the adapter root"),
        ("a", "modules".into(), "cannot serve"),
        ("a", "base".into(), "trained for 'Qwen/Qwen2.5-7B'"),
        ("a", "rank".into(), "rank 4"),
        ("a", "dora".into(), "DoRA"),
    ];
    for (name, path, needle) in cases {
        let res = app
            .post(
                "/v1/load_lora_adapter",
                &json!({"lora_name": name, "lora_path": path}),
            )
            .await;
        let err = assert_error(res, 400, Some("lora_path")).await;
        assert!(
            err["message"].as_str().unwrap().contains(needle),
            "{path}: {err}"
        );
    }
    for bad_name in ["", "ferrotune-tiny", "a b"] {
        let res = app
            .post(
                "/v1/load_lora_adapter",
                &json!({"lora_name": bad_name, "lora_path": "good"}),
            )
            .await;
        assert_error(res, 400, Some("lora_name")).await;
    }
    assert_error(
        app.post("/v1/load_lora_adapter", &json!({"lora_path": "good"}))
            .await,
        400,
        Some("lora_name"),
    )
    .await;
    assert!(app.engine.resident().is_empty(), "nothing was loaded");
}
