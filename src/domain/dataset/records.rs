//! Parsing one JSON record of each demonstration format into an [`Example`] (the dispatcher,
//! [`super::parse_record`], picks the format).

use serde_json::{Map, Value};

use super::{Example, RecordError, Role, Turn};
use crate::domain::tools::{parse_tool_calls, parse_tools};

pub(super) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub(super) fn string_field(
    obj: &Map<String, Value>,
    key: &str,
    required: bool,
) -> Result<String, RecordError> {
    match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) if !required => Ok(String::new()),
        Some(other) => Err(bad!("`{key}` must be a string, found {}", kind(other))),
        None => Err(bad!("missing `{key}`")),
    }
}

fn turn(role: Role, content: String) -> Turn {
    Turn::new(role, content)
}

pub(super) fn chat(obj: &Map<String, Value>) -> Result<Example, RecordError> {
    let Some(Value::Array(messages)) = obj.get("messages") else {
        return Err("`messages` must be a list".into());
    };
    if messages.is_empty() {
        return Err("`messages` must not be empty".into());
    }
    let turns = messages
        .iter()
        .enumerate()
        .map(|(i, m)| chat_message(m).map_err(|e| bad!("messages[{i}]: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    let tools = obj.get("tools").filter(|t| !t.is_null()).cloned();
    let offered = match &tools {
        Some(t) => parse_tools(t, "tools").map_err(|e| at_param(&e))?,
        None => Vec::new(),
    };
    for (i, t) in turns.iter().enumerate() {
        if let Some(call) = t
            .tool_calls
            .iter()
            .find(|c| !offered.iter().any(|f| f.name == c.name))
        {
            return Err(bad!(
                "messages[{i}]: calls function '{}', which is not in this example's `tools`",
                call.name
            ));
        }
    }
    let parallel_tool_calls = match obj.get("parallel_tool_calls") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(bad!(
                "`parallel_tool_calls` must be a boolean, found {}",
                kind(other)
            ));
        }
    };
    if !parallel_tool_calls && turns.iter().any(|t| t.tool_calls.len() > 1) {
        return Err("several tool calls in one message, but `parallel_tool_calls` is false".into());
    }
    Ok(Example {
        turns,
        tools,
        parallel_tool_calls,
        rejected: None,
    })
}

/// A tool rule's message with the field it is about.
fn at_param(e: &crate::domain::DomainError) -> String {
    match &e.param {
        Some(p) => format!("{p}: {}", e.message),
        None => e.message.clone(),
    }
}

pub(super) fn chat_message(m: &Value) -> Result<Turn, RecordError> {
    let Value::Object(m) = m else {
        return Err(bad!("expected an object, found {}", kind(m)));
    };
    let role = match m.get("role").and_then(Value::as_str) {
        Some("system" | "developer") => Role::System,
        Some("user") => Role::User,
        Some("assistant") => Role::Assistant,
        Some("tool" | "function") => Role::Tool,
        Some(other) => return Err(bad!("unknown role '{other}'")),
        None => return Err("missing `role`".into()),
    };
    let tool_calls = match (m.get("tool_calls"), role) {
        (None | Some(Value::Null), _) => Vec::new(),
        (Some(calls), Role::Assistant) => {
            parse_tool_calls(calls, "tool_calls").map_err(|e| at_param(&e))?
        }
        (Some(_), _) => return Err("only assistant messages carry `tool_calls`".into()),
    };
    let content = match m.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => text_parts(parts)?,
        None | Some(Value::Null) if !tool_calls.is_empty() => String::new(),
        None | Some(Value::Null) => return Err("missing `content`".into()),
        Some(other) => {
            return Err(bad!(
                "`content` must be a string or a list, found {}",
                kind(other)
            ));
        }
    };
    let train = match m.get("weight") {
        None | Some(Value::Null) => role == Role::Assistant,
        Some(w) if role != Role::Assistant => {
            return Err(bad!("`weight` ({w}) is only allowed on assistant messages"));
        }
        Some(w) => match w.as_u64() {
            Some(0) => false,
            Some(1) => true,
            _ => return Err(bad!("`weight` must be 0 or 1, found {w}")),
        },
    };
    let tool_call_id = match (m.get("tool_call_id"), role) {
        (Some(Value::String(id)), Role::Tool) => Some(id.clone()),
        _ => None,
    };
    Ok(Turn {
        role,
        content,
        train,
        tool_calls,
        tool_call_id,
    })
}

