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
use serde_json::{Value, json};

use super::chat_types::{
    ChatCompletionChoice, ChatCompletionResponseMessage, CompletionUsage,
    CreateChatCompletionResponse,
};

fn completion_id() -> String {
    let body: String = rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect();
    format!("chatcmpl-{body}")
}

fn now() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

fn finish_reason(raw: &str) -> String {
    match raw {
        "length" => "length",
        "tool_calls" => "tool_calls",
        "content_filter" => "content_filter",
        _ => "stop",
    }
    .to_owned()
}

fn usage(u: &Usage) -> CompletionUsage {
    CompletionUsage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        total_tokens: u.prompt_tokens + u.completion_tokens,
    }
}

fn logprob(l: &ResponseLogprob) -> Value {
    json!({
        "token": l.token,
        "logprob": l.logprob,
        "bytes": l.bytes.clone().unwrap_or_else(|| l.token.as_bytes().to_vec()),
        "top_logprobs": l.top_logprobs.iter().map(|t| {
            // The engine gives the token's text in `bytes` and its id in `token`.
            let text = t.bytes.clone().unwrap_or_default();
            json!({"token": text, "logprob": t.logprob, "bytes": text.as_bytes()})
        }).collect::<Vec<_>>(),
    })
}

fn logprobs(l: &Option<Logprobs>) -> Option<Value> {
    l.as_ref().map(|l| json!({"content": l.content.as_ref().map(|c| c.iter().map(logprob).collect::<Vec<_>>()), "refusal": null}))
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
                message: ChatCompletionResponseMessage {
                    role: "assistant",
                    content: Some(c.message.content.clone().unwrap_or_default()),
                    refusal: None,
                },
                logprobs: logprobs(&c.logprobs),
                finish_reason: finish_reason(&c.finish_reason),
            })
            .collect(),
        usage: usage(&done.usage),
        system_fingerprint: Some(done.system_fingerprint),
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
}

impl StreamState {
    fn event(&mut self, choices: Value, usage: Option<Value>) {
        let mut chunk = json!({
            "id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model, "system_fingerprint": null, "choices": choices,
        });
        if self.include_usage {
            chunk["usage"] = usage.unwrap_or(Value::Null);
        }
        self.pending
            .push_back(Bytes::from(format!("data: {chunk}\n\n")));
    }

    fn finish(&mut self, final_usage: Option<&Usage>) {
        if self.include_usage {
            let u = final_usage.map(|u| serde_json::to_value(usage(u)).unwrap_or(Value::Null));
            self.event(json!([]), u);
        }
        self.pending
            .push_back(Bytes::from_static(b"data: [DONE]\n\n"));
        self.done = true;
    }

    fn error(&mut self, message: String) {
        let e = json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}});
        self.pending
            .push_back(Bytes::from(format!("data: {e}\n\n")));
        self.done = true;
    }

    fn on_response(&mut self, response: Option<Response>) {
        match response {
            Some(Response::Chunk(chunk)) => {
                if !self.started {
                    self.started = true;
                    let first: Vec<Value> = (0..self.n.max(1))
                        .map(|i| json!({"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}))
                        .collect();
                    self.event(Value::Array(first), None);
                }
                for c in &chunk.choices {
                    if let Some(text) = c.delta.content.as_ref().filter(|t| !t.is_empty()) {
                        let lp = c
                            .logprobs
                            .as_ref()
                            .map(|l| json!({"content": [logprob(l)], "refusal": null}));
                        self.event(json!([{"index": c.index, "delta": {"content": text}, "logprobs": lp, "finish_reason": null}]), None);
                    }
                    if let Some(reason) = &c.finish_reason {
                        self.event(json!([{"index": c.index, "delta": {}, "logprobs": null, "finish_reason": finish_reason(reason)}]), None);
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
            None => self.finish(None),
        }
    }
}

/// The SSE body of a streaming completion.
pub fn sse_stream(
    generation: Generation,
    model: String,
    include_usage: bool,
    n: usize,
) -> impl Stream<Item = Result<Bytes, actix_web::Error>> {
    let state = StreamState {
        generation,
        id: completion_id(),
        created: now(),
        model,
        include_usage,
        n,
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
            let next = s.generation.rx.recv().await;
            s.on_response(next);
        }
    })
}
