//! The wire types of `POST /v1/chat/completions` (OpenAI's schema names).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::api::sampling::SamplingFields;

/// Who speaks a message: the roles a request may carry (the schema of
/// [`ChatCompletionRequestMessage::role`]; the handler checks the value).
#[derive(Debug, Clone, Copy, utoipa::ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum ChatCompletionRole {
    /// Instructions.
    System,
    /// Instructions (OpenAI's newer name for `system`).
    Developer,
    /// The user.
    User,
    /// The model.
    Assistant,
    /// A tool's result.
    Tool,
}

/// A message's content as the spec states it (the handler reads it as JSON and checks it).
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum ChatMessageContent {
    /// Plain text.
    Text(String),
    /// Text parts, joined.
    Parts(Vec<ChatTextPart>),
}

/// `{"type": "text", "text": …}`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ChatTextPart {
    /// `text`.
    #[serde(rename = "type")]
    pub kind: ChatTextPartType,
    /// The text.
    pub text: String,
}

/// The one content part type served.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChatTextPartType {
    /// Text.
    Text,
}

/// A chat message in a request.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct ChatCompletionRequestMessage {
    /// `system`, `developer`, `user`, `assistant` or `tool`.
    #[schema(value_type = ChatCompletionRole)]
    pub role: String,
    /// Text, or a list of `{type: "text", text}` parts.
    #[schema(value_type = Option<ChatMessageContent>)]
    pub content: Option<Value>,
    /// Optional participant name (ignored).
    #[serde(default)]
    pub name: Option<String>,
    /// An assistant message's calls: `[{id, type: "function", function: {name, arguments}}]`.
    #[schema(value_type = Option<Vec<Object>>)]
    pub tool_calls: Option<Value>,
    /// The call a `tool` message answers (required on `tool` messages).
    pub tool_call_id: Option<String>,
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
    #[schema(min_length = 1)]
    pub model: String,
    /// The conversation (at least one message).
    #[schema(min_items = 1)]
    pub messages: Vec<ChatCompletionRequestMessage>,
    /// Sampling.
    #[serde(flatten)]
    pub sampling: SamplingFields,
    /// Deprecated alias of `max_completion_tokens`.
    #[schema(minimum = 1)]
    pub max_tokens: Option<usize>,
    /// Most tokens to generate (at most what the context leaves after the prompt; by default
    /// all of it).
    #[schema(minimum = 1)]
    pub max_completion_tokens: Option<usize>,
    /// Return log-probabilities of the chosen tokens.
    pub logprobs: Option<bool>,
    /// 0–20 alternatives per position (needs `logprobs`).
    pub top_logprobs: Option<usize>,
    /// Sampling seed: on the llama.cpp engine (the CPU default) the same seed, prompt and
    /// parameters give the same answer; mistral.rs has one engine-wide RNG and ignores it.
    pub seed: Option<i64>,
    /// `{type: "text"}`, `{type: "json_object"}` or `{type: "json_schema", json_schema:
    /// {name, schema, strict}}`: the output is constrained to the schema.
    #[schema(value_type = Option<Object>)]
    pub response_format: Option<Value>,
    /// Functions the model may call: `[{type: "function", function: {name, description,
    /// parameters}}]`, `parameters` a JSON schema of type object (at most 128 tools).
    #[schema(value_type = Option<Vec<Object>>)]
    pub tools: Option<Value>,
    /// `none`, `auto` (the default with tools), `required`, or `{type: "function", function:
    /// {name}}`; `required` and a named function constrain the output to a valid call.
    #[schema(value_type = Option<Object>)]
    pub tool_choice: Option<Value>,
    /// Allow several calls in one answer (default true).
    pub parallel_tool_calls: Option<bool>,
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

/// The function a tool call names, with its arguments as a JSON string.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FunctionCall {
    /// The function.
    pub name: String,
    /// Its arguments, JSON text.
    pub arguments: String,
}

