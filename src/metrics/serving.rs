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
    /// Prompt tokens the caller counted itself, for streams that end without usage (legacy
    /// completions always; chat when the engine closes the channel early).
    prompt_tokens: Option<usize>,
    /// The engine's usage reported the prompt.
    prompt_counted: bool,
    /// Choices requested, finish reasons seen, streamed tokens, and the token limit: a stream the
    /// engine closes early (its last token an incomplete UTF-8 sequence) still finishes its
    /// choices, as the response renderers do.
    choices: usize,
    reasons_seen: usize,
    streamed: usize,
    max_tokens: Option<usize>,
    /// Moved from waiting to running (the first response arrived).
    started: bool,
    finished: bool,
}

impl GenerationMetrics {
    /// A generation of `choices` choices of at most `max_tokens` tokens just submitted to
    /// `model`: counted as waiting.
    pub fn submitted(model: &str, choices: usize, max_tokens: Option<usize>) -> Self {
        global().waiting.with_label_values(&[model]).inc();
        Self {
            model: model.to_owned(),
            submitted: Instant::now(),
            last_token: None,
            prompt_tokens: None,
            prompt_counted: false,
            choices: choices.max(1),
            reasons_seen: 0,
            streamed: 0,
            max_tokens,
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
            // A streamed chunk holds one token per choice; tokens are counted as they arrive
            // (the engine may end a stream without usage).
            Response::Chunk(c) => {
                self.tokens_at(now, c.choices.len());
                self.finish(
                    c.choices
                        .iter()
                        .filter_map(|ch| ch.finish_reason.as_deref()),
                );
                if let Some(u) = &c.usage {
                    self.count_prompt(u.prompt_tokens);
                    self.end(now);
                }
            }
            Response::CompletionChunk(c) => {
                self.tokens_at(now, c.choices.len());
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
        self.streamed += tokens;
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

    /// The engine closed the channel: the generation is over whether or not it said so. Choices
    /// left open swallowed their last token; they ended at the limit or on a stop.
    pub fn closed(&mut self) {
        let open = self.choices.saturating_sub(self.reasons_seen);
        if self.started && !self.finished && open > 0 {
            let per_choice = self.streamed / self.choices + 1;
            let reason =
                crate::domain::finish::unreported_finish_reason(per_choice, self.max_tokens);
            self.finish(std::iter::repeat_n(reason, open));
        }
        self.end(Instant::now());
    }

    fn finish<'a>(&mut self, reasons: impl Iterator<Item = &'a str>) {
        let m = global();
        for reason in reasons {
            self.reasons_seen += 1;
            m.request_success
                .with_label_values(&[self.model.as_str(), reason])
                .inc();
        }
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
