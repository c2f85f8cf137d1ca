//! Turning a [`ChatParams`] into a mistral.rs request: the conversation as the chat template
//! sees it (tools included, see [`crate::domain::tools`]), sampling, and the output constraint.

use either::Either;
use indexmap::IndexMap;
use mistralrs::core::{
    Constraint, MessageContent, NormalRequest, RequestMessage, Response, SamplingParams,
    StopTokens, ToolChoice as EngineToolChoice,
};
use serde_json::Value;
use tokio::sync::mpsc::Sender;

use crate::domain::tools::template_messages;
use crate::serve::ChatParams;

/// The conversation as the engine's chat template receives it; `template_tools` says whether
/// the template renders tools itself.
pub fn engine_messages(
    p: &ChatParams,
    template_tools: bool,
) -> Vec<IndexMap<String, MessageContent>> {
    let turns = p.template_turns();
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
    let forced = p.output_schema();
    let sampling = sampling_params(&p);
    NormalRequest {
        messages: RequestMessage::Chat {
            messages,
            enable_thinking: None,
            reasoning_effort: None,
        },
        constraint: forced
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
    let greedy = p.greedy();
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