/// A tool call of the assistant's message.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChatCompletionMessageToolCall {
    /// `call_…`; a `tool` message answering it sends it back as `tool_call_id`.
    pub id: String,
    /// Always `function`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The call.
    pub function: FunctionCall,
}

/// The assistant's message.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChatCompletionResponseMessage {
    /// Always `assistant`.
    pub role: &'static str,
    /// Generated text (null when the answer is tool calls).
    pub content: Option<String>,
    /// Always null.
    pub refusal: Option<String>,
    /// The calls, when the model called tools.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ChatCompletionMessageToolCall>>,
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
    pub logprobs: Option<ChoiceLogprobs>,
    /// `stop`, `length` or `tool_calls`.
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
    /// A ferrotune extension, on answers of an ensemble: every member's answer and how the
    /// winner was chosen (the SDK keeps it as an extra field).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<EnsembleReport>,
}

/// One alternative at a position of `logprobs.content`.
#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    /// The alternative's text.
    pub token: String,
    /// Its log-probability (`f64`, so the number reads as it always has on the wire).
    pub logprob: f64,
    /// The UTF-8 bytes of `token`.
    pub bytes: Vec<u8>,
}

/// The log-probability of one generated token.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionTokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its log-probability.
    pub logprob: f64,
    /// The token's bytes.
    pub bytes: Vec<u8>,
    /// The most likely alternatives (`top_logprobs` of them).
    pub top_logprobs: Vec<TopLogprob>,
}

/// `choices[].logprobs`: `{content, refusal: null}`.
#[derive(Debug, Clone, Serialize)]
pub struct ChoiceLogprobs {
    /// One entry per generated token, or null.
    pub content: Option<Vec<ChatCompletionTokenLogprob>>,
    /// Always null.
    pub refusal: Option<Vec<ChatCompletionTokenLogprob>>,
}

/// What a chunk adds to a choice; absent fields are left out (`{}` on the finish chunk).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ChunkDelta {
    /// `assistant`, on the first chunk only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<&'static str>,
    /// New text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Pieces of tool calls: id, type and name first, then the arguments in pieces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_calls: Option<Vec<ChoiceDeltaToolCall>>,
}

/// The function part of a streamed tool-call piece.
#[derive(Debug, Clone, Serialize)]
pub struct ChoiceDeltaFunction {
    /// On the call's first piece only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The next piece of the arguments' JSON text.
    pub arguments: String,
}

/// A piece of a streamed tool call; the SDK joins the pieces of one `index`.
#[derive(Debug, Clone, Serialize)]
pub struct ChoiceDeltaToolCall {
    /// Which call of the message.
    pub index: usize,
    /// On the call's first piece only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `function`, on the first piece only.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// Name and arguments.
    pub function: ChoiceDeltaFunction,
}

impl ChunkDelta {
    /// The first delta of every choice: `{role: "assistant", content: ""}`.
    pub fn first() -> Self {
        Self {
            role: Some("assistant"),
            content: Some(String::new()),
            tool_calls: None,
        }
    }

    /// A text delta: `{content}`.
    pub fn text(content: &str) -> Self {
        Self {
            role: None,
            content: Some(content.to_owned()),
            tool_calls: None,
        }
    }
}

/// One choice of a chunk.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkChoice {
    /// Position among the choices.
    pub index: usize,
    /// What this chunk adds.
    pub delta: ChunkDelta,
    /// The log-probability of the delta's token, or null.
    pub logprobs: Option<ChoiceLogprobs>,
    /// Null until the choice's finish chunk.
    pub finish_reason: Option<&'static str>,
}

impl ChunkChoice {
    /// A choice with no log-probabilities.
    pub fn new(index: usize, delta: ChunkDelta, finish_reason: Option<&'static str>) -> Self {
        Self {
            index,
            delta,
            logprobs: None,
            finish_reason,
        }
    }
}

