//! mistral.rs responses as ferrotune's [`Event`]s: a task between the engine's channel and the
//! generation's. Dropping the generation ends the task, which drops the engine's channel and so
//! cancels the request.

use mistralrs::core::{Request, Response, ResponseLogprob, ToolCallResponse};
use tokio::sync::mpsc;

use crate::serve::ServeError;
use crate::serve::events::{Event, FinishReason, TokenLogprob, ToolCallOut, TopLogprob, Usage};

/// How long a generation that ended without its final response waits to see whether its engine
/// died (the engine's thread drops its channel while it unwinds).
const ENGINE_DEATH_GRACE: std::time::Duration = std::time::Duration::from_millis(200);

/// Forward `rx` (one request's responses) into `tx` as events. When the engine closes the
/// channel without a final response, a dead engine is reported as [`ServeError::Stopped`];
/// otherwise the channel just closes (the generation closes its open choices itself).
pub async fn translate(
    mut rx: mpsc::Receiver<Response>,
    tx: mpsc::UnboundedSender<Event>,
    engine: mpsc::Sender<Request>,
    choices: usize,
) {
    let mut finished = 0;
    while let Some(response) = rx.recv().await {
        let (events, last) = events_of(response);
        for event in events {
            if matches!(event, Event::Finished { .. }) {
                finished += 1;
            }
            if tx.send(event).is_err() {
                return;
            }
        }
        if last {
            return;
        }
    }
    if finished < choices
        && tokio::time::timeout(ENGINE_DEATH_GRACE, engine.closed())
            .await
            .is_ok()
    {
        tracing::error!("the engine stopped mid-generation (mistral.rs panicked; it restarts)");
        let _ = tx.send(Event::Failed(ServeError::Stopped));
    }
}

/// The events of one response, and whether it was the last.
fn events_of(response: Response) -> (Vec<Event>, bool) {
    let mut out = Vec::new();
    match response {
        Response::Chunk(chunk) => {
            for c in chunk.choices {
                out.push(Event::Text {
                    choice: c.index,
                    text: c.delta.content.unwrap_or_default(),
                    logprobs: c.logprobs.as_ref().map(logprob).into_iter().collect(),
                });
                let calls = c.delta.tool_calls.unwrap_or_default();
                if !calls.is_empty() {
                    out.push(Event::ToolCalls {
                        choice: c.index,
                        calls: calls.iter().map(tool_call).collect(),
                    });
                }
                if let Some(reason) = c.finish_reason {
                    out.push(finished(c.index, &reason));
                }
            }
            match chunk.usage {
                Some(u) => {
                    out.push(Event::Done(usage(&u)));
                    return (out, true);
                }
                None => return (out, false),
            }
        }
        Response::CompletionChunk(chunk) => {
            for c in chunk.choices {
                out.push(Event::Text {
                    choice: c.index,
                    text: c.text,
                    logprobs: c.logprobs.as_ref().map(logprob).into_iter().collect(),
                });
                if let Some(reason) = c.finish_reason {
                    out.push(finished(c.index, &reason));
                }
            }
            return (out, false);
        }
        Response::Done(done) => {
            for c in done.choices {
                let calls = c.message.tool_calls.unwrap_or_default();
                if calls.is_empty() {
                    out.push(Event::Text {
                        choice: c.index,
                        text: c.message.content.unwrap_or_default(),
                        logprobs: all_logprobs(c.logprobs.and_then(|l| l.content)),
                    });
                } else {
                    out.push(Event::ToolCalls {
                        choice: c.index,
                        calls: calls.iter().map(tool_call).collect(),
                    });
                }
                out.push(finished(c.index, &c.finish_reason));
            }
            out.push(Event::Done(usage(&done.usage)));
        }
        Response::CompletionDone(done) => {
            for c in done.choices {
                out.push(Event::Text {
                    choice: c.index,
                    text: c.text,
                    logprobs: all_logprobs(c.logprobs.and_then(|l| l.content)),
                });
                out.push(finished(c.index, &c.finish_reason));
            }
            out.push(Event::Done(usage(&done.usage)));
        }
        Response::ValidationError(e) => out.push(Event::Failed(ServeError::Invalid(e.to_string()))),
        Response::ModelError(msg, _) | Response::CompletionModelError(msg, _) => out.push(
            Event::Failed(ServeError::Engine(format!("model error: {msg}"))),
        ),
        Response::InternalError(e) => out.push(Event::Failed(ServeError::Engine(e.to_string()))),
        _ => out.push(Event::Failed(ServeError::Engine(
            "unexpected engine response".to_owned(),
        ))),
    }
    (out, true)
}

fn finished(choice: usize, reason: &str) -> Event {
    Event::Finished {
        choice,
        reason: FinishReason::from_engine(reason),
    }
}

fn usage(u: &mistralrs::core::Usage) -> Usage {
    Usage {
        prompt_tokens: u.prompt_tokens,
        completion_tokens: u.completion_tokens,
        decode_seconds: Some(f64::from(u.total_completion_time_sec)),
    }
}

fn all_logprobs(content: Option<Vec<ResponseLogprob>>) -> Vec<TokenLogprob> {
    content.iter().flatten().map(logprob).collect()
}

fn logprob(l: &ResponseLogprob) -> TokenLogprob {
    TokenLogprob {
        token: l.token.clone(),
        bytes: l
            .bytes
            .clone()
            .unwrap_or_else(|| l.token.as_bytes().to_vec()),
        logprob: l.logprob,
        top: l
            .top_logprobs
            .iter()
            .map(|t| {
                // The engine gives the token's text in `bytes` and its id in `token`.
                let text = t.bytes.clone().unwrap_or_default();
                TopLogprob {
                    bytes: text.as_bytes().to_vec(),
                    token: text,
                    logprob: t.logprob,
                }
            })
            .collect(),
    }
}

/// OpenAI's call ids are `call_…`; the engine's are `call-<uuid>`.
fn tool_call(c: &ToolCallResponse) -> ToolCallOut {
    let tail: String =
        c.id.chars()
            .filter(char::is_ascii_alphanumeric)
            .skip(4)
            .take(24)
            .collect();
    ToolCallOut {
        id: format!("call_{tail}"),
        name: c.function.name.clone(),
        arguments: c.function.arguments.clone(),
    }
}
