//! Rendering engine results as OpenAI objects: a `chat.completion`, or the SSE stream of
//! `chat.completion.chunk`s (role first, content deltas, a finish chunk per choice, an optional
//! usage chunk, then `data: [DONE]`). An error after the stream started is one `data: {"error"}`
//! event. Dropping the stream (client gone) drops the engine channel, which cancels generation.

use std::collections::VecDeque;

use crate::serve::Generation;
use crate::serve::events::{Answer, Event, TokenLogprob, Usage};
use actix_web::web::Bytes;
use futures_util::Stream;
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

/// The engine's usage in OpenAI's shape.
pub fn usage(u: &Usage) -> CompletionUsage {
    CompletionUsage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        total_tokens: u.prompt_tokens + u.completion_tokens,
    }
}

fn logprob(l: &TokenLogprob) -> ChatCompletionTokenLogprob {
    ChatCompletionTokenLogprob {
        token: l.token.clone(),
        logprob: f64::from(l.logprob),
        bytes: l.bytes.clone(),
        top_logprobs: l
            .top
            .iter()
            .map(|t| TopLogprob {
                token: t.token.clone(),
                bytes: t.bytes.clone(),
                logprob: f64::from(t.logprob),
            })
            .collect(),
    }
}

fn logprobs(l: &Option<Vec<TokenLogprob>>) -> Option<ChoiceLogprobs> {
    l.as_ref().map(|l| ChoiceLogprobs {
        content: Some(l.iter().map(logprob).collect()),
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
pub fn completion_from(done: Answer, model: &str) -> CreateChatCompletionResponse {
    CreateChatCompletionResponse {
        id: completion_id(),
        object: "chat.completion",
        created: now(),
        model: model.to_owned(),
        choices: done
            .choices
            .iter()
            .enumerate()
            .map(|(index, c)| ChatCompletionChoice {
                index,
                message: if c.tool_calls.is_empty() {
                    ChatCompletionResponseMessage {
                        role: "assistant",
                        content: Some(c.text.clone()),
                        refusal: None,
                        tool_calls: None,
                    }
                } else {
                    ChatCompletionResponseMessage {
                        role: "assistant",
                        content: None,
                        refusal: None,
                        tool_calls: Some(tool_calls(&c.tool_calls)),
                    }
                },
                logprobs: logprobs(&c.logprobs),
                finish_reason: c.finish_reason.as_str().to_owned(),
            })
            .collect(),
        usage: usage(&done.usage),
        system_fingerprint: Some(SYSTEM_FINGERPRINT.to_owned()),
        ensemble: None,
    }
}

/// The `system_fingerprint` of non-streamed answers.
pub const SYSTEM_FINGERPRINT: &str = concat!("fp_ferrotune_", env!("CARGO_PKG_VERSION"));

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

    fn finish(&mut self, final_usage: &Usage) {
        if self.include_usage {
            self.event(Vec::new(), Some(usage(final_usage)));
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

    /// The role chunk of every choice, before the first piece.
    fn start(&mut self) {
        if !self.started {
            self.started = true;
            let first: Vec<ChunkChoice> = (0..self.n.max(1))
                .map(|i| ChunkChoice::new(i, ChunkDelta::first(), None))
                .collect();
            self.event(first, None);
        }
    }

    fn on_event(&mut self, event: Option<Event>) {
        match event {
            Some(Event::Text {
                choice,
                text,
                logprobs,
            }) => {
                self.start();
                if !text.is_empty() {
                    let mut c = ChunkChoice::new(choice, ChunkDelta::text(&text), None);
                    c.logprobs = (!logprobs.is_empty()).then(|| ChoiceLogprobs {
                        content: Some(logprobs.iter().map(logprob).collect()),
                        refusal: None,
                    });
                    self.event(vec![c], None);
                }
            }
            Some(Event::ToolCalls { choice, calls }) => {
                self.start();
                let pieces = calls.iter().enumerate();
                for piece in pieces.flat_map(|(i, call)| tool_call_pieces(i, call)) {
                    let delta = ChunkDelta {
                        tool_calls: Some(vec![piece]),
                        ..ChunkDelta::default()
                    };
                    self.event(vec![ChunkChoice::new(choice, delta, None)], None);
                }
            }
            Some(Event::Finished { choice, reason }) => {
                self.start();
                let done = ChunkChoice::new(choice, ChunkDelta::default(), Some(reason.as_str()));
                self.event(vec![done], None);
            }
            Some(Event::Done(u)) => self.finish(&u),
            Some(Event::Failed(e)) => self.error(e.to_string()),
            None => self.error("the generation ended without finishing".to_owned()),
        }
    }
}

/// What the stream needs to know about its request.
#[derive(Debug, Clone, Copy)]
pub struct StreamShape {
    /// Send `usage` (null on every chunk, then a final usage chunk).
    pub include_usage: bool,
    /// Choices.
    pub n: usize,
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
            s.on_event(next);
        }
    })
}
