//! Serving benchmark (not a test): decode tokens/s of the base and a fine-tuned model, through our
//! HTTP API and through the engine in-process, and the time from a job's `succeeded` to the first
//! token of its model. Everything real: embedded Postgres, the generated tiny model, a job
//! trained by the candle trainer. Run with `cargo run --release --example serve_bench`.

use std::time::{Duration, Instant};

use ferrotune::config::Settings;
use ferrotune::serve::measure::{self, median};
use ferrotune::serve::{ChatParams, ChatTurn, Engine};
use ferrotune::startup::Application;
use serde_json::{Value, json};

const TOKENS: usize = 200;
/// The tiny model's special tokens (after its 256 byte tokens), banned so every generation runs
/// to exactly `TOKENS` tokens and base and fine-tuned decode the same amount.
const SPECIAL_IDS: [u32; 3] = [256, 257, 258];

fn params() -> ChatParams {
    ChatParams {
        messages: vec![ChatTurn::new("user", "Tell me about sleep.")],
        temperature: Some(1.0),
        n: 1,
        max_tokens: Some(TOKENS),
        logit_bias: Some(SPECIAL_IDS.iter().map(|id| (*id, -100.0)).collect()),
        ..Default::default()
    }
}

/// Tokens/s of one in-process generation (completion tokens / wall time).
async fn in_process(engine: &Engine, model: &str) -> f64 {
    measure::decode_rate(engine, model, params()).await
}

/// Tokens/s of one HTTP generation.
async fn over_http(client: &reqwest::Client, base: &str, model: &str) -> f64 {
    let started = Instant::now();
    let bias: serde_json::Map<String, Value> = SPECIAL_IDS
        .iter()
        .map(|id| (id.to_string(), json!(-100)))
        .collect();
    let body = json!({"model": model, "temperature": 1.0, "max_tokens": TOKENS, "logit_bias": bias,
        "messages": [{"role": "user", "content": "Tell me about sleep."}]});
    let res: Value = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    res["usage"]["completion_tokens"]
        .as_f64()
        .unwrap_or(f64::NAN)
        / started.elapsed().as_secs_f64()
}

/// One streamed HTTP generation: (time to first content token, completion tokens).
async fn stream_http(
    client: &reqwest::Client,
    base: &str,
    model: &str,
    tokens: usize,
) -> (Duration, usize) {
    let bias: serde_json::Map<String, Value> = SPECIAL_IDS
        .iter()
        .map(|id| (id.to_string(), json!(-100)))
        .collect();
    let body = json!({"model": model, "stream": true, "temperature": 1.0, "max_tokens": tokens,
        "logit_bias": bias, "messages": [{"role": "user", "content": "Tell me about sleep."}]});
    let started = Instant::now();
    let mut res = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let (mut first, mut count, mut buf) = (None, 0, String::new());
    while let Some(chunk) = res.chunk().await.unwrap() {
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            if event.contains("\"content\":\"") && !event.contains("\"role\"") {
                first.get_or_insert_with(|| started.elapsed());
                count += 1;
            }
        }
    }
    (first.unwrap_or_else(|| started.elapsed()), count)
}

/// One streamed in-process generation: (time to first token, tokens).
async fn stream_engine(engine: &Engine, model: &str, tokens: usize) -> (Duration, usize) {
    let mut p = params();
    p.max_tokens = Some(tokens);
    measure::stream(engine, model, p).await
}

