//! Checking a chat request and mapping it to engine parameters; every problem is a 400 naming
//! its parameter.

use std::collections::HashMap;

use serde_json::Value;

use super::types::CreateChatCompletionRequest;
use crate::api::error::ApiError;
use crate::serve::{ChatParams, ChatTurn};

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(message, Some(param))
}

fn in_range<T: PartialOrd + Copy + std::fmt::Display>(
    v: Option<T>,
    lo: T,
    hi: T,
    param: &str,
) -> Result<(), ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) => {
            Err(bad(param, format!("{param} must be between {lo} and {hi}")))
        }
        _ => Ok(()),
    }
}

fn text_of(content: &Option<Value>, i: usize) -> Result<String, ApiError> {
    let param = format!("messages[{i}].content");
    match content {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => Ok(t.to_owned()),
                    (Some(kind), _) => Err(bad(
                        &param,
                        format!("content part type '{kind}' is not supported; only text"),
                    )),
                    _ => Err(bad(
                        &param,
                        "content parts must be {\"type\": \"text\", \"text\": …}",
                    )),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.concat()),
        Some(_) => Err(bad(
            &param,
            "content must be a string or a list of text parts",
        )),
    }
}

/// Validate `req` and build the engine parameters.
pub fn validate(req: &CreateChatCompletionRequest) -> Result<ChatParams, ApiError> {
    crate::domain::text::storable("model", &req.model)?;
    if req.messages.is_empty() {
        return Err(bad(
            "messages",
            "messages must contain at least one message",
        ));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            other => {
                return Err(bad(
                    &format!("messages[{i}].role"),
                    format!("Invalid role '{other}'"),
                ));
            }
        };
        messages.push(ChatTurn {
            role: role.to_owned(),
            content: text_of(&m.content, i)?,
        });
    }
    in_range(req.temperature, 0.0, 2.0, "temperature")?;
    if req.top_p.is_some_and(|p| p <= 0.0 || p > 1.0) {
        return Err(bad("top_p", "top_p must be in (0, 1]"));
    }
    in_range(req.n, 1, 128, "n")?;
    in_range(req.presence_penalty, -2.0, 2.0, "presence_penalty")?;
    in_range(req.frequency_penalty, -2.0, 2.0, "frequency_penalty")?;
    in_range(req.top_logprobs, 0, 20, "top_logprobs")?;
    if req.top_logprobs.is_some_and(|n| n > 0) && req.logprobs != Some(true) {
        return Err(bad("top_logprobs", "top_logprobs requires logprobs: true"));
    }
    let max_tokens = req.max_completion_tokens.or(req.max_tokens);
    if max_tokens == Some(0) {
        let param = if req.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        return Err(bad(param, format!("{param} must be at least 1")));
    }
    let stop = match &req.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(list)) if list.len() <= 4 => list
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad("stop", "stop must be a string or a list of strings"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(bad(
                "stop",
                "stop must be a string or a list of at most 4 strings",
            ));
        }
    };
    let logit_bias = match &req.logit_bias {
        None | Some(Value::Null) => None,
        Some(Value::Object(map)) => Some(
            map.iter()
                .map(|(k, v)| {
                    let id = k
                        .parse::<u32>()
                        .map_err(|_| bad("logit_bias", format!("'{k}' is not a token id")))?;
                    let b = v
                        .as_f64()
                        .filter(|b| (-100.0..=100.0).contains(b))
                        .ok_or_else(|| {
                            bad("logit_bias", "biases must be numbers between -100 and 100")
                        })?;
                    Ok((id, b as f32))
                })
                .collect::<Result<HashMap<_, _>, ApiError>>()?,
        ),
        Some(_) => {
            return Err(bad(
                "logit_bias",
                "logit_bias must map token ids to numbers",
            ));
        }
    };
    let json_schema = match req
        .response_format
        .as_ref()
        .and_then(|f| f.get("type"))
        .and_then(Value::as_str)
    {
        None | Some("text") => None,
        Some("json_object") => Some(serde_json::json!({"type": "object"})),
        Some("json_schema") => Some(
            req.response_format
                .as_ref()
                .and_then(|f| f.pointer("/json_schema/schema"))
                .cloned()
                .ok_or_else(|| bad("response_format", "json_schema needs json_schema.schema"))?,
        ),
        Some(other) => {
            return Err(bad(
                "response_format",
                format!("Unknown response_format type '{other}'"),
            ));
        }
    };
    if req.tools.as_ref().is_some_and(|t| !t.is_null()) {
        return Err(bad("tools", "tools are not supported yet"));
    }
    if req
        .tool_choice
        .as_ref()
        .is_some_and(|t| !t.is_null() && t != "none")
    {
        return Err(bad("tool_choice", "tool_choice is not supported yet"));
    }
    Ok(ChatParams {
        messages,
        temperature: req.temperature,
        top_p: req.top_p,
        n: req.n.unwrap_or(1),
        stop,
        max_tokens,
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        logit_bias,
        logprobs: req.logprobs.unwrap_or(false),
        top_logprobs: req.top_logprobs.unwrap_or(0),
        json_schema,
    })
}
