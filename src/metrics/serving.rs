//! One generation's serving metrics, fed by every response the engine sends for it: waiting until
//! the first token, then running; time to first token, inter-token gaps, end-to-end latency,
//! tokens and finish reasons.

use std::time::Instant;

use mistralrs::core::{Response, Usage};

use super::global;

/// Follows one generation from submission to its last response (or until it is dropped).
#[derive(Debug)]
pub struct GenerationMetrics {
    model: String,
    submitted: Instant,
    last_token: Option<Instant>,
    /// Prompt tokens the caller counted itself (streamed legacy completions carry no usage).
    prompt_tokens: Option<usize>,
    /// Moved from waiting to running (the first response arrived).
    started: bool,
    finished: bool,
}

impl GenerationMetrics {
    /// A generation just submitted to `model`: counted as waiting.
    pub fn submitted(model: &str) -> Self {
        global().waiting.with_label_values(&[model]).inc();
        Self {
            model: model.to_owned(),
            submitted: Instant::now(),
            last_token: None,
            prompt_tokens: None,
            started: false,
            finished: false,
        }
    }

    /// The prompt's token count, for responses that do not report usage.
    pub fn set_prompt_tokens(&mut self, tokens: usize) {
        self.prompt_tokens = Some(tokens);
    }

    /// Account for one response from the engine.
    pub fn observe(&mut self, response: &Response) {
        let now = Instant::now();
        if !self.started {
            self.started = true;
            let m = global();
            m.waiting.with_label_values(&[&self.model]).dec();
            m.running.with_label_values(&[&self.model]).inc();
        }
        match response {
            Response::Chunk(c) => {
                let tokens = c.choices.iter().filter(|ch| ch.finish_reason.is_none());
                // The last chunk's usage counts the tokens.
                self.tokens_at(now, tokens.count(), false);
                self.finish(c.choices.iter().filter_map(|ch| ch.finish_reason.as_deref()));
                if let Some(u) = &c.usage {
                    self.usage(u, now);
                }
            }
            Response::CompletionChunk(c) => {
                let tokens = c.choices.iter().filter(|ch| ch.finish_reason.is_none());
                // No usage comes with completion chunks: count tokens as they arrive.
                self.tokens_at(now, tokens.count(), true);
                let reasons: Vec<&str> = c
                    .choices
                    .iter()
                    .filter_map(|ch| ch.finish_reason.as_deref())
                    .collect();
                if !reasons.is_empty() {
                    self.finish(reasons.into_iter());
                    self.end(now);
                }
            }
            Response::Done(d) => {
                self.whole(&d.usage, now);
                self.finish(d.choices.iter().map(|ch| ch.finish_reason.as_str()));
            }
            Response::CompletionDone(d) => {
                self.whole(&d.usage, now);
                self.finish(d.choices.iter().map(|ch| ch.finish_reason.as_str()));
            }
            _ => self.end(now),
        }
    }

    /// `tokens` streamed tokens arrived at `now` (`count`: add them to the generated total).
    fn tokens_at(&mut self, now: Instant, tokens: usize, count: bool) {
        if tokens == 0 {
            return;
        }
        let m = global();
        let label = [self.model.as_str()];
        match self.last_token {
            None => m
                .time_to_first_token
                .with_label_values(&label)
                .observe((now - self.submitted).as_secs_f64()),
            Some(last) => m
                .inter_token_latency
                .with_label_values(&label)
                .observe((now - last).as_secs_f64()),
        }
        if count {
            m.generation_tokens
                .with_label_values(&label)
                .inc_by(tokens as u64);
        }
        self.last_token = Some(now);
    }

    /// A non-streamed result: its first-token time and token gaps come from the engine's timings.
    fn whole(&mut self, u: &Usage, now: Instant) {
        let m = global();
        let label = [self.model.as_str()];
        let total = (now - self.submitted).as_secs_f64();
        let decode = f64::from(u.total_completion_time_sec).clamp(0.0, total);
        m.time_to_first_token
            .with_label_values(&label)
            .observe(total - decode);
        if u.completion_tokens > 1 {
            let gap = decode / (u.completion_tokens - 1) as f64;
            let itl = m.inter_token_latency.with_label_values(&label);
            (1..u.completion_tokens).for_each(|_| itl.observe(gap));
        }
        self.last_token = Some(now);
        self.usage(u, now);
    }

    fn usage(&mut self, u: &Usage, now: Instant) {
        let m = global();
        let label = [self.model.as_str()];
        m.prompt_tokens
            .with_label_values(&label)
            .inc_by(u.prompt_tokens as u64);
        m.generation_tokens
            .with_label_values(&label)
            .inc_by(u.completion_tokens as u64);
        self.end(now);
    }

    fn finish<'a>(&self, reasons: impl Iterator<Item = &'a str>) {
        let m = global();
        for reason in reasons {
            m.request_success
                .with_label_values(&[self.model.as_str(), reason])
                .inc();
        }
    }

    /// The generation is over: its end-to-end time (once) and the streamed prompt count.
    fn end(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        let m = global();
        let label = [self.model.as_str()];
        m.e2e_latency
            .with_label_values(&label)
            .observe((now - self.submitted).as_secs_f64());
        if let Some(p) = self.prompt_tokens {
            m.prompt_tokens.with_label_values(&label).inc_by(p as u64);
        }
        self.finished = true;
    }
}

impl Drop for GenerationMetrics {
    fn drop(&mut self) {
        let m = global();
        let gauge = if self.started { &m.running } else { &m.waiting };
        gauge.with_label_values(&[&self.model]).dec();
    }
}
