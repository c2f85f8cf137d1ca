//! The bugs fuzzing and crash tests found (issue 12), each pinned by a test on a real server:
//! NUL bytes, the context window, stalled bodies, cancelled checkpoints, stale uploads, a full
//! disk, and where the spec and the code disagreed.

use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::wait::eventually;
use crate::helpers::{AppOptions, TestApp, alpaca_jsonl, assert_error, spawn_app, spawn_app_with};

#[tokio::test]
async fn nul_bytes_anywhere_are_a_4xx_never_a_500() {
    let app = spawn_app().await;
    let file = app.training_file(10).await;
    let job = app.create_job(&file, json!({})).await;
    let id = job["id"].as_str().unwrap();
    for (path, status, param) in [
        ("/v1/files/%00".to_owned(), 404, Some("id")),
        ("/v1/files/%00/content".to_owned(), 404, Some("id")),
        ("/v1/files?after=%00".to_owned(), 400, Some("after")),
        ("/v1/files?purpose=%00".to_owned(), 400, Some("purpose")),
        (
            "/v1/fine_tuning/jobs?metadata%5Bk%5D=%00".to_owned(),
            400,
            Some("metadata"),
        ),
        (
            "/v1/fine_tuning/jobs?after=%00".to_owned(),
            400,
            Some("after"),
        ),
        ("/v1/fine_tuning/jobs/ftjob-%00".to_owned(), 404, Some("id")),
        (
            format!("/v1/fine_tuning/jobs/{id}/events?after=%00"),
            400,
            Some("after"),
        ),
        (
            format!("/v1/fine_tuning/jobs/{id}/checkpoints?after=%00"),
            400,
            Some("after"),
        ),
        ("/v1/models/ft:%00".to_owned(), 404, Some("model")),
    ] {
        let res = app.get(&path).await;
        assert_eq!(res.status().as_u16(), status, "GET {path}");
        assert_error(res, status, param).await;
    }
    assert_error(app.delete("/v1/models/ft:%00").await, 404, Some("model")).await;
    assert_error(
        app.post_empty("/v1/fine_tuning/jobs/ftjob-%00/cancel")
            .await,
        404,
        Some("id"),
    )
    .await;
    let res = app
        .post(
            "/v1/fine_tuning/jobs",
            &json!({"model": "ferrotune-tiny", "training_file": file,
                    "metadata": {"k": "a\u{0}b"}}),
        )
        .await;
    assert_error(res, 400, Some("metadata")).await;
    let res = app
        .post(
            "/v1/fine_tuning/jobs",
            &json!({"model": "ferrotune-tiny", "training_file": file,
                    "integrations": [{"type": "wandb", "wandb": {"project": "p\u{0}"}}]}),
        )
        .await;
    assert_error(res, 400, Some("integrations")).await;
    let res = app
        .post(
            "/v1/chat/completions",
            &json!({"model": "ft:\u{0}", "messages": [{"role": "user", "content": "hi"}]}),
        )
        .await;
    assert_error(res, 400, Some("model")).await;
    let res = app.upload("a\u{0}b.txt", b"hello".to_vec(), "batch").await;
    assert_ne!(res.status().as_u16(), 500, "a NUL in the filename");
    assert!(res.status().is_client_error());
}

#[tokio::test]
async fn chat_without_max_tokens_fills_the_context_and_what_cannot_fit_is_a_400() {
    let app = spawn_app().await;
    let ask = |extra: Value, content: String| {
        let mut body = json!({"model": "ferrotune-tiny", "temperature": 0,
                              "messages": [{"role": "user", "content": content}]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap());
        body
    };
    // The first call an SDK user makes: no max_tokens.
    let res = app
        .post("/v1/chat/completions", &ask(json!({}), "hi".into()))
        .await;
    assert_eq!(res.status(), 200);
    let done: Value = res.json().await.unwrap();
    let usage = &done["usage"];
    let total =
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap();
    assert!(total <= 2048, "{usage}");
    let err = assert_error(
        app.post(
            "/v1/chat/completions",
            &ask(json!({"max_tokens": 2040}), "hi".into()),
        )
        .await,
        400,
        Some("max_tokens"),
    )
    .await;
    assert_eq!(err["code"], "context_length_exceeded");
    assert!(err["message"].as_str().unwrap().contains("2048"), "{err}");
    let err = assert_error(
        app.post(
            "/v1/chat/completions",
            &ask(
                json!({"max_completion_tokens": 4000, "stream": true}),
                "hi".into(),
            ),
        )
        .await,
        400,
        Some("max_completion_tokens"),
    )
    .await;
    assert_eq!(err["code"], "context_length_exceeded");
    let err = assert_error(
        app.post("/v1/chat/completions", &ask(json!({}), "a ".repeat(3000)))
            .await,
        400,
        Some("messages"),
    )
    .await;
    assert!(
        err["message"].as_str().unwrap().contains("resulted in"),
        "{err}"
    );
}

async fn raw_request(app: &TestApp, head: &str, body: &[u8]) -> String {
    let addr = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut answer))
        .await
        .expect("the server answered a stalled body")
        .unwrap();
    String::from_utf8_lossy(&answer[..n]).into_owned()
}

