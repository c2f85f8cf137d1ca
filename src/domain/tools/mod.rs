//! Function tools — OpenAI's `tools`, `tool_choice`, `parallel_tool_calls` and assistant
//! `tool_calls` — parsed once for serving and for training, and the prompt format used when a
//! model's chat template has no tool support of its own.
//!
//! That format (documented in the README): the tools are listed in the system message, one JSON
//! object per line, and the assistant calls them by answering with only
//! `{"name": …, "arguments": {…}}`, or a JSON list of such objects for several calls at once.
//! The same text is what a fine-tune learns from an example's `tool_calls`, and what the
//! engine's tool-call parser reads back.

use serde_json::{Map, Value, json};

use super::DomainError;

pub mod prompt;
pub use prompt::*;

/// One function the model may call.
#[derive(Debug, Clone, PartialEq)]
pub struct FunctionTool {
    /// `[A-Za-z0-9_-]{1,64}`.
    pub name: String,
    /// What it does, for the model.
    pub description: Option<String>,
    /// A JSON schema of `type: object` for the arguments.
    pub parameters: Value,
}

impl FunctionTool {
    /// `{name, description?, parameters}`, the function as OpenAI writes it.
    pub fn function_object(&self) -> Map<String, Value> {
        let mut f = Map::new();
        f.insert("name".into(), Value::String(self.name.clone()));
        if let Some(d) = &self.description {
            f.insert("description".into(), Value::String(d.clone()));
        }
        f.insert("parameters".into(), self.parameters.clone());
        f
    }
}

/// A call the assistant made (or makes).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ToolCall {
    /// `call_…`, echoed by the `tool` message that answers it.
    pub id: String,
    /// The function called.
    pub name: String,
    /// The arguments as a JSON string (as OpenAI sends them).
    pub arguments: String,
}

/// How the model must use the tools.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolChoice {
    /// Call tools or answer in text, as the model decides.
    Auto,
    /// Call at least one tool.
    Required,
    /// Call this function.
    Named(String),
}

const SCHEMA_TYPES: [&str; 7] = [
    "object", "array", "string", "number", "integer", "boolean", "null",
];

/// Parse a `tools` list (`param` names it in errors: `tools`, or `tools` of a training line).
pub fn parse_tools(value: &Value, param: &str) -> Result<Vec<FunctionTool>, DomainError> {
    let Value::Array(list) = value else {
        return Err(DomainError::invalid(param, "tools must be a list"));
    };
    if list.len() > 128 {
        return Err(DomainError::invalid(param, "at most 128 tools are allowed"));
    }
    let mut tools: Vec<FunctionTool> = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        let at = format!("{param}[{i}]");
        if tool.get("type").and_then(Value::as_str) != Some("function") {
            return Err(DomainError::invalid(
                format!("{at}.type"),
                "tool type must be 'function'",
            ));
        }
        let Some(Value::Object(f)) = tool.get("function") else {
            return Err(DomainError::invalid(
                format!("{at}.function"),
                "a function tool needs a `function` object",
            ));
        };
        let name = function_name(f.get("name"), &format!("{at}.function.name"))?;
        if tools.iter().any(|t| t.name == name) {
            return Err(DomainError::invalid(
                format!("{at}.function.name"),
                format!("function '{name}' is defined twice"),
            ));
        }
        let description = match f.get("description") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => {
                return Err(DomainError::invalid(
                    format!("{at}.function.description"),
                    "description must be a string",
                ));
            }
        };
        let parameters = match f.get("parameters") {
            None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
            Some(schema) => {
                let p = format!("{at}.function.parameters");
                check_schema(schema, &p)?;
                if schema.get("type").is_some_and(|t| t != "object") {
                    return Err(DomainError::invalid(
                        p,
                        format!("parameters of '{name}' must be a JSON schema of type 'object'"),
                    ));
                }
                schema.clone()
            }
        };
        tools.push(FunctionTool {
            name,
            description,
            parameters,
        });
    }
    Ok(tools)
}

fn function_name(value: Option<&Value>, param: &str) -> Result<String, DomainError> {
    let Some(Value::String(name)) = value else {
        return Err(DomainError::invalid(param, "a function needs a `name`"));
    };
    let ok = (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        return Err(DomainError::invalid(
            param,
            format!("function name '{name}' must be 1-64 characters of a-z, A-Z, 0-9, _ or -"),
        ));
    }
    Ok(name.clone())
}

