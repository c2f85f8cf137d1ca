//! The wire types of the Responses API (OpenAI's schema names). Items are JSON objects: the
//! handler reads and checks them ([`super::input`]) and writes them back in OpenAI's shapes.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `POST /v1/responses`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct CreateResponseRequest {
    /// Model id: the base model, `ft:…`, `ft:…:ckpt-step-N`, a loaded adapter or an ensemble.
    #[schema(min_length = 1)]
    pub model: String,
    /// A string (one user message) or a list of items: messages (`input_text` parts),
    /// `function_call` and `function_call_output` items.
    #[schema(value_type = ResponseInput)]
    pub input: Option<Value>,
    /// A system message put first (not carried over to responses that go on from this one).
    pub instructions: Option<String>,
    /// Go on from a stored response of the caller's organization: its input and output are
    /// replayed before `input`.
    pub previous_response_id: Option<String>,
    /// Keep the response for retrieval and `previous_response_id` (default true).
    pub store: Option<bool>,
    /// Stream the semantic events as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Not served: a 400 (responses run while the request waits; stream them instead).
    pub background: Option<bool>,
    /// Most tokens to generate (at most what the context leaves after the input).
    #[schema(minimum = 1)]
    pub max_output_tokens: Option<usize>,
    /// 0–2; 0 is greedy.
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, (0, 1].
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    /// 0–20 alternatives per position, returned in each `output_text` part's `logprobs`.
    #[schema(minimum = 0, maximum = 20)]
    pub top_logprobs: Option<usize>,
    /// Function tools: `[{type: "function", name, description, parameters, strict}]`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Value>,
    /// `none`, `auto` (the default with tools), `required` or `{type: "function", name}`;
    /// `required` and a named function constrain the output to a valid call.
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// Allow several calls in one answer (default true).
    pub parallel_tool_calls: Option<bool>,
    /// `{format: {type: "text"}}`, `{format: {type: "json_object"}}` or `{format: {type:
    /// "json_schema", name, schema, strict}}`: the output is constrained to the schema.
    #[schema(value_type = Option<Object>)]
    pub text: Option<Value>,
    /// Up to 16 string values (keys up to 64 characters, values up to 512), kept with the
    /// response.
    #[schema(value_type = Option<HashMap<String, String>>)]
    pub metadata: Option<Value>,
    /// `disabled` (the default: an input beyond the context is a 400) or `auto` (the oldest
    /// items are dropped until it fits).
    #[schema(value_type = Option<Truncation>)]
    pub truncation: Option<String>,
    /// Accepted and ignored: the served models do not reason.
    #[schema(value_type = Option<Object>)]
    pub reasoning: Option<Value>,
    /// `message.output_text.logprobs` returns log-probabilities; other values are accepted and
    /// ignored.
    pub include: Option<Vec<String>>,
    /// Sampling seed (an extension; the llama.cpp engine honours it).
    pub seed: Option<i64>,
    /// End-user id (ignored).
    pub user: Option<String>,
}

/// `input` as the spec states it (the handler reads it as JSON and checks each item).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ResponseInput {
    /// One user message.
    Text(String),
    /// Items, at least one.
    #[schema(value_type = Vec<Object>)]
    Items(Vec<Value>),
}

/// `truncation`'s values.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Truncation {
    /// Drop the oldest items until the input fits.
    Auto,
    /// An input beyond the context is a 400.
    Disabled,
}

/// Token counts in the Responses API's shape.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResponseUsage {
    /// Input tokens.
    pub input_tokens: usize,
    /// `{cached_tokens, cache_write_tokens}` (both 0).
    #[schema(value_type = Object)]
    pub input_tokens_details: Value,
    /// Generated tokens.
    pub output_tokens: usize,
    /// `{reasoning_tokens: 0}`.
    #[schema(value_type = Object)]
    pub output_tokens_details: Value,
    /// Sum.
    pub total_tokens: usize,
}

/// `object: "response"`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ResponseObject {
    /// `resp_…`.
    pub id: String,
    /// Always `response`.
    pub object: String,
    /// Unix seconds.
    pub created_at: u64,
    /// When it finished (Unix seconds).
    pub completed_at: Option<u64>,
    /// `in_progress`, `completed`, `incomplete` or `failed`.
    pub status: String,
    /// Why a failed response failed: `{code, message}`.
    #[schema(value_type = Option<Object>)]
    pub error: Option<Value>,
    /// Why an incomplete response stopped: `{reason: "max_output_tokens"}`.
    #[schema(value_type = Option<Object>)]
    pub incomplete_details: Option<Value>,
    /// The request's instructions.
    pub instructions: Option<String>,
    /// The request's limit.
    pub max_output_tokens: Option<usize>,
    /// The model that answered.
    pub model: String,
    /// Output items: a `message` with `output_text` parts, or `function_call` items.
    #[schema(value_type = Vec<Object>)]
    pub output: Vec<Value>,
    /// Several calls allowed.
    pub parallel_tool_calls: bool,
    /// The response this one goes on from.
    pub previous_response_id: Option<String>,
    /// `{effort: null, summary: null}`.
    #[schema(value_type = Object)]
    pub reasoning: Value,
    /// Whether it is kept.
    pub store: bool,
    /// As asked (1 when not).
    pub temperature: f64,
    /// `{format: …}` as asked.
    #[schema(value_type = Object)]
    pub text: Value,
    /// As asked.
    #[schema(value_type = Object)]
    pub tool_choice: Value,
    /// As asked.
    #[schema(value_type = Vec<Object>)]
    pub tools: Vec<Value>,
    /// As asked (1 when not).
    pub top_p: f64,
    /// `disabled` or `auto`.
    pub truncation: String,
    /// Token counts.
    pub usage: Option<ResponseUsage>,
    /// The request's metadata.
    #[schema(value_type = Object)]
    pub metadata: Value,
    /// As asked.
    pub user: Option<String>,
    /// Always false.
    pub background: bool,
}

/// `DELETE /v1/responses/{id}`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct DeletedResponse {
    /// The id.
    pub id: String,
    /// Always `response`.
    pub object: &'static str,
    /// Always true.
    pub deleted: bool,
}

/// `GET /v1/responses/{id}/input_items`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct InputItemList {
    /// Always `list`.
    pub object: &'static str,
    /// Items, each with its id.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<Value>,
    /// The first item's id.
    pub first_id: Option<String>,
    /// The last item's id.
    pub last_id: Option<String>,
    /// More items after the last.
    pub has_more: bool,
}

/// Query of `GET /v1/responses/{id}/input_items`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InputItemsQuery {
    /// 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// An item id: list the items after it.
    pub after: Option<String>,
    /// `desc` (the default: last item first) or `asc`.
    #[param(pattern = "^(asc|desc)$")]
    pub order: Option<String>,
    /// Accepted and ignored.
    pub include: Option<String>,
}