fn text_parts(parts: &[Value]) -> Result<String, RecordError> {
    let mut out = String::new();
    for part in parts {
        match (part.get("type").and_then(Value::as_str), part.get("text")) {
            (Some("text"), Some(Value::String(t))) => out.push_str(t),
            (Some(other), _) if other != "text" => {
                return Err(bad!(
                    "content part type '{other}' is not supported; only text"
                ));
            }
            _ => return Err("content parts must be {\"type\": \"text\", \"text\": …}".into()),
        }
    }
    Ok(out)
}

pub(super) fn completion(obj: &Map<String, Value>) -> Result<Example, RecordError> {
    let prompt = string_field(obj, "prompt", true)?;
    let completion = string_field(obj, "completion", true)?;
    Ok(Example {
        turns: vec![turn(Role::User, prompt), turn(Role::Assistant, completion)],
        tools: None,
        parallel_tool_calls: true,
        rejected: None,
    })
}

pub(super) fn alpaca(obj: &Map<String, Value>) -> Result<Example, RecordError> {
    let instruction = string_field(obj, "instruction", true)?;
    let input = string_field(obj, "input", false)?;
    let output = string_field(obj, "output", true)?;
    let system = string_field(obj, "system", false)?;
    let mut turns = Vec::new();
    if !system.is_empty() {
        turns.push(turn(Role::System, system));
    }
    match obj.get("history") {
        None | Some(Value::Null) => {}
        Some(Value::Array(pairs)) => {
            for (i, pair) in pairs.iter().enumerate() {
                let p = pair.as_array().filter(|p| p.len() == 2);
                let (Some(q), Some(a)) =
                    (p.and_then(|p| p[0].as_str()), p.and_then(|p| p[1].as_str()))
                else {
                    return Err(bad!(
                        "history[{i}] must be a [question, answer] pair of strings"
                    ));
                };
                turns.push(turn(Role::User, q.to_owned()));
                turns.push(turn(Role::Assistant, a.to_owned()));
            }
        }
        Some(other) => return Err(bad!("`history` must be a list, found {}", kind(other))),
    }
    // LLaMA-Factory joins instruction and input with a newline.
    let prompt = if input.is_empty() {
        instruction
    } else {
        format!("{instruction}\n{input}")
    };
    turns.push(turn(Role::User, prompt));
    turns.push(turn(Role::Assistant, output));
    Ok(Example {
        turns,
        tools: None,
        parallel_tool_calls: true,
        rejected: None,
    })
}

