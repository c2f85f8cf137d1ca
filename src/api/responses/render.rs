//! A response taking shape from the engine's events: the response object OpenAI defines, and,
//! for a stream, its semantic events (`response.created`, `response.output_item.added`,
//! `response.output_text.delta` … `response.completed`; on a failure `error` then
//! `response.failed`), each with its `sequence_number`.

use serde_json::{Value, json};

use super::input::item_id;
use super::types::{ResponseObject, ResponseUsage};
use crate::api::chat::render::now;
use crate::serve::events::{Event, FinishReason, TokenLogprob, ToolCallOut, Usage};

/// The message item being written: its place in `output`, its id, its text so far and the
/// log-probabilities of its tokens.
struct OpenMessage {
    index: usize,
    id: String,
    text: String,
    logprobs: Vec<Value>,
}

/// A response being built from events.
pub struct Draft {
    /// The object as it stands.
    pub response: ResponseObject,
    /// Return log-probabilities in `output_text` parts.
    logprobs: bool,
    /// Collect semantic events (a stream).
    streaming: bool,
    /// Events not yet sent.
    pending: Vec<(String, Value)>,
    sequence: u64,
    message: Option<OpenMessage>,
    finish: Option<FinishReason>,
}

/// OpenAI's shape of one token's log-probability.
fn logprob(l: &TokenLogprob) -> Value {
    json!({
        "token": l.token, "logprob": l.logprob, "bytes": l.bytes,
        "top_logprobs": l.top.iter().map(|t| json!({
            "token": t.token, "logprob": t.logprob, "bytes": t.bytes,
        })).collect::<Vec<_>>(),
    })
}

impl Draft {
    /// A draft of `response` (status `in_progress`, no output yet).
    pub fn new(response: ResponseObject, logprobs: bool, streaming: bool) -> Self {
        Self {
            response,
            logprobs,
            streaming,
            pending: Vec::new(),
            sequence: 0,
            message: None,
            finish: None,
        }
    }

    /// Queue event `kind` with `fields` (a stream only).
    fn emit(&mut self, kind: &str, fields: Value) {
        if !self.streaming {
            return;
        }
        let mut event = json!({"type": kind, "sequence_number": self.sequence});
        if let (Value::Object(e), Value::Object(f)) = (&mut event, fields) {
            e.extend(f);
        }
        self.sequence += 1;
        self.pending.push((kind.to_owned(), event));
    }

    /// The events queued since the last call, as `(type, event)`.
    pub fn take_events(&mut self) -> Vec<(String, Value)> {
        std::mem::take(&mut self.pending)
    }

    /// The response object as JSON.
    fn snapshot(&self) -> Value {
        serde_json::to_value(&self.response).unwrap_or(Value::Null)
    }

    /// `response.created` and `response.in_progress`.
    pub fn start(&mut self) {
        let snapshot = self.snapshot();
        self.emit("response.created", json!({"response": snapshot}));
        self.emit("response.in_progress", json!({"response": snapshot}));
    }

    /// Take one engine event (of choice 0: a response has one output).
    pub fn take(&mut self, event: Event) {
        match event {
            Event::Text { text, logprobs, .. } => self.text(&text, &logprobs),
            Event::ToolCalls { calls, .. } => self.calls(&calls),
            Event::Finished { reason, .. } => self.finish = Some(reason),
            Event::Done(usage) => self.done(&usage),
            Event::Failed(e) => self.fail(&e.to_string()),
        }
    }

    fn text(&mut self, text: &str, logprobs: &[TokenLogprob]) {
        if self.message.is_none() {
            let (index, id) = (self.response.output.len(), item_id("msg"));
            let item = json!({
                "id": id, "type": "message", "role": "assistant", "status": "in_progress",
                "content": [],
            });
            self.response.output.push(item.clone());
            self.emit(
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            );
            self.emit(
                "response.content_part.added",
                json!({"output_index": index, "item_id": id, "content_index": 0,
                       "part": {"type": "output_text", "text": "", "annotations": []}}),
            );
            self.message = Some(OpenMessage {
                index,
                id,
                text: String::new(),
                logprobs: Vec::new(),
            });
        }
        let keep = self.logprobs;
        let piece: Vec<Value> = if keep {
            logprobs.iter().map(logprob).collect()
        } else {
            Vec::new()
        };
        let Some(m) = self.message.as_mut() else {
            return;
        };
        m.text.push_str(text);
        m.logprobs.extend(piece.iter().cloned());
        let (index, id) = (m.index, m.id.clone());
        if !text.is_empty() {
            self.emit(
                "response.output_text.delta",
                json!({"output_index": index, "item_id": id, "content_index": 0,
                       "delta": text, "logprobs": piece}),
            );
        }
    }

    /// Finish the open message item, if any.
    fn close_message(&mut self) {
        let Some(m) = self.message.take() else {
            return;
        };
        let mut part = json!({"type": "output_text", "text": m.text, "annotations": []});
        if self.logprobs {
            part["logprobs"] = Value::Array(m.logprobs.clone());
        }
        let item = json!({
            "id": m.id, "type": "message", "role": "assistant", "status": "completed",
            "content": [part],
        });
        self.response.output[m.index] = item.clone();
        self.emit(
            "response.output_text.done",
            json!({"output_index": m.index, "item_id": m.id, "content_index": 0,
                   "text": m.text, "logprobs": m.logprobs}),
        );
        self.emit(
            "response.content_part.done",
            json!({"output_index": m.index, "item_id": m.id, "content_index": 0, "part": part}),
        );
        self.emit(
            "response.output_item.done",
            json!({"output_index": m.index, "item": item}),
        );
    }