/// `object: "chat.completion.chunk"`, one server-sent event of a stream.
#[derive(Debug, Clone, Serialize)]
pub struct ChatCompletionChunk {
    /// `chatcmpl-…`, the same on every chunk of a stream.
    pub id: String,
    /// Always `chat.completion.chunk`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: u64,
    /// The model that answers.
    pub model: String,
    /// Always null.
    pub system_fingerprint: Option<String>,
    /// The choices this chunk updates (empty on the usage chunk).
    pub choices: Vec<ChunkChoice>,
    /// Left out unless `stream_options.include_usage`; then null on every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub usage: Option<Option<CompletionUsage>>,
    /// On an ensemble's finish chunk: the members' answers (see the non-streamed response).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ensemble: Option<EnsembleReport>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(choices: Vec<ChunkChoice>, usage: Option<Option<CompletionUsage>>) -> String {
        let chunk = ChatCompletionChunk {
            id: "chatcmpl-1".into(),
            object: "chat.completion.chunk",
            created: 7,
            model: "m".into(),
            system_fingerprint: None,
            choices,
            usage,
            ensemble: None,
        };
        serde_json::to_string(&chunk).unwrap()
    }

    const HEAD: &str = concat!(
        r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":7,"model":"m","#,
        r#""system_fingerprint":null,"choices":"#
    );

    #[test]
    fn chunks_keep_their_wire_shape() {
        let first = chunk(vec![ChunkChoice::new(0, ChunkDelta::first(), None)], None);
        let want = concat!(
            r#"[{"index":0,"delta":{"role":"assistant","content":""},"#,
            r#""logprobs":null,"finish_reason":null}]}"#
        );
        assert_eq!(first, [HEAD, want].concat());
        let end = ChunkChoice::new(1, ChunkDelta::default(), Some("length"));
        let want = concat!(
            r#"[{"index":1,"delta":{},"logprobs":null,"finish_reason":"length"}],"#,
            r#""usage":null}"#
        );
        assert_eq!(chunk(vec![end], Some(None)), [HEAD, want].concat());
        let usage = CompletionUsage {
            prompt_tokens: 3,
            completion_tokens: 2,
            total_tokens: 5,
        };
        let want = r#"[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}"#;
        assert_eq!(chunk(vec![], Some(Some(usage))), [HEAD, want].concat());
    }

    #[test]
    fn logprobs_read_as_the_engine_f32_widened() {
        let top = TopLogprob {
            token: "a".into(),
            logprob: f64::from(-0.1f32),
            bytes: vec![97],
        };
        let entry = ChatCompletionTokenLogprob {
            token: "a".into(),
            logprob: f64::from(-0.1f32),
            bytes: vec![97],
            top_logprobs: vec![top],
        };
        let mut choice = ChunkChoice::new(0, ChunkDelta::text("a"), None);
        choice.logprobs = Some(ChoiceLogprobs {
            content: Some(vec![entry]),
            refusal: None,
        });
        let lp = r#"{"token":"a","logprob":-0.10000000149011612,"bytes":[97]"#;
        let want = [
            r#"{"index":0,"delta":{"content":"a"},"logprobs":{"content":["#,
            lp,
            r#","top_logprobs":["#,
            lp,
            r#"}]}],"refusal":null},"finish_reason":null}"#,
        ]
        .concat();
        assert_eq!(serde_json::to_string(&choice).unwrap(), want);
    }
}

/// One answer an ensemble generated.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct MemberAnswer {
    /// The model that gave it.
    pub model: String,
    /// Its text.
    pub content: String,
    /// Mean log-probability of its tokens (null for an empty answer).
    pub mean_logprob: Option<f64>,
    /// Its score under the strategy: votes (`vote`), mean log-probability (`best_logprob`),
    /// mean ROUGE-L F1 to the other answers (`consensus`); null for `layered`.
    pub score: Option<f64>,
}

/// How an ensemble's answer was chosen.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EnsembleReport {
    /// The strategy.
    pub strategy: String,
    /// The model whose answer was returned.
    pub winner: String,
    /// `layered`: `member` (the domain model was sure enough) or `fallback`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<&'static str>,
    /// `layered`: the threshold the member's mean log-probability was held to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Every answer generated, in member order (then the fallback's).
    pub answers: Vec<MemberAnswer>,
}
