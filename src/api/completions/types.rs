//! The wire types of the legacy `POST /v1/completions` (OpenAI's schema names).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::chat::types::{ChatCompletionStreamOptions, CompletionUsage};
use crate::api::sampling::SamplingFields;

/// The request body.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct CreateCompletionRequest {
    /// Model id: the base model or a fine-tuned one.
    #[schema(min_length = 1)]
    pub model: String,
    /// A string or a non-empty list of strings (one completion group each); token arrays are
    /// refused.
    #[schema(schema_with = prompt_schema)]
    pub prompt: Value,
    /// Sampling.
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Most tokens to generate (default 16).
    #[schema(minimum = 1)]
    pub max_tokens: Option<usize>,
    /// 0–5: log-probabilities of the chosen tokens and this many alternatives.
    #[schema(minimum = 0, maximum = 5)]
    pub logprobs: Option<usize>,
    /// Put the prompt before the completion in `text`.
    pub echo: Option<bool>,
    /// Not supported (400 unless empty).
    pub suffix: Option<String>,
    /// Only 1 (or equal to `n`) is supported.
    #[schema(minimum = 1)]
    pub best_of: Option<usize>,
    /// Sampling seed: on the llama.cpp engine (the CPU default) the same seed, prompt and
    /// parameters give the same answer; mistral.rs has one engine-wide RNG and ignores it.
    pub seed: Option<i64>,
    /// Stream chunks as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Streaming options.
    pub stream_options: Option<ChatCompletionStreamOptions>,
    /// End-user id (ignored).
    pub user: Option<String>,
}

/// Legacy log-probabilities: parallel lists per generated token.
#[derive(Debug, Clone, Default, Serialize, utoipa::ToSchema)]
pub struct CompletionLogprobs {
    /// The tokens' text.
    pub tokens: Vec<String>,
    /// Their log-probabilities.
    pub token_logprobs: Vec<f64>,
    /// Per token, the alternatives' text → log-probability.
    #[schema(value_type = Vec<Object>)]
    pub top_logprobs: Vec<serde_json::Map<String, Value>>,
    /// Character offset of each token in `text`.
    pub text_offset: Vec<usize>,
}

/// One choice.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CompletionChoice {
    /// The text (with the prompt first when `echo`).
    pub text: String,
    /// Prompt index × n + choice.
    pub index: usize,
    /// With `logprobs`, else null.
    pub logprobs: Option<CompletionLogprobs>,
    /// `stop` or `length`; null on stream chunks until the choice ends.
    pub finish_reason: Option<&'static str>,
}

/// `object: "text_completion"`; a stream sends the same object per chunk.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct CreateCompletionResponse {
    /// `cmpl-…`, the same on every chunk of a stream.
    pub id: String,
    /// Always `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model that answered.
    pub model: String,
    /// The choices (empty on a stream's usage chunk).
    pub choices: Vec<CompletionChoice>,
    /// Token counts (streams: left out, or on the last chunk with `include_usage`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<CompletionUsage>,
    /// Engine fingerprint.
    pub system_fingerprint: Option<String>,
}

/// `prompt`'s schema: a string, or a non-empty list of strings.
fn prompt_schema() -> utoipa::openapi::schema::Schema {
    utoipa::openapi::schema::Schema::OneOf(
        crate::api::sampling::text_or_texts(Some(1), None).build(),
    )
}
