//! Serving benchmark (not a test): decode tokens/s of the base and a fine-tuned model, through our
//! HTTP API and through the engine in-process, at 1, 8 and 32 concurrent streams, the memory a
//! resident fine-tuned model costs, and the time from a job's `succeeded` to the first token of
//! its model. Everything real: embedded Postgres, a job trained by the candle trainer, the
//! mistral.rs engine. Run with `cargo run --release --example serve_bench`; `BENCH_MODEL` picks
//! the base (default the generated tiny model; `smollm2-135m-instruct` for the real one, pulled
//! into `$FERROTUNE_HOME`), `SERVE_QUANT` the in-situ quantization (`none`, `q8_0`, `q4k`).
//! `bench/serve_quant.sh` runs it once per quantization and prints them side by side;
//! `CONCURRENCY` sets the stream counts (default `1 8 32`).

use std::time::{Duration, Instant};

use clap::ValueEnum;
use ferrotune::config::{ServeQuant, Settings};
use ferrotune::serve::measure::{self, median};
use ferrotune::serve::{ChatParams, ChatTurn, Engine};
use ferrotune::startup::Application;
use serde_json::{Value, json};

const TOKENS: usize = 200;
const PROMPT: &str = "Tell me about sleep.";

/// What every generation of the run shares: the special tokens banned (so each runs to its
/// token limit and base and fine-tuned decode the same amount).
struct Run {
    banned: Vec<u32>,
}

impl Run {
    fn params(&self, tokens: usize) -> ChatParams {
        ChatParams {
            messages: vec![ChatTurn::new("user", PROMPT)],
            temperature: Some(1.0),
            n: 1,
            max_tokens: Some(tokens),
            logit_bias: Some(self.banned.iter().map(|id| (*id, -100.0)).collect()),
            ..Default::default()
        }
    }

    fn body(&self, model: &str, tokens: usize, stream: bool) -> Value {
        let bias: serde_json::Map<String, Value> = self
            .banned
            .iter()
            .map(|id| (id.to_string(), json!(-100)))
            .collect();
        json!({"model": model, "stream": stream, "temperature": 1.0, "max_tokens": tokens,
            "logit_bias": bias, "messages": [{"role": "user", "content": PROMPT}]})
    }
}

/// Tokens/s of one in-process generation (completion tokens / wall time).
async fn in_process(run: &Run, engine: &Engine, model: &str) -> f64 {
    measure::decode_rate(engine, model, run.params(TOKENS)).await
}

/// Tokens/s of one HTTP generation.
async fn over_http(run: &Run, client: &reqwest::Client, base: &str, model: &str) -> f64 {
    let started = Instant::now();
    let res: Value = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&run.body(model, TOKENS, false))
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
    run: &Run,
    client: &reqwest::Client,
    base: &str,
    model: &str,
    tokens: usize,
) -> (Duration, usize) {
    let started = Instant::now();
    let mut res = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&run.body(model, tokens, true))
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
async fn stream_engine(
    run: &Run,
    engine: &Engine,
    model: &str,
    tokens: usize,
) -> (Duration, usize) {
    measure::stream(engine, model, run.params(tokens)).await
}

/// Resident memory of this process (Linux `VmRSS`), in MiB.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(f64::NAN, |kib| kib / 1024.0)
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
    if let Ok(model) = std::env::var("BENCH_MODEL") {
        settings.model.base_model = Some(model.into());
    }
    if let Ok(q) = std::env::var("SERVE_QUANT") {
        settings.model.serve_quant =
            ServeQuant::from_str(&q, true).map_err(|e| anyhow::anyhow!("SERVE_QUANT: {e}"))?;
    }
    let quant = format!("{:?}", settings.model.serve_quant).to_lowercase();
    let app = Application::build(settings).await?;
    let base = format!("http://127.0.0.1:{}", app.port());
    let engine = app.engine();
    let base_model = engine.base_name().to_owned();
    let run = Run {
        banned: ferrotune::train::data::special_token_ids(engine.base_dir())?,
    };
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
        .json(&json!({"model": base_model, "training_file": file["id"], "hyperparameters": {"n_epochs": 2}}))
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
    let before_load = rss_mib();
    let seen = Instant::now();
    let body = json!({"model": model, "stream": true, "max_tokens": 1, "messages": [{"role": "user", "content": "Hi"}]});
    let mut res = client
        .post(format!("{base}/v1/chat/completions"))
        .json(&body)
        .send()
        .await?;
    res.chunk().await?;
    let hot_load = seen.elapsed();
    let resident_cost = rss_mib() - before_load;

    let mut table = Vec::new();
    for (label, name) in [("base", base_model.clone()), ("fine-tuned", model.clone())] {
        let mut http = Vec::new();
        let mut local = Vec::new();
        for _ in 0..5 {
            http.push(over_http(&run, &client, &base, &name).await);
            local.push(in_process(&run, &engine, &name).await);
        }
        table.push((label, median(http), median(local)));
    }
    println!(
        "\nserving benchmark ({base_model}, serve-quant {quant}, {TOKENS} tokens, temperature 1, \
         median of 5)"
    );
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
    println!("resident fine-tuned model: {resident_cost:+.0} MiB RSS");

    println!("\nstreaming under load (fine-tuned model, 100 tokens per stream)");
    println!(
        "{:>5} {:>8} {:>12} {:>12} {:>12}",
        "conc", "side", "TTFT p50 ms", "TTFT p95 ms", "tok/s"
    );
    let mut ratios = Vec::new();
    // `CONCURRENCY="1 8"` shortens a slow run (a quantized model on the CPU does not batch).
    let levels: Vec<usize> = std::env::var("CONCURRENCY")
        .unwrap_or_else(|_| "1 8 32".into())
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .collect();
    for c in levels {
        let h = load(c, || stream_http(&run, &client, &base, &model, 100)).await;
        let e = load(c, || stream_engine(&run, &engine, &model, 100)).await;
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
        ratios.push(format!("{:.2}", h.2 / e.2));
    }
    println!(
        "summary quant={quant} base_tok_s={:.1} ft_tok_s={:.1} resident_mib={resident_cost:.0} \
         http_over_engine={}",
        table[0].2,
        table[1].2,
        ratios.join("/")
    );
    engine.remove(&model).await;
    let cold = Instant::now();
    let _ = stream_http(&run, &client, &base, &model, 1).await;
    println!(
        "\ncold reload of an evicted fine-tuned model -> first token: {:.0} ms",
        cold.elapsed().as_secs_f64() * 1000.0
    );
    handle.stop(true).await;
    let _ = server.await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
