//! The wire types of `POST /v1/chat/completions` (OpenAI's schema names).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A chat message in a request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletionRequestMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Text, or a list of `{type: "text", text}` parts.
    #[schema(value_type = Object)]
    pub content: Option<Value>,
    /// Optional participant name (ignored).
    #[serde(default)]
    pub name: Option<String>,
}

/// `stream_options`.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletionStreamOptions {
    /// Send a last chunk with `usage` (and `usage: null` on every other chunk).
    #[serde(default)]
    pub include_usage: bool,
}

/// The request body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct CreateChatCompletionRequest {
    /// Model id: the base model, `ft:…`, `ft:…:ckpt-step-N`, or a loaded adapter name.
    pub model: String,
    /// The conversation (at least one message).
    pub messages: Vec<ChatCompletionRequestMessage>,
    /// 0–2; 0 is greedy.
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, (0, 1].
    pub top_p: Option<f64>,
    /// Choices to generate, 1–128.
    pub n: Option<usize>,
    /// Up to 4 stop sequences (a string or a list).
    #[schema(value_type = Option<Object>)]
    pub stop: Option<Value>,
    /// Deprecated alias of `max_completion_tokens`.
    pub max_tokens: Option<usize>,
    /// Most tokens to generate.
    pub max_completion_tokens: Option<usize>,
    /// -2–2.
    pub presence_penalty: Option<f32>,
    /// -2–2.
    pub frequency_penalty: Option<f32>,
    /// Token id → bias (-100–100).
    #[schema(value_type = Option<Object>)]
    pub logit_bias: Option<Value>,
    /// Return log-probabilities of the chosen tokens.
    pub logprobs: Option<bool>,
    /// 0–20 alternatives per position (needs `logprobs`).
    pub top_logprobs: Option<usize>,
    /// Best effort: the engine has one fixed-seed RNG, so per-request seeds are not honoured.
    pub seed: Option<i64>,
    /// `{type: "text"}` only (`json_object`/`json_schema` are refused).
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Value>,
    /// Not supported yet (400).
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Value>,
    /// Not supported yet (400 unless `none`).
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// Stream chunks as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<ChatCompletionStreamOptions>,
    /// End-user id (ignored).
    pub user: Option<String>,
    /// Accepted and ignored.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
}

/// Token counts.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CompletionUsage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Sum.
    pub total_tokens: usize,
}

/// The assistant's message.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChatCompletionResponseMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// Generated text.
    pub content: Option<String>,
    /// Always null.
    pub refusal: Option<String>,
}

/// One choice.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChatCompletionChoice {
    /// Position among the choices.
    pub index: usize,
    /// The message.
    pub message: ChatCompletionResponseMessage,
    /// `{content: [{token, logprob, bytes, top_logprobs}]}` or null.
    #[schema(value_type = Option<Object>)]
    pub logprobs: Option<Value>,
    /// `stop` or `length`.
    pub finish_reason: String,
}

/// `object: "chat.completion"`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CreateChatCompletionResponse {
    /// `chatcmpl-…`.
    pub id: String,
    /// Always `chat.completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// The choices.
    pub choices: Vec<ChatCompletionChoice>,
    /// Token counts.
    pub usage: CompletionUsage,
    /// Engine fingerprint.
    pub system_fingerprint: Option<String>,
}