pub(super) fn sharegpt(obj: &Map<String, Value>) -> Result<Example, RecordError> {
    let Some(Value::Array(conv)) = obj.get("conversations") else {
        return Err("`conversations` must be a list".into());
    };
    let mut turns = Vec::new();
    let system = string_field(obj, "system", false)?;
    if !system.is_empty() {
        turns.push(turn(Role::System, system));
    }
    for (i, c) in conv.iter().enumerate() {
        let role = match c.get("from").and_then(Value::as_str) {
            Some("human" | "user") => Role::User,
            Some("gpt" | "assistant" | "function_call") => Role::Assistant,
            Some("system") => Role::System,
            Some("observation" | "tool") => Role::Tool,
            Some(other) => return Err(bad!("conversations[{i}]: unknown `from` '{other}'")),
            None => return Err(bad!("conversations[{i}]: missing `from`")),
        };
        let Some(value) = c.get("value").and_then(Value::as_str) else {
            return Err(bad!("conversations[{i}]: `value` must be a string"));
        };
        turns.push(turn(role, value.to_owned()));
    }
    if turns.is_empty() {
        return Err("`conversations` must not be empty".into());
    }
    // LLaMA-Factory writes ShareGPT `tools` as a JSON string; calls are the assistant's text.
    let tools = match obj.get("tools") {
        Some(Value::String(s)) => serde_json::from_str(s).ok(),
        other => other.filter(|t| !t.is_null()).cloned(),
    };
    Ok(Example {
        turns,
        tools,
        parallel_tool_calls: true,
        rejected: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::dataset::{DatasetFormat, parse_record};
    use serde_json::json;

    #[test]
    fn alpaca_records_become_system_history_and_a_joined_prompt() {
        let (format, ex) = parse_record(&json!({
            "instruction": "Q", "input": "ctx", "output": "A", "system": "S",
            "history": [["q0", "a0"]]
        }))
        .unwrap();
        assert_eq!(format, DatasetFormat::Alpaca);
        let texts: Vec<_> = ex
            .turns
            .iter()
            .map(|t| (t.role, t.content.as_str()))
            .collect();
        assert_eq!(
            texts,
            vec![
                (Role::System, "S"),
                (Role::User, "q0"),
                (Role::Assistant, "a0"),
                (Role::User, "Q\nctx"),
                (Role::Assistant, "A")
            ]
        );
    }

    #[test]
    fn chat_weight_zero_turns_are_not_trained() {
        let (_, ex) = parse_record(&json!({"messages": [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": "a", "weight": 0},
            {"role": "assistant", "content": "b", "weight": 1}
        ]}))
        .unwrap();
        assert_eq!(ex.turns[0].content, "hi");
        assert!(!ex.turns[1].train && ex.turns[2].train);
        assert!(ex.has_trained_assistant_turn());
    }

    #[test]
    fn tool_use_examples_keep_their_calls_and_results() {
        let (_, ex) = parse_record(&json!({
            "messages": [
                {"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\": \"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"},
                {"role": "assistant", "content": "It is -3 C in Oslo."}],
            "tools": [{"type": "function", "function": {"name": "get_weather"}}],
            "parallel_tool_calls": false}))
        .unwrap();
        assert_eq!(ex.turns[1].tool_calls[0].name, "get_weather");
        assert!(ex.turns[1].train && ex.turns[1].content.is_empty());
        assert_eq!(ex.turns[2].tool_call_id.as_deref(), Some("call_1"));
        assert!(!ex.parallel_tool_calls);
    }

    #[test]
    fn sharegpt_and_completion_records_are_recognised() {
        let (f, ex) = parse_record(&json!({"conversations": [
            {"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}))
        .unwrap();
        assert_eq!((f, ex.turns.len()), (DatasetFormat::Sharegpt, 2));
        let (f, _) = parse_record(&json!({"prompt": "p", "completion": "c"})).unwrap();
        assert_eq!(f, DatasetFormat::Completion);
    }

    #[test]
    fn malformed_records_say_what_is_wrong() {
        let cases = [
            (json!([1]), "expected a JSON object"),
            (json!({"text": "x"}), "unrecognised example format"),
            (json!({"messages": []}), "must not be empty"),
            (
                json!({"messages": [{"role": "robot", "content": "x"}]}),
                "unknown role",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x", "weight": 0}]}),
                "only allowed",
            ),
            (
                json!({"messages": [{"role": "assistant", "content": "x", "weight": 2}]}),
                "0 or 1",
            ),
            (json!({"instruction": 1, "output": "x"}), "must be a string"),
            (
                json!({"messages": [{"role": "user", "content": "q"},
                {"role": "assistant", "tool_calls": [{"id": "c", "type": "function",
                    "function": {"name": "f", "arguments": "{}"}}]}]}),
                "not in this example's `tools`",
            ),
            (
                json!({"messages": [{"role": "user", "content": "q", "tool_calls": []}]}),
                "only assistant messages",
            ),
            (
                json!({"messages": [{"role": "user", "content": "q"}],
                    "tools": [{"type": "function", "function": {"name": "has space"}}]}),
                "tools[0].function.name",
            ),
            (
                json!({"messages": [{"role": "user", "content": "q"}], "parallel_tool_calls": 1}),
                "must be a boolean",
            ),
        ];
        for (input, needle) in cases {
            let err = parse_record(&input).unwrap_err();
            assert!(err.to_string().contains(needle), "{input}: {err}");
        }
    }
}
