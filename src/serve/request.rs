//! Turning an OpenAI chat request (already validated) into a mistral.rs request: the
//! conversation as the chat template sees it (tools included, see [`crate::domain::tools`]),
//! sampling, and the output constraint.

use either::Either;
use indexmap::IndexMap;
use mistralrs::core::{
    Constraint, MessageContent, NormalRequest, RequestMessage, Response, SamplingParams,
    StopTokens, ToolChoice as EngineToolChoice,
};
use serde_json::Value;
use tokio::sync::mpsc::Sender;

use crate::domain::tools::{
    FunctionTool, TemplateTurn, ToolCall, ToolChoice, call_schema, template_messages,
};

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
}

/// The conversation as the engine's chat template receives it; `template_tools` says whether
/// the template renders tools itself.
pub fn engine_messages(
    p: &ChatParams,
    template_tools: bool,
) -> Vec<IndexMap<String, MessageContent>> {
    let turns: Vec<TemplateTurn<'_>> = p
        .messages
        .iter()
        .map(|m| TemplateTurn {
            role: &m.role,
            content: &m.content,
            tool_calls: &m.tool_calls,
            tool_call_id: m.tool_call_id.as_deref(),
        })
        .collect();
    let offered = p.tools.as_ref().map(|t| (t.tools.as_slice(), t.parallel));
    template_messages(&turns, offered, template_tools)
        .into_iter()
        .map(|m| {
            m.into_iter()
                .map(|(k, v)| {
                    let content = match v {
                        Value::String(s) => Either::Left(s),
                        Value::Array(items) => Either::Right(
                            items
                                .into_iter()
                                .filter_map(|i| match i {
                                    Value::Object(o) => Some(o.into_iter().collect()),
                                    _ => None,
                                })
                                .collect(),
                        ),
                        other => Either::Left(other.to_string()),
                    };
                    (k, content)
                })
                .collect()
        })
        .collect()
}

/// The tools in the engine's form (the template's `tools` variable and its call parser).
pub fn engine_tools(p: &ChatParams) -> Option<Vec<mistralrs::Tool>> {
    let tools = p.tools.as_ref()?;
    let value = crate::domain::tools::template_tools_value(&tools.tools);
    serde_json::from_value(value).ok()
}

/// Build the engine request; `response` receives the results.
pub fn normal_request(
    p: ChatParams,
    response: Sender<Response>,
    stream: bool,
    model: &str,
    template_tools: bool,
) -> NormalRequest {
    let messages = engine_messages(&p, template_tools);
    let tools = engine_tools(&p);
    // `required` and a named function force the call through the output grammar; the engine's
    // parser then reads it back as a tool call.
    let forced = p
        .tools
        .as_ref()
        .and_then(|t| call_schema(&t.tools, &t.choice, t.parallel));
    let sampling = sampling_params(&p);
    NormalRequest {
        messages: RequestMessage::Chat {
            messages,
            enable_thinking: None,
            reasoning_effort: None,
        },
        constraint: forced
            .or(p.json_schema)
            .map(Constraint::JsonSchema)
            .unwrap_or(Constraint::None),
        tool_choice: tools.as_ref().map(|_| EngineToolChoice::Auto),
        tools,
        ..plain_request(sampling, response, p.logprobs, stream, model)
    }
}

/// A legacy completion of `prompt` (the conversation of `p` is not used).
pub fn completion_request(
    prompt: String,
    p: &ChatParams,
    response: Sender<Response>,
    stream: bool,
    model: &str,
) -> NormalRequest {
    NormalRequest {
        messages: RequestMessage::Completion {
            text: prompt,
            echo_prompt: false,
            best_of: None,
        },
        ..plain_request(sampling_params(p), response, p.logprobs, stream, model)
    }
}

fn plain_request(
    sampling_params: SamplingParams,
    response: Sender<Response>,
    return_logprobs: bool,
    is_streaming: bool,
    model: &str,
) -> NormalRequest {
    NormalRequest {
        messages: RequestMessage::CompletionTokens(Vec::new()),
        sampling_params,
        response,
        return_logprobs,
        is_streaming,
        id: 0,
        constraint: Constraint::None,
        suffix: None,
        tools: None,
        tool_choice: None,
        logits_processors: None,
        return_raw_logits: false,
        web_search_options: None,
        model_id: Some(model.to_owned()),
        truncate_sequence: false,
    }
}

fn sampling_params(p: &ChatParams) -> SamplingParams {
    let greedy = p.temperature.is_none_or(|t| t == 0.0);
    SamplingParams {
        temperature: if greedy { None } else { p.temperature },
        top_k: if greedy { Some(1) } else { None },
        top_p: p.top_p,
        top_n_logprobs: p.top_logprobs,
        frequency_penalty: p.frequency_penalty,
        presence_penalty: p.presence_penalty,
        stop_toks: (!p.stop.is_empty()).then(|| StopTokens::Seqs(p.stop.clone())),
        max_len: p.max_tokens,
        logits_bias: p.logit_bias.clone(),
        n_choices: p.n.max(1),
        ..SamplingParams::neutral()
    }
}
