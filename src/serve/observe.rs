//! One generation's serving metrics, fed by every response the engine sends for it: waiting until
//! the first token, then running; time to first token, inter-token gaps, end-to-end latency,
//! tokens and finish reasons.

use std::time::Instant;

use super::events::{Event, Usage};
use crate::metrics::global;

/// Follows one generation from submission to its last event (or until it is dropped).
#[derive(Debug)]
pub struct GenerationMetrics {
    model: String,
    submitted: Instant,
    last_token: Option<Instant>,
    /// Prompt tokens the caller counted itself, for streams whose usage lacks them.
    prompt_tokens: Option<usize>,
    /// The prompt was counted.
    prompt_counted: bool,
    /// Streamed token by token (each text event is a token); otherwise the answer arrives whole
    /// and the timings come from the engine's usage.
    stream: bool,
    /// Moved from waiting to running (the first event arrived).
    started: bool,
    finished: bool,
}

impl GenerationMetrics {
    /// A generation just submitted to `model`: counted as waiting.
    pub fn submitted(model: &str, stream: bool) -> Self {
        global().waiting.with_label_values(&[model]).inc();
        Self {
            model: model.to_owned(),
            submitted: Instant::now(),
            last_token: None,
            prompt_tokens: None,
            prompt_counted: false,
            stream,
            started: false,
            finished: false,
        }
    }

    /// The prompt's token count, for usage that does not report it.
    pub fn set_prompt_tokens(&mut self, tokens: usize) {
        self.prompt_tokens = Some(tokens);
    }

    /// Account for one event of the generation.
    pub fn observe(&mut self, event: &Event) {
        let now = Instant::now();
        if !self.started {
            self.started = true;
            let m = global();
            m.waiting.with_label_values(&[&self.model]).dec();
            m.running.with_label_values(&[&self.model]).inc();
        }
        match event {
            Event::Text { .. } if self.stream => self.tokens_at(now, 1),
            Event::Text { .. } | Event::ToolCalls { .. } => {}
            Event::Finished { reason, .. } => {
                global()
                    .request_success
                    .with_label_values(&[self.model.as_str(), reason.as_str()])
                    .inc();
            }
            Event::Done(usage) if !self.stream => self.whole(usage, now),
            Event::Done(usage) => {
                if usage.prompt_tokens > 0 {
                    self.count_prompt(usage.prompt_tokens);
                }
                self.end(now);
            }
            Event::Failed(_) => self.end(now),
        }
    }

    /// `tokens` streamed tokens arrived at `now`.
    fn tokens_at(&mut self, now: Instant, tokens: usize) {
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
        m.generation_tokens
            .with_label_values(&label)
            .inc_by(tokens as u64);
        self.last_token = Some(now);
    }

    /// A non-streamed result: its first-token time and token gaps come from the engine's timings.
    fn whole(&mut self, u: &Usage, now: Instant) {
        let m = global();
        let label = [self.model.as_str()];
        let total = (now - self.submitted).as_secs_f64();
        let decode = u.decode_seconds.unwrap_or(0.0).clamp(0.0, total);
        m.time_to_first_token
            .with_label_values(&label)
            .observe(total - decode);
        if u.completion_tokens > 1 {
            let gap = decode / (u.completion_tokens - 1) as f64;
            let itl = m.inter_token_latency.with_label_values(&label);
            (1..u.completion_tokens).for_each(|_| itl.observe(gap));
        }
        self.last_token = Some(now);
        m.generation_tokens
            .with_label_values(&label)
            .inc_by(u.completion_tokens as u64);
        self.count_prompt(u.prompt_tokens);
        self.end(now);
    }

    fn count_prompt(&mut self, tokens: usize) {
        if self.prompt_counted {
            return;
        }
        self.prompt_counted = true;
        global()
            .prompt_tokens
            .with_label_values(&[self.model.as_str()])
            .inc_by(tokens as u64);
    }

    /// The generation is over: its end-to-end time (once), and the prompt from the caller's
    /// count when no usage reported it.
    fn end(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        self.finished = true;
        global()
            .e2e_latency
            .with_label_values(&[self.model.as_str()])
            .observe((now - self.submitted).as_secs_f64());
        if let Some(p) = self.prompt_tokens {
            self.count_prompt(p);
        }
    }
}

impl Drop for GenerationMetrics {
    fn drop(&mut self) {
        let m = global();
        let gauge = if self.started { &m.running } else { &m.waiting };
        gauge.with_label_values(&[&self.model]).dec();
    }
}
