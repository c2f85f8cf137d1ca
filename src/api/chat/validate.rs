//! Checking a chat request and mapping it to engine parameters; every problem is a 400 naming
//! its parameter.

use serde_json::Value;

use super::types::CreateChatCompletionRequest;
use crate::api::error::ApiError;
use crate::api::sampling::{bad, in_range};
use crate::domain::tools::{
    ToolChoice, check_schema, parse_tool_calls, parse_tool_choice, parse_tools, spaced_json,
};
use crate::serve::{ChatParams, ChatTurn, ToolUse};

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

/// The conversation: roles, text, the assistant's `tool_calls` and the `tool` messages that
/// answer them (each must name a call made earlier in the conversation).
fn conversation(req: &CreateChatCompletionRequest) -> Result<Vec<ChatTurn>, ApiError> {
    if req.messages.is_empty() {
        return Err(bad(
            "messages",
            "messages must contain at least one message",
        ));
    }
    let mut turns: Vec<ChatTurn> = Vec::with_capacity(req.messages.len());
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
        let mut turn = ChatTurn::new(role, &text_of(&m.content, i)?);
        match (&m.tool_calls, role) {
            (None | Some(Value::Null), _) => {}
            (Some(calls), "assistant") => {
                turn.tool_calls = parse_tool_calls(calls, &format!("messages[{i}].tool_calls"))?;
            }
            (Some(_), _) => {
                return Err(bad(
                    &format!("messages[{i}].tool_calls"),
                    "only assistant messages carry tool_calls",
                ));
            }
        }
        if role == "tool" {
            let param = format!("messages[{i}].tool_call_id");
            let id = m
                .tool_call_id
                .as_deref()
                .ok_or_else(|| bad(&param, "a tool message needs the tool_call_id it answers"))?;
            if !turns.iter().flat_map(|t| &t.tool_calls).any(|c| c.id == id) {
                return Err(bad(
                    &format!("messages[{i}]"),
                    format!(
                        "messages with role 'tool' must be a response to a preceding message \
                         with 'tool_calls'; no call has id '{id}'"
                    ),
                ));
            }
            turn.tool_call_id = Some(id.to_owned());
        }
        turns.push(turn);
    }
    Ok(turns)
}

/// `tools`, `tool_choice` and `parallel_tool_calls`; `None` when no tools are offered or
/// `tool_choice` is `none`.
fn tool_use(req: &CreateChatCompletionRequest) -> Result<Option<ToolUse>, ApiError> {
    let tools = match &req.tools {
        None | Some(Value::Null) => Vec::new(),
        Some(t) => parse_tools(t, "tools")?,
    };
    if tools.is_empty()
        && req
            .tool_choice
            .as_ref()
            .is_none_or(|c| c.is_null() || c == "none")
    {
        return Ok(None);
    }
    let Some(choice) = parse_tool_choice(req.tool_choice.as_ref(), &tools)? else {
        return Ok(None);
    };
    Ok(Some(ToolUse {
        tools,
        choice,
        parallel: req.parallel_tool_calls.unwrap_or(true),
    }))
}

/// The output constraint of a format of type `kind` (`param` names the format in errors):
/// none for `text` or no format, any object for `json_object`, `schema` (checked, at
/// `schema_param`) for `json_schema`.
pub fn constrained_format(
    kind: Option<&str>,
    schema: Option<&Value>,
    param: &str,
    schema_param: &str,
) -> Result<Option<Value>, ApiError> {
    match kind {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(spaced_json(serde_json::json!({"type": "object"})))),
        Some("json_schema") => {
            let schema =
                schema.ok_or_else(|| bad(param, format!("json_schema needs {schema_param}")))?;
            check_schema(schema, schema_param)?;
            Ok(Some(spaced_json(schema.clone())))
        }
        Some(other) => Err(bad(param, format!("Unknown {param} type '{other}'"))),
    }
}

/// Validate `req` and build the engine parameters.
pub fn validate(req: &CreateChatCompletionRequest) -> Result<ChatParams, ApiError> {
    crate::domain::text::storable("model", &req.model)?;
    let messages = conversation(req)?;
    let sampled = req.sampling.params()?;
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
    let format = req.response_format.as_ref();
    let json_schema = constrained_format(
        format.and_then(|f| f.get("type")).and_then(Value::as_str),
        format.and_then(|f| f.pointer("/json_schema/schema")),
        "response_format",
        "response_format.json_schema.schema",
    )?;
    let tools = tool_use(req)?;
    if tools.as_ref().is_some_and(|t| t.choice != ToolChoice::Auto) && json_schema.is_some() {
        return Err(bad(
            "response_format",
            "response_format cannot be combined with a tool_choice that forces a call",
        ));
    }
    Ok(ChatParams {
        messages,
        max_tokens,
        logprobs: req.logprobs.unwrap_or(false),
        top_logprobs: req.top_logprobs.unwrap_or(0),
        json_schema,
        tools,
        seed: req.seed.map(|s| s as u64),
        ..sampled
    })
}