/// `concurrency` simultaneous streams of `tokens` tokens: (median TTFT ms, p95 TTFT ms, tokens/s).
async fn load<F, Fut>(concurrency: usize, run: F) -> (f64, f64, f64)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = (Duration, usize)>,
{
    let started = Instant::now();
    let results = futures_util::future::join_all((0..concurrency).map(|_| run())).await;
    let wall = started.elapsed().as_secs_f64();
    let mut ttft: Vec<f64> = results.iter().map(|r| r.0.as_secs_f64() * 1000.0).collect();
    ttft.sort_by(|a, b| a.total_cmp(b));
    let tokens: usize = results.iter().map(|r| r.1).sum();
    let p95 = ttft[((ttft.len() as f64 * 0.95).ceil() as usize).clamp(1, ttft.len()) - 1];
    (ttft[ttft.len() / 2], p95, tokens as f64 / wall)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("ferrotune-serve-bench-{}", std::process::id()));
    let mut settings = Settings::local(dir.clone());
    settings.worker.poll_interval_ms = 20;
    let app = Application::build(settings).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let engine = app.engine();
    let handle = app.handle();
    let server = tokio::spawn(app.run_until_stopped());
    let client = reqwest::Client::new();

    let rows: Vec<Value> = (0..10)
        .map(|i| json!({"instruction": format!("Question {i}?"), "input": "", "output": format!("Answer {i}.")}))
        .collect();
    let form = reqwest::multipart::Form::new()
        .text("purpose", "fine-tune")
        .part(
            "file",
            reqwest::multipart::Part::bytes(serde_json::to_vec(&rows)?).file_name("qa.json"),
        );
    let file: Value = client
        .post(format!("{base}/v1/files"))
        .multipart(form)
        .send()
        .await?
        .json()
        .await?;
    let job: Value = client
        .post(format!("{base}/v1/fine_tuning/jobs"))
        .json(&json!({"model": "ferrotune-tiny", "training_file": file["id"], "hyperparameters": {"n_epochs": 2}}))
        .send().await?.json().await?;
    let job_id = job["id"].as_str().unwrap_or_default().to_owned();
    let model = loop {
        let j: Value = client
            .get(format!("{base}/v1/fine_tuning/jobs/{job_id}"))
            .send()
            .await?
            .json()
            .await?;
        match j["status"].as_str() {
            Some("succeeded") => {
                break j["fine_tuned_model"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
            }
            Some("failed") | Some("cancelled") => anyhow::bail!("job ended {j}"),
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let seen = Instant::now();
    let body = json!({"model": model, "stream": true, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]});
    let mut res = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await?;
    res.chunk().await?;
    let hot_load = seen.elapsed();

    let mut table = Vec::new();
    for (label, name) in [
        ("base", "ferrotune-tiny".to_owned()),
        ("fine-tuned", model.clone()),
    ] {
        let mut http = Vec::new();
        let mut local = Vec::new();
        for _ in 0..5 {
            http.push(over_http(&client, &base, &name).await);
            local.push(in_process(&engine, &name).await);
        }
        table.push((label, median(http), median(local)));
    }
    println!("\nserving benchmark (tiny model, {TOKENS} tokens, temperature 1, median of 5)");
    println!(
        "{:<11} {:>12} {:>14} {:>8}",
        "model", "HTTP tok/s", "engine tok/s", "ratio"
    );
    for (label, http, local) in &table {
        println!(
            "{label:<11} {http:>12.0} {local:>14.0} {:>8.2}",
            http / local
        );
    }
    println!(
        "fine-tuned/base decode ratio (engine): {:.2}",
        table[1].2 / table[0].2
    );
    println!(
        "job succeeded -> first token of its model: {:.0} ms",
        hot_load.as_secs_f64() * 1000.0
    );

    println!("\nstreaming under load (fine-tuned model, 100 tokens per stream)");
    println!(
        "{:>5} {:>8} {:>12} {:>12} {:>12}",
        "conc", "side", "TTFT p50 ms", "TTFT p95 ms", "tok/s"
    );
    for c in [1, 8, 32] {
        let h = load(c, || stream_http(&client, &base, &model, 100)).await;
        let e = load(c, || stream_engine(&engine, &model, 100)).await;
        for (side, r) in [("HTTP", h), ("engine", e)] {
            println!("{c:>5} {side:>8} {:>12.1} {:>12.1} {:>12.0}", r.0, r.1, r.2);
        }
        println!(
            "{c:>5} {:>8} {:>12} {:>12} {:>12.2}",
            "ratio",
            "",
            "",
            h.2 / e.2
        );
    }
    engine.remove(&model).await;
    let cold = Instant::now();
    let _ = stream_http(&client, &base, &model, 1).await;
    println!(
        "\ncold reload of an evicted fine-tuned model -> first token: {:.0} ms",
        cold.elapsed().as_secs_f64() * 1000.0
    );
    handle.stop(true).await;
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
