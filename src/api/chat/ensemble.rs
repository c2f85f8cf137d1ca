//! Chat completions of an ensemble (`/v1/ensembles`), answered by [`crate::answers::ensemble`]
//! and rendered here: an ordinary completion of the winner with usage summed over every answer
//! generated, plus an `ensemble` extension field; a stream sends the winner once it is chosen.

use actix_web::HttpResponse;
use actix_web::web::Bytes;

use super::completion_from;
use super::render::{random_id, sse_data, sse_response};
use super::types::{
    ChatCompletionChunk, ChunkChoice, ChunkDelta, CompletionUsage, CreateChatCompletionResponse,
    EnsembleReport, MemberAnswer,
};
use crate::answers::ensemble::Outcome;
use crate::api::ApiState;
use crate::api::auth::Caller;
use crate::api::error::ApiError;
use crate::serve::ChatParams;
use crate::serve::events::FinishReason;
use crate::store::ensembles::EnsembleRow;

/// Answer a chat request to `ensemble`; `params` are validated and budgeted.
pub async fn answer(
    state: &ApiState,
    caller: &Caller,
    ensemble: EnsembleRow,
    params: ChatParams,
    stream: bool,
    include_usage: bool,
) -> Result<HttpResponse, ApiError> {
    let wants_logprobs = params.logprobs;
    let name = ensemble.id.as_str();
    let Outcome {
        answered,
        winner,
        scores,
        layer,
    } = state
        .models()
        .answer_with_ensemble(&caller.0, &ensemble, &params)
        .await?;
    let report = EnsembleReport {
        strategy: ensemble.strategy.clone(),
        winner: answered[winner].model.clone(),
        layer,
        threshold: layer.and(ensemble.threshold),
        answers: answered
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let answer = a.answer();
                MemberAnswer {
                    model: a.model.clone(),
                    content: answer.text,
                    mean_logprob: answer.mean_logprob,
                    score: scores.as_ref().map(|s| s[i]),
                }
            })
            .collect(),
    };
    let usage = CompletionUsage {
        prompt_tokens: answered.iter().map(|a| a.done.usage.prompt_tokens).sum(),
        completion_tokens: answered
            .iter()
            .map(|a| a.done.usage.completion_tokens)
            .sum(),
        total_tokens: 0,
    };
    let mut response = completion_from(
        answered
            .into_iter()
            .nth(winner)
            .expect("the winner is one of the answers")
            .done,
        name,
    );
    response.usage = CompletionUsage {
        total_tokens: usage.prompt_tokens + usage.completion_tokens,
        ..usage
    };
    if !wants_logprobs {
        for c in &mut response.choices {
            c.logprobs = None;
        }
    }
    response.ensemble = Some(report);
    if stream {
        return Ok(sse_response(futures_util::stream::iter(
            chunks_of(response, include_usage)
                .into_iter()
                .map(Ok::<_, actix_web::Error>),
        )));
    }
    Ok(HttpResponse::Ok().json(response))
}

/// The stream of a chosen answer: the role, the text (with its log-probabilities when asked),
/// the finish chunk carrying the report, the usage chunk with `include_usage`, `[DONE]`.
fn chunks_of(response: CreateChatCompletionResponse, include_usage: bool) -> Vec<Bytes> {
    let id = random_id("chatcmpl");
    let chunk = |choices: Vec<ChunkChoice>, usage: Option<CompletionUsage>, last: bool| {
        sse_data(&ChatCompletionChunk {
            id: id.clone(),
            object: "chat.completion.chunk",
            created: response.created,
            model: response.model.clone(),
            system_fingerprint: None,
            choices,
            usage: include_usage.then_some(usage),
            ensemble: if last {
                response.ensemble.clone()
            } else {
                None
            },
        })
    };
    let mut out = vec![chunk(
        vec![ChunkChoice::new(0, ChunkDelta::first(), None)],
        None,
        false,
    )];
    if let Some(c) = response.choices.first() {
        let text = c.message.content.clone().unwrap_or_default();
        if !text.is_empty() {
            let mut piece = ChunkChoice::new(0, ChunkDelta::text(&text), None);
            piece.logprobs = c.logprobs.clone();
            out.push(chunk(vec![piece], None, false));
        }
        let reason = Some(FinishReason::from_engine(&c.finish_reason).as_str());
        out.push(chunk(
            vec![ChunkChoice::new(0, ChunkDelta::default(), reason)],
            None,
            true,
        ));
    }
    if include_usage {
        out.push(chunk(Vec::new(), Some(response.usage.clone()), false));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    out
}
