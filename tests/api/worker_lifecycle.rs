//! The worker's lifecycle with the real binary: SIGTERM pauses a training job at a step boundary
//! and the next start resumes it; an idle worker wakes on NOTIFY, not on its poll; running as
//! root with an unreachable data dir fails with one clear sentence.
//!
//! The test's own in-process server (no worker) handles uploads and job creation; the binary
//! shares its database and data directory and runs the worker.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::helpers::binary::{Server, free_port, serve, terminate, wait_healthy};
use crate::helpers::wait::eventually;
use crate::helpers::{TestApp, spawn_app};

fn worker_args(app: &TestApp, poll_ms: u64) -> Vec<String> {
    vec![
        "--base-model".into(),
        "ferrotune-tiny".into(),
        "--database-url".into(),
        app.database_url(),
        "--poll-interval-ms".into(),
        poll_ms.to_string(),
    ]
}

/// Wait until `server`'s worker LISTENs for jobs and has finished its first pass (its claim
/// found nothing, and it swept expired files, the last statement before it sleeps): read from
/// the database's view of that process's connections.
async fn worker_idle_and_listening(app: &TestApp, server: &Server) {
    let name = format!("ferrotune/{}", server.pid());
    eventually("the worker to go idle", Duration::from_secs(60), || async {
        let (listening, swept): (bool, bool) = sqlx::query_as(
            "select coalesce(bool_or(query like 'LISTEN%'), false), \
                    coalesce(bool_or(query like 'delete from file where expires_at%'), false) \
             from pg_stat_activity where datname = current_database() and application_name = $1",
        )
        .bind(&name)
        .fetch_one(app.store.pool())
        .await
        .unwrap();
        (listening && swept).then_some(())
    })
    .await
}

fn start_worker(app: &TestApp, poll_ms: u64) -> Server {
    let args = worker_args(app, poll_ms);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    serve(app.data_dir.path(), free_port(), &args)
}

async fn wait_for(app: &TestApp, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let what = format!("job {id} to have {what}");
    eventually(&what, Duration::from_secs(180), || async {
        let job = app.job(id).await;
        done(&job).then_some(job)
    })
    .await
}

async fn all_messages(app: &TestApp, id: &str) -> Vec<String> {
    app.all_event_messages(id).await
}

/// Let `server` finish the job, stop it, and return the job's messages once it succeeded.
async fn succeeds_on(app: &TestApp, id: &str, server: Server) -> Vec<String> {
    let done = wait_for(app, id, "finished", |j| {
        j["status"] == "succeeded" || j["status"] == "failed"
    })
    .await;
    terminate(server);
    assert_eq!(done["status"], "succeeded", "{done}");
    all_messages(app, id).await
}

#[tokio::test]
async fn sigterm_pauses_a_training_job_which_the_next_start_resumes() {
    let app = spawn_app().await;
    let id = app
        .long_training_job(json!({"logging_steps": 10, "save_steps": 100000}))
        .await;
    let port = free_port();
    let args = worker_args(&app, 100);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let server = serve(app.data_dir.path(), port, &args);
    wait_healthy(port).await;
    wait_for(&app, &id, "trained a step", |j| j["status"] == "running").await;
    while !all_messages(&app, &id)
        .await
        .iter()
        .any(|m| m.starts_with("Step "))
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let exit = terminate(server);
    println!("exit after SIGTERM: {} ms", exit.as_millis());
    assert!(
        exit < Duration::from_secs(15),
        "the process must exit within seconds, took {exit:?}"
    );
    let paused = app.job(&id).await;
    assert_eq!(paused["status"], "queued", "{paused}");
    let messages = all_messages(&app, &id).await;
    let said = messages
        .iter()
        .find(|m| m.contains("shutting down"))
        .expect("an event says why the job went back to the queue");
    assert!(said.contains("paused at step"), "{said}");
    let locked: Option<String> =
        sqlx::query_scalar("select locked_by from fine_tuning_job where id = $1")
            .bind(&id)
            .fetch_one(app.store.pool())
            .await
            .unwrap();
    assert_eq!(locked, None, "the lease is released");

    let messages = succeeds_on(&app, &id, start_worker(&app, 100)).await;
    assert!(
        messages.iter().any(|m| m.starts_with("Resuming from step")),
        "{messages:?}"
    );
}

#[tokio::test]
async fn an_idle_worker_starts_a_created_job_on_notify_not_on_its_poll() {
    let app = spawn_app().await;
    let file = app.training_file(12).await;
    // A poll of ten minutes: only the notification can wake the worker in time.
    let server = start_worker(&app, 600_000);
    worker_idle_and_listening(&app, &server).await;
    let created = Instant::now();
    let job = app.create_job(&file, json!({"suffix": "notify"})).await;
    let id = job["id"].as_str().unwrap();
    wait_for(&app, id, "left validating_files", |j| {
        j["status"] != "validating_files"
    })
    .await;
    let started = created.elapsed();
    println!(
        "job picked up {} ms after it was created",
        started.as_millis()
    );
    // Resumed jobs are announced too.
    app.post_empty(&format!("/v1/fine_tuning/jobs/{id}/pause"))
        .await;
    wait_for(&app, id, "paused", |j| j["status"] == "paused").await;
    tokio::time::sleep(Duration::from_millis(1500)).await; // the worker lets go and idles
    let resumed = Instant::now();
    app.post_empty(&format!("/v1/fine_tuning/jobs/{id}/resume"))
        .await;
    wait_for(&app, id, "ran again", |j| j["status"] != "queued").await;
    let restarted = resumed.elapsed();
    println!("resumed job picked up after {} ms", restarted.as_millis());
    terminate(server);
    assert!(started < Duration::from_secs(10), "took {started:?}");
    assert!(restarted < Duration::from_secs(10), "took {restarted:?}");
}