#[tokio::test]
async fn stalled_bodies_are_answered_408_and_leave_no_temporary_file() {
    let app = spawn_app_with(AppOptions {
        request_timeout_seconds: Some(1),
        ..Default::default()
    })
    .await;
    // Complete by Content-Length, but the multipart body never closes its boundary.
    let body =
        b"--XYZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--XYZ\r\n\
                 Content-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\n\
                 Content-Type: text/plain\r\n\r\nhello world";
    let head = format!(
        "POST /v1/files HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XYZ\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    let answer = raw_request(&app, &head, body).await;
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("multipart"), "{answer}");
    // A multipart body that stops halfway through what its Content-Length promised.
    let head = head.replace(
        &format!("Content-Length: {}", body.len()),
        &format!("Content-Length: {}", body.len() + 1000),
    );
    let started = Instant::now();
    let answer = raw_request(&app, &head, body).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    println!("stalled multipart answered after {:?}", started.elapsed());
    // Headers and half a JSON body.
    let head = "POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x\r\n\
                Content-Type: application/json\r\nContent-Length: 100\r\n\r\n";
    let answer = raw_request(&app, head, b"{\"model\":").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let staged: Vec<_> = std::fs::read_dir(app.data_dir.path().join("files/.tmp"))
        .unwrap()
        .collect();
    assert!(staged.is_empty(), "temporary upload files left: {staged:?}");
}

#[tokio::test]
async fn uploads_half_written_by_a_crash_are_swept_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let staging = dir.path().join("files/.tmp");
    std::fs::create_dir_all(&staging).unwrap();
    let old = staging.join("upload-crashed");
    std::fs::write(&old, b"half").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&old)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(3600))
        .unwrap();
    let fresh = staging.join("upload-in-progress");
    std::fs::write(&fresh, b"still arriving").unwrap();
    let app = spawn_app_with(AppOptions {
        data_dir: Some(dir),
        ..Default::default()
    })
    .await;
    assert!(!old.exists(), "a stale upload stays after start-up");
    assert!(fresh.exists(), "an upload in progress was removed");
    drop(app);
}

async fn listed(app: &TestApp, path: &str) -> Vec<Value> {
    let list: Value = app.get(path).await.json().await.unwrap();
    list["data"].as_array().unwrap().clone()
}

/// A long job trained by a worker in the background, once it has listed a checkpoint.
async fn training_with_a_checkpoint(app: &TestApp) -> (String, tokio::task::JoinHandle<bool>) {
    let id = app.long_training_job(json!({"save_steps": 5})).await;
    let worker = app.worker();
    let run = tokio::spawn(async move { worker.run_once().await.unwrap() });
    let checkpoints = format!("/v1/fine_tuning/jobs/{id}/checkpoints");
    eventually("a checkpoint", Duration::from_secs(120), || async {
        (!listed(app, &checkpoints).await.is_empty()).then_some(())
    })
    .await;
    (id, run)
}

#[tokio::test]
async fn a_cancelled_job_lists_no_checkpoints_and_saves_no_state_after_the_cancel() {
    let app = spawn_app().await;
    let (id, run) = training_with_a_checkpoint(&app).await;
    let checkpoints = format!("/v1/fine_tuning/jobs/{id}/checkpoints");
    let res = app
        .post_empty(&format!("/v1/fine_tuning/jobs/{id}/cancel"))
        .await;
    assert_eq!(res.status(), 200);
    assert!(run.await.unwrap());
    assert!(listed(&app, &checkpoints).await.is_empty());
    let models = listed(&app, "/v1/models").await;
    assert!(
        models
            .iter()
            .all(|m| !m["id"].as_str().unwrap().contains("ckpt-step")),
        "{models:?}"
    );
    let messages = app.all_event_messages(&id).await;
    let cancelled = messages
        .iter()
        .position(|m| m == "Fine-tuning job cancelled")
        .expect("a cancel event");
    assert!(
        !messages[cancelled..]
            .iter()
            .any(|m| m.starts_with("Saved training state")),
        "{messages:?}"
    );
    assert!(!app.data_dir.path().join("jobs").join(&id).exists());
}

#[tokio::test]
async fn a_paused_job_cancelled_later_loses_its_checkpoints_and_its_files() {
    let app = spawn_app().await;
    let (id, run) = training_with_a_checkpoint(&app).await;
    let checkpoints = format!("/v1/fine_tuning/jobs/{id}/checkpoints");
    app.post_empty(&format!("/v1/fine_tuning/jobs/{id}/pause"))
        .await;
    run.await.unwrap();
    let out = app.data_dir.path().join("jobs").join(&id);
    assert!(out.join("state").exists(), "pause keeps the state on disk");
    app.post_empty(&format!("/v1/fine_tuning/jobs/{id}/cancel"))
        .await;
    assert!(listed(&app, &checkpoints).await.is_empty());
    // An idle worker's sweep frees the disk of a cancelled job nobody held.
    let stop = tokio_util::sync::CancellationToken::new();
    let idle = tokio::spawn(app.worker().run_until_stopped(stop.clone()));
    let what = "the idle worker's sweep to remove the cancelled job's files";
    eventually(what, Duration::from_secs(30), || async {
        (!out.exists()).then_some(())
    })
    .await;
    stop.cancel();
    idle.await.unwrap();
    assert!(!out.exists(), "the cancelled job's files stay on disk");
}

