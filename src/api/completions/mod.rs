//! `POST /v1/completions`, the legacy text completion: a prompt string (or a list of them)
//! continued by the base or a fine-tuned model, no chat template.
//! See <https://platform.openai.com/docs/api-reference/completions/create>.

use actix_web::{HttpResponse, post, web};
use serde_json::Value;

pub mod render;
pub mod types;

use crate::api::ApiState;
use crate::api::auth::Caller;
use crate::api::chat::render::sse_response;
use crate::api::chat::{ContextBudget, make_resident};
use crate::api::error::{ApiError, ErrorResponse};
use crate::api::json_body::JsonBody;
use crate::api::sampling::{bad, in_range};
use crate::serve::ChatParams;
use render::{CompletionShape, completion_response, completion_stream};
use types::CreateCompletionRequest;

/// OpenAI's default `max_tokens` for legacy completions.
const DEFAULT_MAX_TOKENS: usize = 16;

/// The prompts of a request and its sampling.
fn validate(req: &CreateCompletionRequest) -> Result<(Vec<String>, ChatParams), ApiError> {
    crate::domain::text::storable("model", &req.model)?;
    let prompts = match &req.prompt {
        Value::String(s) => vec![s.clone()],
        Value::Array(list) if !list.is_empty() && list.iter().all(Value::is_string) => list
            .iter()
            .filter_map(|p| p.as_str().map(str::to_owned))
            .collect(),
        Value::Array(list) if !list.is_empty() => {
            return Err(bad(
                "prompt",
                "token-id prompts are not supported; send the prompt as text",
            ));
        }
        _ => {
            return Err(bad(
                "prompt",
                "prompt must be a string or a non-empty list of strings",
            ));
        }
    };
    if req.suffix.as_deref().is_some_and(|s| !s.is_empty()) {
        return Err(bad("suffix", "suffix (insertion) is not supported"));
    }
    let n = req.sampling.n.unwrap_or(1);
    if req.best_of.is_some_and(|b| b != n) {
        return Err(bad(
            "best_of",
            "best_of is not supported; leave it out or set it equal to n",
        ));
    }
    in_range(req.logprobs, 0, 5, "logprobs")?;
    if req.logprobs.is_some() && req.echo == Some(true) {
        return Err(bad(
            "echo",
            "echo with logprobs is not supported (prompt log-probabilities are not computed)",
        ));
    }
    if req.max_tokens == Some(0) {
        return Err(bad("max_tokens", "max_tokens must be at least 1"));
    }
    let sampled = req.sampling.params()?;
    Ok((
        prompts,
        ChatParams {
            logprobs: req.logprobs.is_some(),
            top_logprobs: req.logprobs.unwrap_or(0),
            seed: req.seed.map(|s| s as u64),
            ..sampled
        },
    ))
}

/// Create a completion.
#[utoipa::path(operation_id = "create_completion",
    tag = "Completions", request_body = CreateCompletionRequest,
    responses((status = 200, body = types::CreateCompletionResponse,
               description = "A completion, or with `stream: true` a text/event-stream of chunks"),
              (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
              (status = 503, body = ErrorResponse)))]
#[post("/v1/completions")]
#[tracing::instrument(skip_all, fields(model = %body.model))]
pub async fn create_completion(
    state: web::Data<ApiState>,
    caller: Caller,
    body: JsonBody<CreateCompletionRequest>,
) -> Result<HttpResponse, ApiError> {
    respond(&state, &caller, body.into_inner()).await
}

/// Answer a completion request (the handler's work; batches call it too).
pub async fn respond(
    state: &ApiState,
    caller: &Caller,
    req: CreateCompletionRequest,
) -> Result<HttpResponse, ApiError> {
    let (prompts, params) = validate(&req)?;
    let engine = &state.engine;
    if state
        .store
        .get_ensemble(&caller.0, &req.model)
        .await?
        .is_some()
    {
        return Err(ApiError::invalid(
            format!(
                "'{}' is an ensemble, which answers chat completions only",
                req.model
            ),
            Some("model"),
        ));
    }
    make_resident(state, caller, &req.model).await?;
    let mut generations = Vec::with_capacity(prompts.len());
    let mut prompt_tokens = 0;
    for prompt in &prompts {
        let mut p = params.clone();
        let asked = req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS);
        let counted = engine.text_tokens(&req.model, prompt).await;
        if let Some(tokens) = counted {
            prompt_tokens += tokens;
            let budget = ContextBudget {
                prompt: tokens,
                context: engine.context_len(),
                prompt_param: "prompt",
                limit_param: "max_tokens",
            };
            // Without an explicit max_tokens, the default shrinks to the room left.
            p.max_tokens = Some(match req.max_tokens {
                Some(_) => budget.fit(Some(asked))?,
                None => budget.fit(None)?.min(asked),
            });
        } else {
            p.max_tokens = Some(asked);
        }
        let mut generation = engine
            .complete(&req.model, prompt.clone(), p, req.stream)
            .await?;
        if let Some(tokens) = counted {
            // Streamed completion chunks may carry no usage: the count comes from here.
            generation.set_prompt_tokens(tokens);
        }
        generations.push(generation);
    }
    let shape = CompletionShape {
        model: req.model.clone(),
        n: params.n,
        echo: req.echo.unwrap_or(false).then_some(prompts),
        include_usage: req.stream_options.as_ref().is_some_and(|o| o.include_usage),
        prompt_tokens,
    };
    if req.stream {
        return Ok(sse_response(completion_stream(generations, shape)));
    }
    let mut done = Vec::with_capacity(generations.len());
    for g in &mut generations {
        done.push(g.finish().await?);
    }
    Ok(HttpResponse::Ok().json(completion_response(done, &shape)))
}
