//! `GET /v1/models/{model}/export` over HTTP: a fine-tuned model downloads as GGUF or a packed
//! directory that reproduces base + adapter, concurrent requests share one kept build, and the
//! kept exports go with the model.

use std::path::Path;

use candle_core::DType;

use crate::helpers::fixtures::{adapted_logits, plain_logits, rel_err};
use crate::helpers::{TestApp, spawn_app, upload_qa};

/// A model fine-tuned for one epoch on the QA pairs.
async fn fine_tuned(app: &TestApp) -> String {
    let train = upload_qa(app, 10).await;
    let job = app
        .create_job(
            &train,
            serde_json::json!({"method": {"type": "supervised", "supervised": {"hyperparameters":
                {"n_epochs": 1, "batch_size": 2, "learning_rate": 0.01}}}}),
        )
        .await;
    assert!(app.worker().run_once().await.unwrap());
    let job = app.job(job["id"].as_str().unwrap()).await;
    job["fine_tuned_model"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_fine_tuned_model_downloads_as_gguf_or_a_directory_archive() {
    let app = spawn_app().await;
    let model = fine_tuned(&app).await;
    let adapter = app
        .store
        .get_model(
            &ferrotune::domain::organization::OrganizationId::local(),
            &model,
        )
        .await
        .unwrap()
        .unwrap()
        .path;
    let base_dir = app.engine.base_dir().to_path_buf();
    let want = adapted_logits(&base_dir, Path::new(&adapter));

    let res = app
        .get(&format!("/v1/models/{model}/export?format=gguf&quant=f32"))
        .await;
    assert_eq!(res.status(), 200);
    let disposition = res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(disposition.ends_with(".gguf\""), "{disposition}");
    assert!(!disposition.contains(':'), "{disposition}");
    let bytes = res.bytes().await.unwrap();
    assert_eq!(&bytes[..4], b"GGUF");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("m.gguf");
    std::fs::write(&file, &bytes).unwrap();
    ferrotune::model_dir::gguf::import(&file, &dir.path().join("m"), DType::F32).unwrap();
    let err = rel_err(&plain_logits(&dir.path().join("m")), &want);
    assert!(err < 1e-5, "relative error {err}");

    // The same through the command line, looked up by name in the server's database.
    let out = dir.path().join("cli.gguf");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args(["model", "export", &model])
        .arg(&out)
        .args(["--format", "gguf", "--quant", "q8_0", "--base-model"])
        .arg(&base_dir)
        .args(["--base-model-name", "ferrotune-tiny", "--database-url"])
        .arg(app.database_url())
        .arg("--data-dir")
        .arg(dir.path().join("cli-data"))
        .status()
        .unwrap();
    assert!(status.success());
    ferrotune::model_dir::gguf::import(&out, &dir.path().join("cli"), DType::F32).unwrap();
    let err = rel_err(&plain_logits(&dir.path().join("cli")), &want);
    assert!(err < 5e-2, "q8_0 relative error {err}");
    // A model trained on another base is refused by name.
    let wrong = std::process::Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args(["model", "export", &model])
        .arg(dir.path().join("wrong.gguf"))
        .arg("--base-model")
        .arg(&base_dir)
        .args(["--base-model-name", "other", "--database-url"])
        .arg(app.database_url())
        .arg("--data-dir")
        .arg(dir.path().join("cli-data"))
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        stderr.contains("was fine-tuned from 'ferrotune-tiny'"),
        "{stderr}"
    );
    assert!(!dir.path().join("wrong.gguf").exists());

    // The base model as a Hugging Face directory, packed.
    let res = app.get("/v1/models/ferrotune-tiny/export?format=hf").await;
    assert_eq!(res.status(), 200);
    let bytes = res.bytes().await.unwrap();
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "a gzip stream");

    // Bad requests: each a 400 or 404 with the OpenAI envelope, and no temporary files left.
    for (query, status, param) in [
        (format!("{model}/export?format=zip"), 400, "format"),
        (format!("{model}/export?quant=q3"), 400, "quant"),
        (format!("{model}/export?format=hf&quant=q8_0"), 400, "quant"),
        (format!("{model}/export?format=&quant="), 400, "format"),
        ("ft:nope/export".to_owned(), 404, "model"),
    ] {
        let res = app.get(&format!("/v1/models/{query}")).await;
        assert_eq!(res.status(), status, "{query}");
        let body: serde_json::Value = res.json().await.unwrap();
        assert_eq!(body["error"]["param"], param, "{query}: {body}");
    }
    // The export path allows GET only (not the DELETE of `/v1/models/{model}`).
    let res = app
        .client
        .post(format!("{}/v1/models/{model}/export", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET");
    let tmp = app.data_dir.path().join("files/.tmp");
    assert!(tmp.is_dir());
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "left in {}: {left:?}", tmp.display());
}

/// The files kept under the server's `exports/` folder.
fn kept_exports(app: &TestApp) -> Vec<std::path::PathBuf> {
    let root = app.data_dir.path().join("exports");
    let mut out = Vec::new();
    for dir in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        out.extend(
            std::fs::read_dir(dir.path())
                .unwrap()
                .flatten()
                .map(|f| f.path()),
        );
    }
    out.sort();
    out
}

#[tokio::test]
async fn concurrent_requests_for_an_export_share_one_kept_build_that_goes_with_the_model() {
    let app = spawn_app().await;
    let model = fine_tuned(&app).await;
    let path = format!("/v1/models/{model}/export?format=hf&quant=f32");
    let (a, b, c) = tokio::join!(app.get(&path), app.get(&path), app.get(&path));
    let mut bodies = Vec::new();
    for res in [a, b, c] {
        assert_eq!(res.status(), 200);
        bodies.push(res.bytes().await.unwrap());
    }
    assert!(
        bodies.iter().all(|b| *b == bodies[0]),
        "the same file for every request"
    );
    let kept = kept_exports(&app);
    assert_eq!(kept.len(), 1, "one build, kept: {kept:?}");
    assert!(kept[0].ends_with("f32.tar.gz"), "{kept:?}");
    let built = std::fs::metadata(&kept[0]).unwrap().modified().unwrap();
    // A later request streams the kept file: no rebuild.
    let again = app.get(&path).await;
    assert_eq!(again.bytes().await.unwrap(), bodies[0]);
    assert_eq!(
        std::fs::metadata(&kept[0]).unwrap().modified().unwrap(),
        built
    );
    // Another format is its own file; the base model's exports are kept apart.
    let gguf = app.get(&format!("/v1/models/{model}/export")).await;
    assert_eq!(gguf.status(), 200);
    assert_eq!(kept_exports(&app).len(), 2);
    // Deleting the model removes its exports.
    assert_eq!(
        app.delete(&format!("/v1/models/{model}")).await.status(),
        200
    );
    assert!(kept_exports(&app).is_empty(), "{:?}", kept_exports(&app));
    let gone = app.get(&path).await;
    assert_eq!(gone.status(), 404);
}