#[tokio::test]
#[ignore = "needs root (the embedded cluster drops to another user only as root); scripts/test.sh runs it as root"]
async fn as_root_serve_with_an_unreachable_data_dir_says_why_in_one_sentence() {
    assert!(
        nix::unistd::Uid::effective().is_root(),
        "run as root: as another user the cluster runs as that user and nothing is checked"
    );
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    // Root-owned and 0700, as `mktemp -d` makes it.
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let data = parent.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_ferrotune"))
        .args([
            "serve",
            "--base-model",
            "ferrotune-tiny",
            "--port",
            "0",
            "--data-dir",
        ])
        .arg(&data)
        .env_remove("DATABASE_URL")
        .env("RUST_BACKTRACE", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("serve kept running with an unreachable data dir");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    let line = error[0];
    assert!(
        line.contains(&parent.path().display().to_string()),
        "{line}"
    );
    assert!(line.contains("cannot enter"), "{line}");
    assert!(
        line.contains("DATABASE_URL") && line.contains("non-root"),
        "{line}"
    );
    assert!(!stderr.contains("backtrace"), "{stderr}");
}

#[tokio::test]
async fn a_worker_killed_mid_training_is_resumed_from_its_last_checkpoint_without_duplicate_metrics()
 {
    let app = spawn_app().await;
    let id = app.long_training_job(json!({"save_steps": 25})).await;
    // A minute's lease: the restarted node must not wait it out (it releases the leases of its
    // own dead processes at start-up).
    let mut server = start_worker_leasing(&app, 60);
    // Kill it once a checkpoint is on disk and later steps have logged metrics.
    let what = "a checkpoint, and metrics logged after it";
    let checkpoint_step: i32 = eventually(what, Duration::from_secs(180), || async {
        let steps: Vec<i32> = sqlx::query_scalar(
            "select step_number from fine_tuning_job_checkpoint where job_id = $1 order by 1",
        )
        .bind(&id)
        .fetch_all(app.store.pool())
        .await
        .unwrap();
        let logged = all_messages(&app, &id).await;
        let last = *steps.last()?;
        let after = format!("Step {}/", last + 3);
        logged.iter().any(|m| m.starts_with(&after)).then_some(last)
    })
    .await;
    server.kill_hard(); // SIGKILL: no state saved on the way out
    let restarted_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("select now()")
        .fetch_one(app.store.pool())
        .await
        .unwrap();
    let messages = succeeds_on(&app, &id, start_worker_leasing(&app, 60)).await;
    let resumed_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "select created_at from fine_tuning_job_event \
         where job_id = $1 and message like 'Resuming from step %' order by seq limit 1",
    )
    .bind(&id)
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    let waited = (resumed_at - restarted_at).as_seconds_f64();
    eprintln!("resumed {waited:.2} s after the restart");
    assert!(
        waited < 20.0,
        "resumed {waited:.1} s after the restart: the dead worker's 60 s lease was waited out"
    );
    let resumed = messages
        .iter()
        .find(|m| m.contains("after a lost worker"))
        .unwrap_or_else(|| panic!("no resume event: {messages:?}"));
    let from: i32 = resumed
        .trim_start_matches("Resuming from step ")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(from >= checkpoint_step && from > 0, "resumed from {from}");
    let started = messages
        .iter()
        .filter(|m| m.starts_with("Training "))
        .count();
    assert_eq!(started, 1, "the run started over: {messages:?}");
    let repeated: Vec<(String, i64)> = sqlx::query_as(
        "select data->>'step', count(*) from fine_tuning_job_event \
         where job_id = $1 and type = 'metrics' group by 1 having count(*) > 1",
    )
    .bind(&id)
    .fetch_all(app.store.pool())
    .await
    .unwrap();
    assert!(repeated.is_empty(), "steps logged twice: {repeated:?}");
    let logged: i64 = sqlx::query_scalar(
        "select count(*) from fine_tuning_job_event where job_id = $1 and type = 'metrics'",
    )
    .bind(&id)
    .fetch_one(app.store.pool())
    .await
    .unwrap();
    assert_eq!(logged, 600, "every step's metrics once");
}

fn start_worker_leasing(app: &TestApp, lease_seconds: u64) -> Server {
    let mut args = worker_args(app, 100);
    args.extend(["--lease-seconds".to_owned(), lease_seconds.to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    serve(app.data_dir.path(), free_port(), &args)
}

#[tokio::test]
async fn serve_stops_the_embedded_cluster_it_adopted_after_a_kill() {
    let dir = std::env::temp_dir().join(format!(
        "ferrotune-adopt-{}",
        ferrotune::domain::ids::JobId::generate().body()
    ));
    let pid_file = dir.join("postgres/data/postmaster.pid");
    let port = free_port();
    let mut first = serve(&dir, port, &["--base-model", "ferrotune-tiny"]);
    wait_healthy(port).await;
    first.kill_hard();
    assert!(
        pid_file.exists(),
        "the killed server's cluster keeps running"
    );
    let port = free_port();
    let second = serve(&dir, port, &["--base-model", "ferrotune-tiny"]);
    wait_healthy(port).await;
    terminate(second);
    let stopped = !pid_file.exists();
    if !stopped {
        // Do not leave a cluster behind on the test machine.
        let _ = Command::new("pkill")
            .args(["-f", &dir.display().to_string()])
            .status();
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert!(stopped, "the adopted cluster was left running");
}
