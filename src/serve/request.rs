//! Turning an OpenAI chat request (already validated) into a mistral.rs request.

use either::Either;
use indexmap::IndexMap;
use mistralrs::core::{
    Constraint, NormalRequest, RequestMessage, Response, SamplingParams, StopTokens,
};
use tokio::sync::mpsc::Sender;

/// One message of the conversation.
#[derive(Debug, Clone)]
pub struct ChatTurn {
    /// `system`, `user`, `assistant`, `tool`.
    pub role: String,
    /// Text.
    pub content: String,
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
}

/// Build the engine request; `response` receives the results.
pub fn normal_request(
    p: ChatParams,
    response: Sender<Response>,
    stream: bool,
    model: &str,
) -> NormalRequest {
    let messages = p
        .messages
        .into_iter()
        .map(|m| {
            let mut map = IndexMap::new();
            map.insert("role".to_owned(), Either::Left(m.role));
            map.insert("content".to_owned(), Either::Left(m.content));
            map
        })
        .collect();
    let greedy = p.temperature.is_none_or(|t| t == 0.0);
    let sampling = SamplingParams {
        temperature: if greedy { None } else { p.temperature },
        top_k: if greedy { Some(1) } else { None },
        top_p: p.top_p,
        top_n_logprobs: p.top_logprobs,
        frequency_penalty: p.frequency_penalty,
        presence_penalty: p.presence_penalty,
        stop_toks: (!p.stop.is_empty()).then(|| StopTokens::Seqs(p.stop.clone())),
        max_len: p.max_tokens,
        logits_bias: p.logit_bias,
        n_choices: p.n.max(1),
        ..SamplingParams::neutral()
    };
    NormalRequest {
        messages: RequestMessage::Chat {
            messages,
            enable_thinking: None,
            reasoning_effort: None,
        },
        sampling_params: sampling,
        response,
        return_logprobs: p.logprobs,
        is_streaming: stream,
        id: 0,
        constraint: p
            .json_schema
            .map(Constraint::JsonSchema)
            .unwrap_or(Constraint::None),
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
