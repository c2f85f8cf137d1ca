//! Reading a Responses request: its input items checked and written back in OpenAI's stored
//! shapes (each with an id), the conversation they make for the engine, and the tools and output
//! format in the chat forms the engine takes. Every problem is a 400 naming its parameter.

use serde_json::{Map, Value, json};

use crate::api::chat::render::random_id;
use crate::api::chat::validate::constrained_format;
use crate::api::error::ApiError;
use crate::api::sampling::bad;
use crate::domain::tools::{ToolCall, parse_tool_choice, parse_tools};
use crate::serve::{ChatTurn, ToolUse};

/// An item id: `{prefix}_` and 24 random letters and digits (OpenAI's ids use `_`).
pub fn item_id(prefix: &str) -> String {
    random_id(prefix).replacen('-', "_", 1)
}

/// The text of a message's `content`: a string, or a list of `input_text` / `output_text`
/// parts (joined).
fn content_text(content: Option<&Value>, param: &str) -> Result<String, ApiError> {
    match content {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => parts
            .iter()
            .enumerate()
            .map(|(j, p)| {
                let kind = p.get("type").and_then(Value::as_str);
                match (kind, p.get("text").and_then(Value::as_str)) {
                    (Some("input_text" | "output_text" | "text"), Some(t)) => Ok(t.to_owned()),
                    (Some("refusal"), _) => Ok(String::new()),
                    (Some(kind @ ("input_text" | "output_text" | "text")), None) => Err(bad(
                        &format!("{param}[{j}].text"),
                        format!("an {kind} part needs its text"),
                    )),
                    (Some(kind), _) => Err(bad(
                        &format!("{param}[{j}].type"),
                        format!("content part type '{kind}' is not supported; only input_text"),
                    )),
                    (None, _) => Err(bad(
                        &format!("{param}[{j}]"),
                        "content parts are {\"type\": \"input_text\", \"text\": …}",
                    )),
                }
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|v| v.concat()),
        None | Some(Value::Null) => Err(bad(param, "a message needs its content")),
        Some(_) => Err(bad(param, "content must be a string or a list of parts")),
    }
}

/// A required non-empty string field of an item.
fn field<'a>(item: &'a Value, name: &str, at: &str) -> Result<&'a str, ApiError> {
    match item.get(name) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s),
        _ => Err(bad(
            &format!("{at}.{name}"),
            format!("this item needs a non-empty string `{name}`"),
        )),
    }
}

/// A message item as stored: its role and its text as one part.
fn message(role: &str, text: &str) -> Value {
    let part = if role == "assistant" {
        json!({"type": "output_text", "text": text, "annotations": []})
    } else {
        json!({"type": "input_text", "text": text})
    };
    json!({
        "id": item_id("msg"), "type": "message", "role": role, "status": "completed",
        "content": [part],
    })
}

/// The `call_id`s of the `function_call` items among `items`.
fn call_ids(items: &[Value]) -> impl Iterator<Item = &str> {
    items
        .iter()
        .filter(|i| i.get("type").and_then(Value::as_str) == Some("function_call"))
        .filter_map(|i| i.get("call_id").and_then(Value::as_str))
}

/// Check `input` (a string, or a list of items) and write its items as stored, each with an id.
/// A `function_call_output` must answer a call among `earlier` items or its own.
pub fn input_items(input: Option<&Value>, earlier: &[Value]) -> Result<Vec<Value>, ApiError> {
    let list = match input {
        Some(Value::String(text)) => return Ok(vec![message("user", text)]),
        Some(Value::Array(list)) => list,
        None | Some(Value::Null) => return Err(bad("input", "input is required")),
        Some(_) => return Err(bad("input", "input must be a string or a list of items")),
    };
    let mut items: Vec<Value> = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let at = format!("input[{i}]");
        if !item.is_object() {
            return Err(bad(&at, "each input item must be an object"));
        }
        let kind = match item.get("type") {
            None | Some(Value::Null) if item.get("role").is_some() => "message",
            Some(Value::String(kind)) => kind.as_str(),
            _ => return Err(bad(&format!("{at}.type"), "each input item needs a `type`")),
        };
        let stored = match kind {
            "message" => {
                let role = match item.get("role").and_then(Value::as_str) {
                    Some(r @ ("user" | "system" | "developer" | "assistant")) => r,
                    Some(other) => {
                        return Err(bad(
                            &format!("{at}.role"),
                            format!(
                                "Invalid role '{other}': one of user, system, developer, assistant"
                            ),
                        ));
                    }
                    None => return Err(bad(&format!("{at}.role"), "a message needs a `role`")),
                };
                message(
                    role,
                    &content_text(item.get("content"), &format!("{at}.content"))?,
                )
            }
            "function_call" => {
                let arguments = field(item, "arguments", &at).unwrap_or("{}");
                if serde_json::from_str::<Value>(arguments).is_err() {
                    return Err(bad(
                        &format!("{at}.arguments"),
                        "arguments must be a JSON text",
                    ));
                }
                json!({
                    "id": item_id("fc"), "type": "function_call", "status": "completed",
                    "call_id": field(item, "call_id", &at)?, "name": field(item, "name", &at)?,
                    "arguments": arguments,
                })
            }
            "function_call_output" => {
                let call_id = field(item, "call_id", &at)?;
                if !call_ids(earlier)
                    .chain(call_ids(&items))
                    .any(|c| c == call_id)
                {
                    return Err(bad(
                        &format!("{at}.call_id"),
                        format!(
                            "No tool call found for function call output with call_id {call_id}."
                        ),
                    ));
                }
                let output = content_text(item.get("output"), &format!("{at}.output"))?;
                json!({
                    "id": item_id("fco"), "type": "function_call_output", "status": "completed",
                    "call_id": call_id, "output": output,
                })
            }
            other => {
                return Err(bad(
                    &format!("{at}.type"),
                    format!(
                        "input item type '{other}' is not supported: message, function_call or \
                         function_call_output"
                    ),
                ));
            }
        };
        items.push(stored);
    }
    if items.is_empty() {
        return Err(bad("input", "input must hold at least one item"));
    }
    Ok(items)
}