    fn calls(&mut self, calls: &[ToolCallOut]) {
        // A message that only led up to the calls is not part of the answer.
        if let Some(m) = self.message.take() {
            if m.text.trim().is_empty() && !self.streaming {
                self.response.output.remove(m.index);
            } else {
                self.message = Some(m);
                self.close_message();
            }
        }
        for call in calls {
            let (index, id) = (self.response.output.len(), item_id("fc"));
            let item = |arguments: &str, status: &str| {
                json!({"id": id, "type": "function_call", "status": status,
                       "call_id": call.id, "name": call.name, "arguments": arguments})
            };
            self.response
                .output
                .push(item(&call.arguments, "completed"));
            self.emit(
                "response.output_item.added",
                json!({"output_index": index, "item": item("", "in_progress")}),
            );
            self.emit(
                "response.function_call_arguments.delta",
                json!({"output_index": index, "item_id": id, "delta": call.arguments}),
            );
            self.emit(
                "response.function_call_arguments.done",
                json!({"output_index": index, "item_id": id, "name": call.name,
                       "arguments": call.arguments}),
            );
            self.emit(
                "response.output_item.done",
                json!({"output_index": index, "item": item(&call.arguments, "completed")}),
            );
        }
    }

    fn done(&mut self, usage: &Usage) {
        self.close_message();
        let r = &mut self.response;
        r.usage = Some(ResponseUsage {
            input_tokens: usage.prompt_tokens,
            input_tokens_details: json!({"cached_tokens": 0, "cache_write_tokens": 0}),
            output_tokens: usage.completion_tokens,
            output_tokens_details: json!({"reasoning_tokens": 0}),
            total_tokens: usage.prompt_tokens + usage.completion_tokens,
        });
        r.completed_at = Some(now());
        let kind = if self.finish == Some(FinishReason::Length) {
            r.status = "incomplete".to_owned();
            r.incomplete_details = Some(json!({"reason": "max_output_tokens"}));
            "response.incomplete"
        } else {
            r.status = "completed".to_owned();
            "response.completed"
        };
        let snapshot = self.snapshot();
        self.emit(kind, json!({"response": snapshot}));
    }

    /// The generation failed: the cause is logged, the response says a fixed sentence.
    pub fn fail(&mut self, cause: &str) {
        tracing::error!(response = %self.response.id, %cause, "response failed");
        self.close_message();
        const MESSAGE: &str = "The model failed while generating this answer; try again";
        self.response.status = "failed".to_owned();
        self.response.error = Some(json!({"code": "server_error", "message": MESSAGE}));
        self.emit(
            "error",
            json!({"code": "server_error", "message": MESSAGE, "param": null}),
        );
        let snapshot = self.snapshot();
        self.emit("response.failed", json!({"response": snapshot}));
    }

    /// Whether the response reached an end (completed, incomplete or failed).
    pub fn ended(&self) -> bool {
        self.response.status != "in_progress"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::serve::ServeError;

    fn draft() -> Draft {
        let object = json!({
            "id": "resp_x", "object": "response", "created_at": 1, "completed_at": null,
            "status": "in_progress", "error": null, "incomplete_details": null,
            "instructions": null, "max_output_tokens": null, "model": "m", "output": [],
            "parallel_tool_calls": true, "previous_response_id": null, "reasoning": {},
            "store": true, "temperature": 1.0, "text": {}, "tool_choice": "auto", "tools": [],
            "top_p": 1.0, "truncation": "disabled", "usage": null, "metadata": {}, "user": null,
            "background": false,
        });
        Draft::new(serde_json::from_value(object).unwrap(), false, true)
    }

    fn kinds(events: &[(String, Value)]) -> Vec<&str> {
        events.iter().map(|(k, _)| k.as_str()).collect()
    }

    fn text(piece: &str) -> Event {
        Event::Text {
            choice: 0,
            text: piece.to_owned(),
            logprobs: Vec::new(),
        }
    }

    #[test]
    fn a_failure_mid_stream_closes_the_message_then_sends_error_and_failed() {
        let mut d = draft();
        d.start();
        d.take(text("Hel"));
        d.take(Event::Failed(ServeError::Stopped));
        let events = d.take_events();
        assert_eq!(
            kinds(&events)[events.len() - 5..],
            [
                "response.output_text.done",
                "response.content_part.done",
                "response.output_item.done",
                "error",
                "response.failed"
            ]
        );
        let numbers: Vec<u64> = events
            .iter()
            .map(|(_, e)| e["sequence_number"].as_u64().unwrap())
            .collect();
        assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
        assert_eq!(d.response.status, "failed");
        assert_eq!(d.response.output[0]["content"][0]["text"], "Hel");
        assert!(d.ended());
    }

    #[test]
    fn the_token_limit_makes_an_incomplete_response_with_its_usage() {
        let mut d = draft();
        d.take(text("a"));
        d.take(Event::Finished {
            choice: 0,
            reason: FinishReason::Length,
        });
        d.take(Event::Done(Usage {
            prompt_tokens: 5,
            completion_tokens: 1,
            decode_seconds: None,
        }));
        assert_eq!(d.response.status, "incomplete");
        assert_eq!(
            d.response.incomplete_details,
            Some(json!({"reason": "max_output_tokens"}))
        );
        assert_eq!(d.response.usage.as_ref().unwrap().total_tokens, 6);
        assert_eq!(kinds(&d.take_events()).last(), Some(&"response.incomplete"));
    }
}
