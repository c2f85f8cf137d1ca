//! Rendering legacy completions: one `text_completion` object, or its SSE stream (a chunk per
//! token and choice, `finish_reason` on each choice's last chunk, an optional usage chunk, then
//! `data: [DONE]`). Several prompts stream interleaved, their choices numbered prompt × n + i.

use actix_web::web::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::{Map, Value};

use super::types::{CompletionChoice, CompletionLogprobs, CreateCompletionResponse};
use crate::api::chat::render::{
    SYSTEM_FINGERPRINT, failure_event, now, random_id, sse_data, usage,
};
use crate::api::chat::types::CompletionUsage;
use crate::serve::Generation;
use crate::serve::events::{Answer, Event, TokenLogprob};

/// What rendering needs to know about the request.
#[derive(Debug, Clone)]
pub struct CompletionShape {
    /// The model asked for.
    pub model: String,
    /// Choices per prompt.
    pub n: usize,
    /// The prompts, when `echo`.
    pub echo: Option<Vec<String>>,
    /// Stream a final usage chunk.
    pub include_usage: bool,
    /// Prompt tokens of all prompts.
    pub prompt_tokens: usize,
}

fn legacy_logprobs(tokens: &[TokenLogprob], offset: usize) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut at = offset;
    for t in tokens {
        out.tokens.push(t.token.clone());
        out.token_logprobs.push(f64::from(t.logprob));
        out.text_offset.push(at);
        at += t.token.len();
        let alternatives: Map<String, Value> = t
            .top
            .iter()
            .map(|a| (a.token.clone(), Value::from(f64::from(a.logprob))))
            .collect();
        out.top_logprobs.push(alternatives);
    }
    out
}

fn all_logprobs(l: &Option<Vec<TokenLogprob>>) -> Option<CompletionLogprobs> {
    l.as_ref().map(|l| legacy_logprobs(l, 0))
}

/// A non-streaming response: the prompts' results in order.
pub fn completion_response(done: Vec<Answer>, shape: &CompletionShape) -> CreateCompletionResponse {
    let mut choices = Vec::new();
    let mut total = CompletionUsage {
        prompt_tokens: 0,
        completion_tokens: 0,
        total_tokens: 0,
    };
    for (i, d) in done.into_iter().enumerate() {
        let echo = shape.echo.as_ref().map(|p| p[i].as_str()).unwrap_or("");
        let mut these: Vec<CompletionChoice> = d
            .choices
            .iter()
            .enumerate()
            .map(|(index, c)| CompletionChoice {
                text: format!("{echo}{}", c.text),
                index: i * shape.n + index,
                logprobs: all_logprobs(&c.logprobs),
                finish_reason: Some(c.finish_reason.as_str()),
            })
            .collect();
        these.sort_by_key(|c| c.index);
        choices.extend(these);
        let u = usage(&d.usage);
        total.prompt_tokens += u.prompt_tokens;
        total.completion_tokens += u.completion_tokens;
        total.total_tokens += u.total_tokens;
    }
    CreateCompletionResponse {
        id: random_id("cmpl"),
        object: "text_completion",
        created: now(),
        model: shape.model.clone(),
        choices,
        usage: Some(total),
        system_fingerprint: Some(SYSTEM_FINGERPRINT.to_owned()),
    }
}

struct StreamState {
    shape: CompletionShape,
    id: String,
    created: u64,
    /// Chunks sent per choice.
    counts: Vec<usize>,
    /// Usage summed over the prompts' generations.
    usage: CompletionUsage,
}

impl StreamState {
    fn chunk(&self, choices: Vec<CompletionChoice>, usage: Option<CompletionUsage>) -> Bytes {
        sse_data(&CreateCompletionResponse {
            id: self.id.clone(),
            object: "text_completion",
            created: self.created,
            model: self.shape.model.clone(),
            choices,
            usage,
            system_fingerprint: None,
        })
    }

    /// The chunks for one event of prompt `prompt`'s generation; `true` ends the stream (an
    /// error).
    fn on_event(&mut self, prompt: usize, event: Event, out: &mut Vec<Bytes>) -> bool {
        let (choice, text, logprobs, reason) = match event {
            Event::Text {
                choice,
                text,
                logprobs,
            } => (choice, text, logprobs, None),
            Event::Finished { choice, reason } => {
                (choice, String::new(), Vec::new(), Some(reason.as_str()))
            }
            Event::ToolCalls { .. } => return false,
            Event::Done(u) => {
                let u = usage(&u);
                self.usage.prompt_tokens += u.prompt_tokens;
                self.usage.completion_tokens += u.completion_tokens;
                self.usage.total_tokens += u.total_tokens;
                return false;
            }
            Event::Failed(e) => {
                out.push(failure_event(&self.shape.model, &e.to_string()));
                return true;
            }
        };
        let index = prompt * self.shape.n + choice;
        let Some(seen) = self.counts.get(index).copied() else {
            return false;
        };
        let echo = match (&self.shape.echo, seen) {
            (Some(p), 0) => p[prompt].as_str(),
            _ => "",
        };
        self.counts[index] += 1;
        let choice = CompletionChoice {
            text: format!("{echo}{text}"),
            index,
            logprobs: (!logprobs.is_empty()).then(|| legacy_logprobs(&logprobs, 0)),
            finish_reason: reason,
        };
        out.push(self.chunk(vec![choice], None));
        false
    }

    /// Every prompt's generation ended: the usage chunk and `[DONE]`.
    fn end(&mut self, out: &mut Vec<Bytes>) {
        if self.shape.include_usage {
            if self.usage.prompt_tokens == 0 {
                self.usage.prompt_tokens = self.shape.prompt_tokens;
                self.usage.total_tokens = self.shape.prompt_tokens + self.usage.completion_tokens;
            }
            out.push(self.chunk(Vec::new(), Some(self.usage.clone())));
        }
        out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    }
}

/// The SSE body of a streaming completion over the prompts' generations.
pub fn completion_stream(
    generations: Vec<Generation>,
    shape: CompletionShape,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>> {
    let choices = generations.len() * shape.n.max(1);
    let merged =
        futures_util::stream::select_all(generations.into_iter().enumerate().map(|(i, g)| {
            futures_util::stream::unfold(g, move |mut g| async move {
                g.recv().await.map(|event| ((i, event), g))
            })
            .boxed()
        }));
    let state = StreamState {
        shape,
        id: random_id("cmpl"),
        created: now(),
        counts: vec![0; choices],
        usage: CompletionUsage {
            prompt_tokens: 0,
            completion_tokens: 0,
            total_tokens: 0,
        },
    };
    futures_util::stream::unfold(
        (merged, state, false),
        |(mut merged, mut state, ended)| async move {
            if ended {
                return None;
            }
            let mut out = Vec::new();
            let ended = match merged.next().await {
                Some((prompt, event)) => state.on_event(prompt, event, &mut out),
                None => {
                    state.end(&mut out);
                    true
                }
            };
            let bytes: Vec<u8> = out.concat();
            Some((Ok(Bytes::from(bytes)), (merged, state, ended)))
        },
    )
}
