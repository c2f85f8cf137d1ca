//! Rendering engine results as OpenAI objects: a `chat.completion`, or the SSE stream of
//! `chat.completion.chunk`s (role first, content deltas, a finish chunk per choice, an optional
//! usage chunk, then `data: [DONE]`). An error after the stream started is one `data: {"error"}`
//! event. Dropping the stream (client gone) drops the engine channel, which cancels generation.

use std::collections::VecDeque;

use actix_web::web::Bytes;
use futures_util::Stream;
use mistralrs::core::{ChatCompletionResponse, Logprobs, Response, ResponseLogprob, Usage};

use crate::serve::Generation;
use rand::Rng;
use rand::distributions::Alphanumeric;
use serde::Serialize;

use super::tool_calls::{tool_call_pieces, tool_calls};
use super::types::{
    ChatCompletionChoice, ChatCompletionChunk, ChatCompletionResponseMessage,
    ChatCompletionTokenLogprob, ChoiceLogprobs, ChunkChoice, ChunkDelta, CompletionUsage,
    CreateChatCompletionResponse, TopLogprob,
};
use crate::api::error::{ErrorObject, ErrorResponse};

fn completion_id() -> String {
    random_id("chatcmpl")
}

/// `{prefix}-` and 24 random letters and digits.
pub fn random_id(prefix: &str) -> String {
    let body: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("{prefix}-{body}")
}

/// Unix seconds.
pub fn now() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

/// The engine's finish reason in OpenAI's words.
pub fn finish_reason(raw: &str) -> &'static str {
    match raw {
        "length" => "length",
        "tool_calls" => "tool_calls",
        "content_filter" => "content_filter",
        _ => "stop",
    }
}

/// The engine's usage in OpenAI's shape.
pub fn usage(u: &Usage) -> CompletionUsage {
    CompletionUsage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        total_tokens: u.prompt_tokens + u.completion_tokens,
    }
}

fn logprob(l: &ResponseLogprob) -> ChatCompletionTokenLogprob {
    ChatCompletionTokenLogprob {
        token: l.token.clone(),
        logprob: f64::from(l.logprob),
        bytes: l
            .bytes
            .clone()
            .unwrap_or_else(|| l.token.as_bytes().to_vec()),
        top_logprobs: l
            .top_logprobs
            .iter()
            .map(|t| {
                // The engine gives the token's text in `bytes` and its id in `token`.
                let text = t.bytes.clone().unwrap_or_default();
                TopLogprob {
                    bytes: text.as_bytes().to_vec(),
                    token: text,
                    logprob: f64::from(t.logprob),
                }
            })
            .collect(),
    }
}

fn logprobs(l: &Option<Logprobs>) -> Option<ChoiceLogprobs> {
    l.as_ref().map(|l| ChoiceLogprobs {
        content: l.content.as_ref().map(|c| c.iter().map(logprob).collect()),
        refusal: None,
    })
}

/// A 200 `text/event-stream` response of `events`.
pub fn sse_response(
    events: impl Stream<Item = Result<Bytes, actix_web::Error>> + 'static,
) -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .streaming(events)
}

/// One `data: …` event.
pub fn sse_data(payload: &impl Serialize) -> Bytes {
    let mut buf = b"data: ".to_vec();
    serde_json::to_writer(&mut buf, payload).expect("SSE payloads serialize to JSON");
    buf.extend_from_slice(b"\n\n");
    Bytes::from(buf)
}

/// A non-streaming response.
pub fn completion_from(done: ChatCompletionResponse, model: &str) -> CreateChatCompletionResponse {
    CreateChatCompletionResponse {
        id: completion_id(),
        object: "chat.completion",
        created: now(),
        model: model.to_owned(),
        choices: done
            .choices
            .iter()
            .map(|c| ChatCompletionChoice {
                index: c.index,
                message: match &c.message.tool_calls {
                    Some(calls) if !calls.is_empty() => ChatCompletionResponseMessage {
                        role: "assistant",
                        content: None,
                        refusal: None,
                        tool_calls: Some(tool_calls(calls)),
                    },
                    _ => ChatCompletionResponseMessage {
                        role: "assistant",
                        content: Some(c.message.content.clone().unwrap_or_default()),
                        refusal: None,
                        tool_calls: None,
                    },
                },
                logprobs: logprobs(&c.logprobs),
                finish_reason: finish_reason(&c.finish_reason).to_owned(),
            })
            .collect(),
        usage: usage(&done.usage),
        system_fingerprint: Some(done.system_fingerprint),
        ensemble: None,
    }
}

struct StreamState {
    generation: Generation,
    id: String,
    created: u64,
    model: String,
    include_usage: bool,
    n: usize,
    pending: VecDeque<Bytes>,
    started: bool,
    done: bool,
    /// Token deltas seen per choice, and which choices sent their finish chunk.
    counts: Vec<usize>,
    finished: Vec<bool>,
    max_tokens: Option<usize>,
    prompt_tokens: Option<usize>,
}

impl StreamState {
    /// Queue a chunk; `usage` is sent (null when `None`) only with `include_usage`.
    fn event(&mut self, choices: Vec<ChunkChoice>, usage: Option<CompletionUsage>) {
        let chunk = ChatCompletionChunk {
            id: self.id.clone(),
            object: "chat.completion.chunk",
            created: self.created,
            model: self.model.clone(),
            system_fingerprint: None,
            choices,
            usage: self.include_usage.then_some(usage),
            ensemble: None,
        };
        self.pending.push_back(sse_data(&chunk));
    }

    fn finish(&mut self, final_usage: Option<&Usage>) {
        if self.include_usage {
            self.event(Vec::new(), final_usage.map(usage));
        }
        self.pending
            .push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        self.done = true;
    }