/// The engine's conversation for stored `items` (checked by [`input_items`]), after a system
/// message of `instructions`: calls join the assistant turn before them, outputs become `tool`
/// turns.
pub fn turns(instructions: Option<&str>, items: &[Value]) -> Vec<ChatTurn> {
    let mut turns: Vec<ChatTurn> = instructions
        .map(|text| ChatTurn::new("system", text))
        .into_iter()
        .collect();
    let text = |item: &Value, key: &str| {
        item.get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    for item in items {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => {
                let role = match item.get("role").and_then(Value::as_str) {
                    Some("developer") | Some("system") => "system",
                    Some(role) => role,
                    None => "user",
                };
                let content = content_text(item.get("content"), "").unwrap_or_default();
                turns.push(ChatTurn::new(role, &content));
            }
            Some("function_call") => {
                let call = ToolCall {
                    id: text(item, "call_id"),
                    name: text(item, "name"),
                    arguments: text(item, "arguments"),
                };
                match turns.last_mut() {
                    Some(last) if last.role == "assistant" => last.tool_calls.push(call),
                    _ => turns.push(ChatTurn {
                        tool_calls: vec![call],
                        ..ChatTurn::new("assistant", "")
                    }),
                }
            }
            Some("function_call_output") => turns.push(ChatTurn {
                tool_call_id: Some(text(item, "call_id")),
                ..ChatTurn::new("tool", &text(item, "output"))
            }),
            _ => {}
        }
    }
    turns
}

/// `tools`, `tool_choice` and `parallel_tool_calls` in the engine's terms; `None` without tools
/// or with `tool_choice: none`. Function tools only.
pub fn tool_use(
    tools: Option<&Value>,
    choice: Option<&Value>,
    parallel: Option<bool>,
) -> Result<Option<ToolUse>, ApiError> {
    let list = match tools {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list.clone(),
        Some(_) => return Err(bad("tools", "tools must be a list")),
    };
    // The chat form (`{type, function: {name, description, parameters}}`) the parser reads.
    let mut nested = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        match tool.get("type").and_then(Value::as_str) {
            Some("function") => {}
            Some(other) => {
                return Err(bad(
                    &format!("tools[{i}].type"),
                    format!("tool type '{other}' is not served; only function tools"),
                ));
            }
            None => return Err(bad(&format!("tools[{i}].type"), "a tool needs a `type`")),
        }
        let mut function = Map::new();
        for key in ["name", "description", "parameters"] {
            if let Some(v) = tool.get(key) {
                function.insert(key.to_owned(), v.clone());
            }
        }
        nested.push(json!({"type": "function", "function": function}));
    }
    let flat = |mut e: crate::domain::DomainError| {
        e.param = e.param.map(|p| p.replace(".function.", "."));
        ApiError::from(e)
    };
    let tools = parse_tools(&Value::Array(nested), "tools").map_err(flat)?;
    if tools.is_empty() && choice.is_none_or(|c| c.is_null() || c == "none") {
        return Ok(None);
    }
    // `{type: "function", name}` is the chat form's `{type: "function", function: {name}}`.
    let choice = match choice {
        Some(Value::Object(o)) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = o.get("name").cloned().unwrap_or(Value::Null);
            Some(json!({"type": "function", "function": {"name": name}}))
        }
        Some(Value::Object(_)) => {
            return Err(bad(
                "tool_choice",
                "a named tool_choice is {\"type\": \"function\", \"name\": …}",
            ));
        }
        other => other.cloned(),
    };
    let Some(choice) = parse_tool_choice(choice.as_ref(), &tools)? else {
        return Ok(None);
    };
    Ok(Some(ToolUse {
        tools,
        choice,
        parallel: parallel.unwrap_or(true),
    }))
}

/// The output constraint of `text.format`: none for `text`, any object for `json_object`, the
/// schema for `json_schema`.
pub fn text_format(text: Option<&Value>) -> Result<Option<Value>, ApiError> {
    let format = match text {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Object(t)) => t.get("format"),
        Some(_) => return Err(bad("text", "text must be an object: {\"format\": …}")),
    };
    let kind = match format {
        None | Some(Value::Null) => return Ok(None),
        Some(f) => f.get("type").and_then(Value::as_str),
    };
    constrained_format(
        kind,
        format.and_then(|f| f.get("schema")),
        "text.format",
        "text.format.schema",
    )
}