#[tokio::test]
async fn the_spec_and_the_server_agree_on_seeds_limits_and_methods() {
    let app = spawn_app().await;
    let file = app.training_file(10).await;
    let job = app.create_job(&file, json!({"seed": 957423.0})).await;
    assert_eq!(job["seed"], 957423);
    let res = app
        .post(
            "/v1/fine_tuning/jobs",
            &json!({"model": "ferrotune-tiny", "training_file": file, "seed": 1.5}),
        )
        .await;
    assert_eq!(res.status(), 400);
    let res = app.delete("/v1/fine_tuning/jobs").await;
    assert_eq!(res.status(), 405);
    assert_eq!(res.headers()["allow"], "GET, POST");
    let res = app.post_empty("/v1/files/file-abc").await;
    assert_eq!(res.headers()["allow"], "GET, DELETE");
    let spec: Value = app.get("/openapi.json").await.json().await.unwrap();
    let limit = |path: &str| {
        spec["paths"][path]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "limit")
            .unwrap()["schema"]
            .clone()
    };
    assert_eq!(
        (
            limit("/v1/files")["minimum"].clone(),
            limit("/v1/files")["maximum"].clone()
        ),
        (json!(1), json!(10000))
    );
    assert_eq!(limit("/v1/fine_tuning/jobs")["maximum"], 100);
    assert_eq!(
        limit("/v1/fine_tuning/jobs/{job_id}/events")["maximum"],
        100
    );
}

/// A tmpfs of `size` at a fresh directory, or `None` where mounting is not allowed.
fn small_disk(size: &str) -> Option<tempfile::TempDir> {
    let dir = tempfile::tempdir().ok()?;
    let ok = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(dir)
}

fn unmount(dir: &std::path::Path) {
    let _ = std::process::Command::new("umount")
        .arg("-l")
        .arg(dir)
        .status();
}

/// Fill the disk at `dir`, leaving about `leave` bytes free.
fn fill(dir: &std::path::Path, leave: u64) {
    let free = nix::sys::statvfs::statvfs(dir).unwrap();
    let bytes = free.blocks_available() * free.fragment_size();
    let filler = vec![0u8; bytes.saturating_sub(leave) as usize];
    let _ = std::fs::write(dir.join("filler"), filler);
}

#[tokio::test]
#[ignore = "needs root (mounts a small tmpfs to fill); scripts/test.sh runs it as root"]
async fn as_root_a_full_disk_is_a_507_for_uploads_and_storage_full_for_jobs() {
    let disk = small_disk("4m").expect("mounting a 4 MB tmpfs (run as root)");
    let root = disk.path().to_owned();
    let data = tempfile::Builder::new().tempdir_in(&root).unwrap();
    let app = spawn_app_with(AppOptions {
        data_dir: Some(data),
        ..Default::default()
    })
    .await;
    let file = app.training_file(20).await;
    fill(&root, 24 * 1024);
    let res = app
        .upload("big.jsonl", alpaca_jsonl(2000), "fine-tune")
        .await;
    let err = assert_error(res, 507, None).await;
    assert_eq!(err["code"], "storage_full");
    let method = json!({"type": "supervised", "supervised": {"hyperparameters":
        {"n_epochs": 2, "batch_size": 1, "save_steps": 1}}});
    let job = app.create_job(&file, json!({"method": method})).await;
    let id = job["id"].as_str().unwrap().to_owned();
    app.worker().run_once().await.unwrap();
    let job = app.job(&id).await;
    let leftovers: Vec<String> = walk(&app.data_dir.path().join("jobs"))
        .into_iter()
        .filter(|p| p.ends_with(".tmp"))
        .collect();
    let staged = std::fs::read_dir(app.data_dir.path().join("files/.tmp"))
        .unwrap()
        .count();
    drop(app);
    unmount(&root);
    assert_eq!(job["status"], "failed", "{job}");
    assert_eq!(job["error"]["code"], "storage_full", "{job}");
    let message = job["error"]["message"].as_str().unwrap();
    assert!(!message.contains('/'), "a server path in {message}");
    assert!(leftovers.is_empty(), "partial files: {leftovers:?}");
    assert_eq!(staged, 0, "a partial upload stayed");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|e| {
            let p = e.path();
            if p.is_dir() {
                walk(&p)
            } else {
                vec![p.display().to_string()]
            }
        })
        .collect()
}
