//! Memory of the serving engine under a stream of distinct chat requests, with mistral.rs's
//! prefix cache on or off (`PREFIX_CACHE=on|off`): mistral.rs 0.8.1 evicts prefix-cached KV
//! caches only from a GPU, so on the CPU the cache keeps every finished sequence. One process per
//! setting; `bench/prefix_cache.sh` runs both and prints them side by side.
//!
//! `BASE_DIR` is the model directory (default `$FERROTUNE_HOME/models/smollm2-135m-instruct`),
//! `ROUNDS` the rounds of 48 requests (8 at a time, 64 greedy tokens each, every prompt
//! different). Prints `round=N requests=M rss_mib=X tok_s=Y` per round, then `summary …`.

use std::path::PathBuf;
use std::time::Instant;

use ferrotune::serve::measure::completion_tokens;
use ferrotune::serve::{ChatParams, ChatTurn, Engine, EngineOptions, MistralOptions};

const PER_ROUND: usize = 48;
const AT_ONCE: usize = 8;
const TOPICS: [&str; 8] = [
    "sleep",
    "hydration",
    "exercise",
    "stress",
    "nutrition",
    "posture",
    "sunlight",
    "caffeine",
];

/// Resident memory of this process in MiB, from `/proc/self/status`.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn question(n: usize) -> ChatParams {
    let topic = TOPICS[n % TOPICS.len()];
    ChatParams {
        messages: vec![ChatTurn::new(
            "user",
            &format!(
                "Question {n}: what should I know about {topic} on day {}?",
                n / 8
            ),
        )],
        temperature: Some(0.0),
        max_tokens: Some(64),
        n: 1,
        ..Default::default()
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let home = std::env::var("FERROTUNE_HOME").unwrap_or_else(|_| "target/ferrotune-home".into());
    let base_dir = std::env::var("BASE_DIR").map_or_else(
        |_| PathBuf::from(home).join("models/smollm2-135m-instruct"),
        PathBuf::from,
    );
    let prefix_cache = std::env::var("PREFIX_CACHE").is_ok_and(|v| v == "on");
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let engine = Engine::start(EngineOptions::Mistral(MistralOptions {
        base_dir,
        base_name: "base".into(),
        max_resident: 1,
        max_num_seqs: 16,
        dtype: ferrotune::config::serving_dtype(candle_core::DType::F32),
        force_cpu: true,
        isq: None,
        paged_kv_tokens: None,
        prefix_cache,
    }))
    .await?;
    let start_rss = rss_mib();
    println!("round=0 requests=0 rss_mib={start_rss:.0}");
    let (mut sent, mut tokens_all, started_all) = (0, 0, Instant::now());
    let mut last_rss = start_rss;
    for round in 1..=rounds {
        let started = Instant::now();
        let mut tokens = 0;
        for _ in 0..PER_ROUND / AT_ONCE {
            let batch =
                (sent..sent + AT_ONCE).map(|n| completion_tokens(&engine, "base", question(n)));
            tokens += futures_util::future::join_all(batch)
                .await
                .into_iter()
                .flatten()
                .sum::<usize>();
            sent += AT_ONCE;
        }
        tokens_all += tokens;
        last_rss = rss_mib();
        let rate = tokens as f64 / started.elapsed().as_secs_f64();
        println!("round={round} requests={sent} rss_mib={last_rss:.0} tok_s={rate:.1}");
    }
    let rate = tokens_all as f64 / started_all.elapsed().as_secs_f64();
    println!(
        "summary prefix_cache={} requests={sent} start_rss_mib={start_rss:.0} end_rss_mib={last_rss:.0} \
         growth_mib={:.0} tok_s={rate:.1}",
        if prefix_cache { "on" } else { "off" },
        last_rss - start_rss
    );
    Ok(())
}
