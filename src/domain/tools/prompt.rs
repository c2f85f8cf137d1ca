//! The prompt side of tools: the documented format for templates without tool support (tools
//! in the system message, calls as JSON text), the messages and `tools` value handed to a chat
//! template, and the JSON schema that forces a call.

use serde_json::{Map, Value, json};

use super::{FunctionTool, ToolCall, ToolChoice};
/// True when a chat template renders `tools` itself (Qwen2.5, Llama 3.1, Hermes templates).
pub fn template_handles_tools(source: &str) -> bool {
    source
        .match_indices("tools")
        .any(|(i, _)| !source[..i].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
}

/// The system text that offers `tools` to a model whose template has no tool support.
pub fn tools_system_text(tools: &[FunctionTool], parallel: bool) -> String {
    let mut out = String::from("You can call these functions:\n");
    for t in tools {
        out.push_str(&Value::Object(t.function_object()).to_string());
        out.push('\n');
    }
    out.push_str(
        "To call a function, reply with only a JSON object {\"name\": <function name>, \
         \"arguments\": <arguments object>}",
    );
    if parallel {
        out.push_str(", or a JSON list of such objects to call several at once");
    }
    out.push_str(". Otherwise answer normally.");
    out
}

/// The assistant text of `calls` in the documented format.
pub fn calls_text(calls: &[ToolCall]) -> String {
    // Written by hand so `name` comes first whatever the JSON map's key order.
    let one = |c: &ToolCall| {
        let args = serde_json::from_str::<Value>(&c.arguments)
            .unwrap_or_else(|_| Value::String(c.arguments.clone()));
        format!(
            r#"{{"name": {}, "arguments": {args}}}"#,
            Value::String(c.name.clone())
        )
    };
    match calls {
        [call] => one(call),
        _ => format!("[{}]", calls.iter().map(one).collect::<Vec<_>>().join(", ")),
    }
}

/// The JSON schema that forces a call: the named function, or (`required`) any of the tools —
/// a list of calls when `parallel`.
pub fn call_schema(tools: &[FunctionTool], choice: &ToolChoice, parallel: bool) -> Option<Value> {
    let call = |t: &FunctionTool| {
        json!({
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": t.parameters},
            "required": ["name", "arguments"],
            "additionalProperties": false,
        })
    };
    let schema = match choice {
        ToolChoice::Auto => None,
        ToolChoice::Named(name) => tools.iter().find(|t| &t.name == name).map(call),
        ToolChoice::Required => {
            let any = json!({"anyOf": tools.iter().map(call).collect::<Vec<_>>()});
            Some(if parallel {
                json!({"type": "array", "items": any, "minItems": 1})
            } else {
                any
            })
        }
    };
    schema.map(spaced_json)
}

/// `schema` with the grammar options (llguidance's `x-guidance`) that fix the whitespace to
/// `", "` and `": "`, unless the schema sets its own: a model may not wander in whitespace, and
/// calls read as the documented format.
pub fn spaced_json(mut schema: Value) -> Value {
    if let Value::Object(s) = &mut schema
        && !s.contains_key("x-guidance")
    {
        s.insert(
            "x-guidance".into(),
            json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "}),
        );
    }
    schema
}

/// One conversation message as a template sees it.
#[derive(Debug, Clone, Copy)]
pub struct TemplateTurn<'a> {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: &'a str,
    /// Text.
    pub content: &'a str,
    /// The assistant's calls.
    pub tool_calls: &'a [ToolCall],
    /// The call a `tool` message answers.
    pub tool_call_id: Option<&'a str>,
}

/// The messages handed to a chat template, for serving and training alike. A template with
/// tool support gets `tool_calls` (arguments as objects, as Hugging Face templates expect) and
/// `tool_call_id`/`name` on tool results, and renders `tools` itself; any other template gets
/// the documented format: `offered` tools in the system message, calls as assistant text.
pub fn template_messages(
    turns: &[TemplateTurn<'_>],
    offered: Option<(&[FunctionTool], bool)>,
    template_tools: bool,
) -> Vec<Map<String, Value>> {
    let mut out: Vec<Map<String, Value>> = Vec::with_capacity(turns.len() + 1);
    let text = |s: &str| Value::String(s.to_owned());
    for turn in turns {
        let mut m = Map::new();
        m.insert("role".into(), text(turn.role));
        let mut content = turn.content.to_owned();
        if !turn.tool_calls.is_empty() {
            if template_tools {
                let calls = turn.tool_calls.iter().map(|c| {
                    let args = serde_json::from_str::<Value>(&c.arguments)
                        .unwrap_or_else(|_| text(&c.arguments));
                    json!({"id": c.id, "type": "function",
                           "function": {"name": c.name, "arguments": args}})
                });
                m.insert("tool_calls".into(), Value::Array(calls.collect()));
            } else {
                if !content.is_empty() {
                    content.push('\n');
                }
                content.push_str(&calls_text(turn.tool_calls));
            }
        }
        m.insert("content".into(), Value::String(content));
        if let Some(id) = turn.tool_call_id {
            m.insert("tool_call_id".into(), text(id));
            let name = turns
                .iter()
                .flat_map(|t| t.tool_calls)
                .find(|c| c.id == id)
                .map(|c| c.name.as_str());
            if let Some(name) = name {
                m.insert("name".into(), text(name));
            }
        }
        out.push(m);
    }
    if let (Some((tools, parallel)), false) = (offered, template_tools) {
        let offer = tools_system_text(tools, parallel);
        match out.first_mut() {
            Some(first) if first.get("role") == Some(&text("system")) => {
                let old = first.get("content").and_then(Value::as_str).unwrap_or("");
                let joined = if old.is_empty() {
                    offer
                } else {
                    format!("{old}\n\n{offer}")
                };
                first.insert("content".into(), Value::String(joined));
            }
            _ => {
                let mut m = Map::new();
                m.insert("role".into(), text("system"));
                m.insert("content".into(), Value::String(offer));
                out.insert(0, m);
            }
        }
    }
    out
}

/// The tools as a template's `tools` variable (`[{type: function, function: {…}}]`), in the
/// shape the serving engine hands its templates (mistral.rs's `Tool`: `description` is always
/// there, null when absent), so training renders the prompt serving renders.
pub fn template_tools_value(tools: &[FunctionTool]) -> Value {
    Value::Array(
        tools
            .iter()
            .map(|t| {
                let mut f = t.function_object();
                f.entry("description").or_insert(Value::Null);
                json!({"type": "function", "function": f})
            })
            .collect(),
    )
}