    /// End the stream with one error event.
    fn error(&mut self, cause: String) {
        self.pending.push_back(failure_event(&self.model, &cause));
        self.done = true;
    }

    fn on_response(&mut self, response: Option<Response>) {
        match response {
            Some(Response::Chunk(chunk)) => {
                if !self.started {
                    self.started = true;
                    let first: Vec<ChunkChoice> = (0..self.n.max(1))
                        .map(|i| ChunkChoice::new(i, ChunkDelta::first(), None))
                        .collect();
                    self.event(first, None);
                }
                for c in &chunk.choices {
                    if let Some(n) = self.counts.get_mut(c.index) {
                        *n += 1;
                    }
                    if let Some(text) = c.delta.content.as_ref().filter(|t| !t.is_empty()) {
                        let mut choice = ChunkChoice::new(c.index, ChunkDelta::text(text), None);
                        choice.logprobs = c.logprobs.as_ref().map(|l| ChoiceLogprobs {
                            content: Some(vec![logprob(l)]),
                            refusal: None,
                        });
                        self.event(vec![choice], None);
                    }
                    let calls = c.delta.tool_calls.iter().flatten().enumerate();
                    for piece in calls.flat_map(|(i, call)| tool_call_pieces(i, call)) {
                        let delta = ChunkDelta {
                            tool_calls: Some(vec![piece]),
                            ..ChunkDelta::default()
                        };
                        self.event(vec![ChunkChoice::new(c.index, delta, None)], None);
                    }
                    if let Some(reason) = &c.finish_reason {
                        if let Some(f) = self.finished.get_mut(c.index) {
                            *f = true;
                        }
                        let reason = Some(finish_reason(reason));
                        let done = ChunkChoice::new(c.index, ChunkDelta::default(), reason);
                        self.event(vec![done], None);
                    }
                }
                if let Some(u) = &chunk.usage {
                    self.finish(Some(u));
                }
            }
            Some(Response::Done(done)) => self.finish(Some(&done.usage)),
            Some(Response::ModelError(msg, _)) => self.error(format!("model error: {msg}")),
            Some(Response::ValidationError(e)) | Some(Response::InternalError(e)) => {
                self.error(e.to_string())
            }
            Some(_) => self.error("unexpected engine response".to_owned()),
            None => self.closed_early(),
        }
    }

    /// The engine closed the channel without a final chunk: it does so when the last token is
    /// an incomplete UTF-8 sequence (nothing to send). Finish the open choices and report the
    /// usage we can account for.
    fn closed_early(&mut self) {
        let mut completion = 0;
        for i in 0..self.n.max(1) {
            let seen = self.counts.get(i).copied().unwrap_or(0);
            if self.finished.get(i).copied().unwrap_or(true) {
                completion += seen;
                continue;
            }
            // The swallowed last token counts too.
            completion += seen + 1;
            let reason = crate::domain::finish::unreported_finish_reason(seen + 1, self.max_tokens);
            let choice = ChunkChoice::new(i, ChunkDelta::default(), Some(reason));
            self.event(vec![choice], None);
        }
        let usage = self.prompt_tokens.map(|p| Usage {
            completion_tokens: completion,
            prompt_tokens: p,
            total_tokens: p + completion,
            avg_tok_per_sec: 0.0,
            avg_prompt_tok_per_sec: 0.0,
            avg_compl_tok_per_sec: 0.0,
            total_time_sec: 0.0,
            total_prompt_time_sec: 0.0,
            total_completion_time_sec: 0.0,
        });
        self.finish(usage.as_ref());
    }
}

/// What the stream needs to know about its request.
#[derive(Debug, Clone, Copy)]
pub struct StreamShape {
    /// Send `usage` (null on every chunk, then a final usage chunk).
    pub include_usage: bool,
    /// Choices.
    pub n: usize,
    /// The token limit, if any.
    pub max_tokens: Option<usize>,
    /// Prompt tokens, for the usage chunk if the engine does not report it.
    pub prompt_tokens: Option<usize>,
}

/// The error event that ends a stream whose generation failed: the cause is logged, the client
/// sees a fixed sentence (never engine internals or a backtrace).
pub fn failure_event(model: &str, cause: &str) -> Bytes {
    tracing::error!(%model, %cause, "generation failed mid-stream");
    sse_data(&ErrorResponse {
        error: ErrorObject {
            message: "The model failed while generating this answer; try again".to_owned(),
            kind: "server_error".to_owned(),
            param: None,
            code: None,
        },
    })
}

/// The cause logged for a generation whose engine died under it.
pub const ENGINE_DIED: &str =
    "the engine stopped mid-generation (mistral.rs panicked; it restarts)";

/// The SSE body of a streaming completion.
pub fn sse_stream(
    generation: Generation,
    model: String,
    shape: StreamShape,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>> {
    let state = StreamState {
        generation,
        id: completion_id(),
        created: now(),
        model,
        include_usage: shape.include_usage,
        n: shape.n,
        pending: VecDeque::new(),
        started: false,
        done: false,
        counts: vec![0; shape.n.max(1)],
        finished: vec![false; shape.n.max(1)],
        max_tokens: shape.max_tokens,
        prompt_tokens: shape.prompt_tokens,
    };
    futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if let Some(bytes) = s.pending.pop_front() {
                return Some((Ok(bytes), s));
            }
            if s.done {
                return None;
            }
            let next = s.generation.recv().await;
            if next.is_none() && s.generation.engine_died().await {
                s.error(ENGINE_DIED.to_owned());
            } else {
                s.on_response(next);
            }
        }
    })
}
