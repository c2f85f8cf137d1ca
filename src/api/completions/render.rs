//! Rendering legacy completions: one `text_completion` object, or its SSE stream (a chunk per
//! token and choice, `finish_reason` on each choice's last chunk, an optional usage chunk, then
//! `data: [DONE]`). Several prompts stream interleaved, their choices numbered prompt × n + i.

use actix_web::web::Bytes;
use futures_util::{Stream, StreamExt};
use mistralrs::core::{CompletionResponse, Logprobs, Response, ResponseLogprob};
use serde_json::{Map, Value};

use super::types::{CompletionChoice, CompletionLogprobs, CreateCompletionResponse};
use crate::api::chat::render::{
    ENGINE_DIED, failure_event, finish_reason, now, random_id, sse_data, usage,
};
use crate::api::chat::types::CompletionUsage;
use crate::serve::Generation;

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
    /// Each prompt's token limit.
    pub max_tokens: Vec<usize>,
}

fn legacy_logprobs(tokens: &[ResponseLogprob], offset: usize) -> CompletionLogprobs {
    let mut out = CompletionLogprobs::default();
    let mut at = offset;
    for t in tokens {
        out.tokens.push(t.token.clone());
        out.token_logprobs.push(f64::from(t.logprob));
        out.text_offset.push(at);
        at += t.token.len();
        let alternatives: Map<String, Value> = t
            .top_logprobs
            .iter()
            .map(|a| {
                // The engine gives an alternative's text in `bytes` and its id in `token`.
                let text = a.bytes.clone().unwrap_or_default();
                (text, Value::from(f64::from(a.logprob)))
            })
            .collect();
        out.top_logprobs.push(alternatives);
    }
    out
}

fn all_logprobs(l: &Option<Logprobs>) -> Option<CompletionLogprobs> {
    l.as_ref()
        .map(|l| legacy_logprobs(l.content.as_deref().unwrap_or_default(), 0))
}

/// A non-streaming response: the prompts' results in order.
pub fn completion_response(
    done: Vec<CompletionResponse>,
    shape: &CompletionShape,
) -> CreateCompletionResponse {
    let mut choices = Vec::new();
    let mut total = CompletionUsage {
        prompt_tokens: 0,
        completion_tokens: 0,
        total_tokens: 0,
    };
    let mut fingerprint = None;
    for (i, d) in done.into_iter().enumerate() {
        let echo = shape.echo.as_ref().map(|p| p[i].as_str()).unwrap_or("");
        let mut these: Vec<CompletionChoice> = d
            .choices
            .iter()
            .map(|c| CompletionChoice {
                text: format!("{echo}{}", c.text),
                index: i * shape.n + c.index,
                logprobs: all_logprobs(&c.logprobs),
                finish_reason: Some(finish_reason(&c.finish_reason)),
            })
            .collect();
        these.sort_by_key(|c| c.index);
        choices.extend(these);
        let u = usage(&d.usage);
        total.prompt_tokens += u.prompt_tokens;
        total.completion_tokens += u.completion_tokens;
        total.total_tokens += u.total_tokens;
        fingerprint = Some(d.system_fingerprint);
    }
    CreateCompletionResponse {
        id: random_id("cmpl"),
        object: "text_completion",
        created: now(),
        model: shape.model.clone(),
        choices,
        usage: Some(total),
        system_fingerprint: fingerprint,
    }
}

struct StreamState {
    shape: CompletionShape,
    id: String,
    created: u64,
    /// Chunks sent per choice, and how each choice finished.
    counts: Vec<usize>,
    finished: Vec<Option<&'static str>>,
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

    /// The events for one engine answer of prompt `prompt`; `true` ends the stream (an error).
    /// `None`: the generation's engine died under it.
    fn on_response(
        &mut self,
        prompt: usize,
        response: Option<Response>,
        out: &mut Vec<Bytes>,
    ) -> bool {
        let Some(Response::CompletionChunk(chunk)) = response else {
            let cause = match response {
                Some(Response::CompletionModelError(m, _) | Response::ModelError(m, _)) => m,
                Some(Response::ValidationError(e) | Response::InternalError(e)) => e.to_string(),
                Some(_) => "unexpected engine response".to_owned(),
                None => ENGINE_DIED.to_owned(),
            };
            out.push(failure_event(&self.shape.model, &cause));
            return true;
        };
        for c in chunk.choices {
            let index = prompt * self.shape.n + c.index;
            let Some(seen) = self.counts.get(index).copied() else {
                continue;
            };
            let echo = match (&self.shape.echo, seen) {
                (Some(p), 0) => p[prompt].as_str(),
                _ => "",
            };
            self.counts[index] += 1;
            let reason = c.finish_reason.as_deref().map(finish_reason);
            if reason.is_some() {
                self.finished[index] = reason;
            }
            let logprobs = c.logprobs.map(|l| legacy_logprobs(&[l], 0));
            let choice = CompletionChoice {
                text: format!("{echo}{}", c.text),
                index,
                logprobs,
                finish_reason: reason,
            };
            out.push(self.chunk(vec![choice], None));
        }
        false
    }

    fn limit(&self, index: usize) -> usize {
        self.shape.max_tokens[index / self.shape.n.max(1)]
    }

    /// Every prompt's channel closed: finish the choices the engine left open (it closes
    /// without a last chunk when the last token is an incomplete UTF-8 sequence), then usage
    /// and `[DONE]`.
    fn end(&mut self, out: &mut Vec<Bytes>) {
        for index in 0..self.counts.len() {
            if self.finished[index].is_some() {
                continue;
            }
            let limit = self.limit(index);
            // The swallowed last token counts too.
            let reason = if self.counts[index] + 1 >= limit {
                "length"
            } else {
                "stop"
            };
            self.counts[index] += 1;
            self.finished[index] = Some(reason);
            // What the non-streamed text shows for those bytes.
            let choice = CompletionChoice {
                text: char::REPLACEMENT_CHARACTER.to_string(),
                index,
                logprobs: None,
                finish_reason: Some(reason),
            };
            out.push(self.chunk(vec![choice], None));
        }
        if self.shape.include_usage {
            // Completion chunks carry no usage: a choice cut at its limit used all of it; one
            // that stopped used a token per chunk (a chunk can hold two tokens when the first
            // ended inside a UTF-8 character, so this may count short there).
            let completion_tokens = (0..self.counts.len())
                .map(|i| match self.finished[i] {
                    Some("length") => self.limit(i),
                    _ => self.counts[i],
                })
                .sum();
            let usage = CompletionUsage {
                prompt_tokens: self.shape.prompt_tokens,
                completion_tokens,
                total_tokens: self.shape.prompt_tokens + completion_tokens,
            };
            out.push(self.chunk(Vec::new(), Some(usage)));
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
            // Each generation's responses, then `None` once if its engine died under it.
            futures_util::stream::unfold(Some(g), move |g| async move {
                let mut g = g?;
                match g.recv().await {
                    Some(r) => Some(((i, Some(r)), Some(g))),
                    None if g.engine_died().await => Some(((i, None), None)),
                    None => None,
                }
            })
            .boxed()
        }));
    let state = StreamState {
        shape,
        id: random_id("cmpl"),
        created: now(),
        counts: vec![0; choices],
        finished: vec![None; choices],
    };
    futures_util::stream::unfold(
        (merged, state, false),
        |(mut merged, mut state, ended)| async move {
            if ended {
                return None;
            }
            let mut out = Vec::new();
            let ended = match merged.next().await {
                Some((prompt, response)) => state.on_response(prompt, response, &mut out),
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