/// The structural rules of a JSON schema that a constraint and a model can use: objects all the
/// way down, known `type` names, `properties` of schemas, `required` and `enum` lists.
pub fn check_schema(schema: &Value, param: &str) -> Result<(), DomainError> {
    let bad = |why: &str| DomainError::invalid(param, format!("not a JSON schema: {why}"));
    let Value::Object(s) = schema else {
        return Err(bad("a schema must be an object"));
    };
    let known = |t: &Value| t.as_str().is_some_and(|t| SCHEMA_TYPES.contains(&t));
    match s.get("type") {
        None => {}
        Some(Value::Array(ts)) if !ts.is_empty() && ts.iter().all(known) => {}
        Some(t) if known(t) => {}
        Some(t) => return Err(bad(&format!("unknown type {t}"))),
    }
    match s.get("properties") {
        None => {}
        Some(Value::Object(props)) => {
            for (k, v) in props {
                check_schema(v, &format!("{param}.properties.{k}"))?;
            }
        }
        Some(_) => return Err(bad("`properties` must be an object")),
    }
    if let Some(r) = s.get("required")
        && !r.as_array().is_some_and(|r| r.iter().all(Value::is_string))
    {
        return Err(bad("`required` must be a list of property names"));
    }
    if s.get("enum").is_some_and(|e| !e.is_array()) {
        return Err(bad("`enum` must be a list"));
    }
    match s.get("items") {
        None | Some(Value::Bool(_)) => {}
        Some(items) => check_schema(items, &format!("{param}.items"))?,
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        match s.get(key) {
            None => {}
            Some(Value::Array(list)) => {
                for (i, sub) in list.iter().enumerate() {
                    check_schema(sub, &format!("{param}.{key}[{i}]"))?;
                }
            }
            Some(_) => return Err(bad(&format!("`{key}` must be a list of schemas"))),
        }
    }
    Ok(())
}

/// Parse `tool_choice` against the tools offered; `None` means `"none"` (no tools).
pub fn parse_tool_choice(
    value: Option<&Value>,
    tools: &[FunctionTool],
) -> Result<Option<ToolChoice>, DomainError> {
    let bad = |m: String| DomainError::invalid("tool_choice", m);
    let choice = match value {
        None | Some(Value::Null) => ToolChoice::Auto,
        Some(Value::String(s)) => match s.as_str() {
            "none" => return Ok(None),
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(bad(format!(
                    "tool_choice must be 'none', 'auto', 'required' or a named function, not \
                     '{other}'"
                )));
            }
        },
        Some(Value::Object(o)) => {
            let name = o
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str);
            match (o.get("type").and_then(Value::as_str), name) {
                (Some("function"), Some(name)) => ToolChoice::Named(name.to_owned()),
                _ => {
                    return Err(bad(
                        "a named tool_choice is {\"type\": \"function\", \"function\": {\"name\": …}}"
                            .to_owned(),
                    ));
                }
            }
        }
        Some(_) => return Err(bad("tool_choice must be a string or an object".to_owned())),
    };
    if tools.is_empty() {
        return Err(bad("tool_choice needs `tools`".to_owned()));
    }
    if let ToolChoice::Named(name) = &choice
        && !tools.iter().any(|t| &t.name == name)
    {
        return Err(bad(format!(
            "tool_choice names '{name}', which is not in tools"
        )));
    }
    Ok(Some(choice))
}

/// Parse an assistant message's `tool_calls` (`param` names the message in errors).
pub fn parse_tool_calls(value: &Value, param: &str) -> Result<Vec<ToolCall>, DomainError> {
    let Value::Array(list) = value else {
        return Err(DomainError::invalid(param, "tool_calls must be a list"));
    };
    list.iter()
        .enumerate()
        .map(|(i, call)| {
            let at = format!("{param}[{i}]");
            let Some(Value::Object(f)) = call.get("function") else {
                return Err(DomainError::invalid(
                    format!("{at}.function"),
                    "a tool call needs a `function` object",
                ));
            };
            let name = function_name(f.get("name"), &format!("{at}.function.name"))?;
            let arguments = match f.get("arguments") {
                Some(Value::String(s)) => s.clone(),
                // Training files sometimes carry the arguments as an object.
                Some(Value::Object(o)) => Value::Object(o.clone()).to_string(),
                None | Some(Value::Null) => "{}".to_owned(),
                Some(_) => {
                    return Err(DomainError::invalid(
                        format!("{at}.function.arguments"),
                        "arguments must be a JSON string",
                    ));
                }
            };
            let id = match call.get("id") {
                Some(Value::String(id)) if !id.is_empty() => id.clone(),
                _ => format!("call_{i}"),
            };
            Ok(ToolCall {
                id,
                name,
                arguments,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
