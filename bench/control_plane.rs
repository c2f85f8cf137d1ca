//! Control-plane benchmark (not a test): requests/s and latency percentiles of listing jobs and
//! events with 10,000 jobs and 100,000 events in Postgres, and the throughput of a 100 MB upload.
//! A real server (embedded Postgres, no worker) and a small concurrent Rust client.
//! Run with `cargo run --release --example control_plane_bench`.

use std::time::{Duration, Instant};

use ferrotune::config::Settings;
use ferrotune::startup::Application;

const CLIENTS: usize = 16;
const SECONDS: u64 = 5;

/// Hammer `path` with `CLIENTS` concurrent clients for `SECONDS`: (requests/s, p50 ms, p99 ms).
async fn hammer(client: &reqwest::Client, url: String) -> (f64, f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(SECONDS);
    let workers = (0..CLIENTS).map(|_| {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                let res = client.get(&url).send().await.expect("request");
                assert!(res.status().is_success(), "{}", res.status());
                res.bytes().await.expect("body");
                latencies.push(started.elapsed().as_secs_f64() * 1000.0);
            }
            latencies
        })
    });
    let mut all: Vec<f64> = Vec::new();
    for w in futures_util::future::join_all(workers).await {
        all.extend(w.expect("client task"));
    }
    all.sort_by(|a, b| a.total_cmp(b));
    let pick = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    (all.len() as f64 / SECONDS as f64, pick(0.5), pick(0.99))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("ferrotune-cp-bench-{}", std::process::id()));
    let mut settings = Settings::local(dir.clone());
    settings.http.max_upload_bytes = 200 << 20;
    settings.run_worker = false;
    let app = Application::build(settings).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let pool = app.store().pool().clone();
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());

    let seeded = Instant::now();
    sqlx::query(
        "insert into fine_tuning_job (id, organization_id, model, training_file, seed, status, \
         hyperparameters, method, finished_at) \
         select 'ftjob-bench' || lpad(g::text, 8, '0'), 'org-local', 'ferrotune-tiny', 'file-bench', g, \
         'succeeded', '{\"n_epochs\": 3}'::jsonb, '{\"type\": \"supervised\"}'::jsonb, now() \
         from generate_series(1, 10000) g",
    )
    .execute(&pool)
    .await?;
    sqlx::query(
        "insert into fine_tuning_job_event (id, job_id, level, message, type) \
         select 'ftevent-bench' || g, 'ftjob-bench' || lpad(((g % 10000) + 1)::text, 8, '0'), 'info', \
         'Step ' || g, 'message' from generate_series(1, 100000) g",
    )
    .execute(&pool)
    .await?;
    sqlx::query("analyze").execute(&pool).await?;
    println!(
        "seeded 10,000 jobs and 100,000 events in {:.1} s",
        seeded.elapsed().as_secs_f64()
    );

    let client = reqwest::Client::new();
    println!("\n{CLIENTS} concurrent clients, {SECONDS} s each");
    println!(
        "{:<46} {:>9} {:>8} {:>8}",
        "request", "req/s", "p50 ms", "p99 ms"
    );
    for (label, path) in [
        (
            "GET /v1/fine_tuning/jobs (first page)",
            "/v1/fine_tuning/jobs".to_owned(),
        ),
        (
            "GET /v1/fine_tuning/jobs?after=<middle>",
            "/v1/fine_tuning/jobs?after=ftjob-bench00005000".to_owned(),
        ),
        (
            "GET /v1/fine_tuning/jobs/{id}/events",
            "/v1/fine_tuning/jobs/ftjob-bench00000042/events".to_owned(),
        ),
        ("GET /health (baseline)", "/health".to_owned()),
    ] {
        let (rps, p50, p99) = hammer(&client, format!("{base}{path}")).await;
        println!("{label:<46} {rps:>9.0} {p50:>8.2} {p99:>8.2}");
    }

    let body = vec![b'x'; 100 << 20];
    let started = Instant::now();
    let form = reqwest::multipart::Form::new()
        .text("purpose", "batch")
        .part(
            "file",
            reqwest::multipart::Part::bytes(body).file_name("big.bin"),
        );
    let res = client
        .post(format!("{base}/v1/files"))
        .multipart(form)
        .send()
        .await?;
    let secs = started.elapsed().as_secs_f64();
    assert!(res.status().is_success(), "{}", res.text().await?);
    println!("\n100 MB upload: {secs:.2} s ({:.0} MB/s)", 100.0 / secs);

    handle.stop(true).await;
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
