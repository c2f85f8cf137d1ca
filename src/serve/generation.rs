//! A generation in progress, whatever engine runs it: the events it reports, its metrics, and
//! the count of generations per model that keeps a model in use from being evicted. Dropping it
//! (finished, or the client went away) drops the engine's channel, which cancels the generation.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use super::ServeError;
use super::events::{Answer, Assembler, Event, FinishReason, Usage};
use super::observe::GenerationMetrics;

/// Generations in flight per model name.
pub(super) type Active = Arc<Mutex<HashMap<String, usize>>>;

/// What a generation was asked for, so it can close itself when its engine ends a stream
/// without a last report (mistral.rs does when the last token is an incomplete UTF-8 sequence).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    /// Choices.
    pub n: usize,
    /// The token limit, if any.
    pub max_tokens: Option<usize>,
    /// Streamed (token by token) rather than answered whole.
    pub stream: bool,
    /// Log-probabilities asked.
    pub logprobs: bool,
    /// A legacy completion (a swallowed last token shows as U+FFFD, as the whole text does).
    pub completion: bool,
}

impl Shape {
    /// The shape of a request with `params`.
    pub fn of(params: &super::ChatParams, stream: bool, completion: bool) -> Self {
        Self {
            n: params.n.max(1),
            max_tokens: params.max_tokens,
            stream,
            logprobs: params.logprobs,
            completion,
        }
    }
}

/// A generation in progress.
pub struct Generation {
    rx: mpsc::UnboundedReceiver<Event>,
    model: String,
    active: Active,
    metrics: GenerationMetrics,
    shape: Shape,
    prompt_tokens: Option<usize>,
    /// Text events per choice, and how each choice ended.
    counts: Vec<usize>,
    finished: Vec<Option<FinishReason>>,
    /// Queued events synthesised at the end, and whether the end was reported.
    closing: std::collections::VecDeque<Event>,
    ended: bool,
}

impl Generation {
    /// A generation of `model` reporting on `rx`, counted in `active`.
    pub(super) fn new(
        rx: mpsc::UnboundedReceiver<Event>,
        model: &str,
        active: Active,
        shape: Shape,
    ) -> Result<Self, ServeError> {
        *active
            .lock()
            .map_err(|e| ServeError::Engine(e.to_string()))?
            .entry(model.to_owned())
            .or_default() += 1;
        let n = shape.n.max(1);
        Ok(Self {
            rx,
            model: model.to_owned(),
            active,
            metrics: GenerationMetrics::submitted(model, shape.stream),
            shape,
            prompt_tokens: None,
            counts: vec![0; n],
            finished: vec![None; n],
            closing: Default::default(),
            ended: false,
        })
    }

    /// The next event; `None` once the generation ended ([`Event::Done`] or [`Event::Failed`]
    /// was the last).
    pub async fn recv(&mut self) -> Option<Event> {
        if self.ended && self.closing.is_empty() {
            return None;
        }
        let event = match self.closing.pop_front() {
            Some(e) => e,
            None => match self.rx.recv().await {
                Some(e) => e,
                None => {
                    self.close_early();
                    self.closing.pop_front()?
                }
            },
        };
        match &event {
            Event::Text { choice, .. } => {
                if let Some(c) = self.counts.get_mut(*choice) {
                    *c += 1;
                }
            }
            Event::Finished { choice, reason } => {
                if let Some(f) = self.finished.get_mut(*choice) {
                    *f = Some(*reason);
                }
            }
            Event::ToolCalls { .. } => {}
            Event::Done(_) | Event::Failed(_) => self.ended = true,
        }
        self.metrics.observe(&event);
        Some(event)
    }

    /// The engine closed the channel without a last report. A stream ends its open choices
    /// and reports the usage it can account for; a whole answer never comes: stopped.
    fn close_early(&mut self) {
        self.ended = true;
        if !self.shape.stream {
            self.closing.push_back(Event::Failed(ServeError::Stopped));
            return;
        }
        let mut completion = 0;
        for i in 0..self.counts.len() {
            let mut seen = self.counts[i];
            let reason = match self.finished[i] {
                Some(reason) => reason,
                None => {
                    // The swallowed last token counts too.
                    seen += 1;
                    if self.shape.completion {
                        self.closing.push_back(Event::Text {
                            choice: i,
                            text: char::REPLACEMENT_CHARACTER.to_string(),
                            logprobs: Vec::new(),
                        });
                    }
                    let reason = match crate::domain::finish::unreported_finish_reason(
                        seen,
                        self.shape.max_tokens,
                    ) {
                        "length" => FinishReason::Length,
                        _ => FinishReason::Stop,
                    };
                    self.closing
                        .push_back(Event::Finished { choice: i, reason });
                    reason
                }
            };
            // A choice cut at its limit used all of it (a piece can hold two tokens when the
            // first ended inside a UTF-8 character, so pieces may count short).
            completion += match (reason, self.shape.max_tokens) {
                (FinishReason::Length, Some(limit)) => limit,
                _ => seen,
            };
        }
        self.closing.push_back(Event::Done(Usage {
            prompt_tokens: self.prompt_tokens.unwrap_or(0),
            completion_tokens: completion,
            decode_seconds: None,
        }));
    }

    /// Wait for the whole answer.
    pub async fn finish(&mut self) -> Result<Answer, ServeError> {
        let mut answer = Assembler::new(self.shape.n, self.shape.logprobs);
        while let Some(event) = self.recv().await {
            if let Some(done) = answer.take(event)? {
                return Ok(done);
            }
        }
        Err(ServeError::Stopped)
    }

    /// The prompt's token count, for the usage of a stream that ends without it.
    pub fn set_prompt_tokens(&mut self, tokens: usize) {
        self.prompt_tokens = Some(tokens);
        self.metrics.set_prompt_tokens(tokens);
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        if let Ok(mut map) = self.active.lock()
            && let Some(n) = map.get_mut(&self.model)
        {
            *n = n.saturating_sub(1);
        }
    }
}
