//! Timing helpers for benchmarks and the device check: decode rate and time to first token of
//! one generation through the engine in-process.

use std::time::{Duration, Instant};

use super::events::Event;
use super::{ChatParams, Engine};

/// Completion tokens of one non-streamed generation (`None` when it fails).
pub async fn completion_tokens(engine: &Engine, model: &str, params: ChatParams) -> Option<usize> {
    let mut g = engine.chat(model, params, false).await.ok()?;
    g.finish().await.ok().map(|a| a.usage.completion_tokens)
}

/// Completion tokens per second of one non-streamed generation (`NaN` when it fails).
pub async fn decode_rate(engine: &Engine, model: &str, params: ChatParams) -> f64 {
    let started = Instant::now();
    match completion_tokens(engine, model, params).await {
        Some(tokens) => tokens as f64 / started.elapsed().as_secs_f64(),
        None => f64::NAN,
    }
}

/// Completion tokens per second of `streams` concurrent non-streamed generations together
/// (failed ones count no tokens).
pub async fn total_decode_rate(
    engine: &Engine,
    model: &str,
    params: ChatParams,
    streams: usize,
) -> f64 {
    let started = Instant::now();
    let runs = (0..streams.max(1)).map(|_| completion_tokens(engine, model, params.clone()));
    let tokens: usize = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .sum();
    tokens as f64 / started.elapsed().as_secs_f64()
}

/// One streamed generation: (time to its first chunk, chunks received).
pub async fn stream(engine: &Engine, model: &str, params: ChatParams) -> (Duration, usize) {
    let started = Instant::now();
    let Ok(mut g) = engine.chat(model, params, true).await else {
        return (started.elapsed(), 0);
    };
    let (mut first, mut count) = (None, 0);
    while let Some(event) = g.recv().await {
        match event {
            Event::Text { .. } => {
                first.get_or_insert_with(|| started.elapsed());
                count += 1;
            }
            Event::ToolCalls { .. } => {}
            _ => break,
        }
    }
    (first.unwrap_or_else(|| started.elapsed()), count)
}

/// The text of one non-streamed generation.
pub async fn complete(engine: &Engine, model: &str, params: ChatParams) -> Option<String> {
    let mut g = engine.chat(model, params, false).await.ok()?;
    let answer = g.finish().await.ok()?;
    answer.choices.into_iter().next().map(|c| c.text)
}

/// The median of `v` (`NaN` when empty).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}
