//! A chat request as every engine takes it (already validated): the conversation, sampling,
//! and the output constraint.

use crate::domain::tools::{FunctionTool, TemplateTurn, ToolCall, ToolChoice, call_schema};

/// One message of the conversation.
#[derive(Debug, Clone, Default)]
pub struct ChatTurn {
    /// `system`, `user`, `assistant`, `tool`.
    pub role: String,
    /// Text.
    pub content: String,
    /// The assistant's tool calls.
    pub tool_calls: Vec<ToolCall>,
    /// The call a `tool` message answers.
    pub tool_call_id: Option<String>,
}

impl ChatTurn {
    /// A plain text message.
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_owned(),
            content: content.to_owned(),
            ..Self::default()
        }
    }
}

/// The tools a request offers and how they must be used (`tool_choice: none` is no `ToolUse`).
#[derive(Debug, Clone)]
pub struct ToolUse {
    /// The functions.
    pub tools: Vec<FunctionTool>,
    /// `auto`, `required` or a named function.
    pub choice: ToolChoice,
    /// `parallel_tool_calls` (default true).
    pub parallel: bool,
}

/// Validated generation parameters.
#[derive(Debug, Clone, Default)]
pub struct ChatParams {
    /// The conversation.
    pub messages: Vec<ChatTurn>,
    /// `None` or 0 → greedy.
    pub temperature: Option<f64>,
    /// Nucleus mass.
    pub top_p: Option<f64>,
    /// Choices.
    pub n: usize,
    /// Stop sequences.
    pub stop: Vec<String>,
    /// Most generated tokens.
    pub max_tokens: Option<usize>,
    /// Presence penalty.
    pub presence_penalty: Option<f32>,
    /// Frequency penalty.
    pub frequency_penalty: Option<f32>,
    /// Token id → bias.
    pub logit_bias: Option<std::collections::HashMap<u32, f32>>,
    /// Return log-probabilities.
    pub logprobs: bool,
    /// Alternatives per position.
    pub top_logprobs: usize,
    /// JSON-schema constraint (`{"type": "object"}` for `json_object`).
    pub json_schema: Option<serde_json::Value>,
    /// Tools offered, if any.
    pub tools: Option<ToolUse>,
    /// The sampling seed (llama.cpp honours it; mistral.rs has one engine-wide RNG).
    pub seed: Option<u64>,
}

impl ChatParams {
    /// The conversation as a chat template sees it.
    pub fn template_turns(&self) -> Vec<TemplateTurn<'_>> {
        self.messages
            .iter()
            .map(|m| TemplateTurn {
                role: &m.role,
                content: &m.content,
                tool_calls: &m.tool_calls,
                tool_call_id: m.tool_call_id.as_deref(),
            })
            .collect()
    }

    /// The JSON schema the output must follow: a forced call (`tool_choice` required or named)
    /// or the `response_format`'s.
    pub fn output_schema(&self) -> Option<serde_json::Value> {
        let forced = self
            .tools
            .as_ref()
            .and_then(|t| call_schema(&t.tools, &t.choice, t.parallel));
        forced.or_else(|| self.json_schema.clone())
    }

    /// Greedy decoding (no temperature, or 0).
    pub fn greedy(&self) -> bool {
        self.temperature.is_none_or(|t| t == 0.0)
    }
}
