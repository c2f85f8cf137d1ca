//! `POST /v1/chat/completions`: validate, route `model` to a resident engine model (loading a
//! fine-tuned one on demand), generate, render OpenAI's response or its SSE stream.
//! See <https://platform.openai.com/docs/api-reference/chat/create>.

use actix_web::post;
use actix_web::{HttpResponse, web};

pub mod ensemble;
pub mod render;
pub mod tool_calls;
pub mod types;
pub mod validate;

use crate::api::ApiState;
use crate::api::auth::Caller;
use crate::api::error::{ApiError, ErrorResponse};
use crate::api::json_body::JsonBody;
use render::{StreamShape, completion_from, sse_response, sse_stream};
use types::CreateChatCompletionRequest;
use validate::validate;

/// Make `model` (the base, or a fine-tuned model of the caller's organization) resident in the
/// engine, loading it on first use.
pub async fn make_resident(state: &ApiState, caller: &Caller, model: &str) -> Result<(), ApiError> {
    Ok(state.models().make_resident(&caller.0, model).await?)
}

/// A prompt's place in the context window.
#[derive(Debug, Clone, Copy)]
pub struct ContextBudget {
    /// Prompt tokens.
    pub prompt: usize,
    /// Prompt plus completion tokens the model can hold.
    pub context: usize,
    /// The request parameter holding the prompt (`messages`, `prompt`).
    pub prompt_param: &'static str,
    /// The request parameter that sets the completion's length.
    pub limit_param: &'static str,
}

impl ContextBudget {
    /// The completion budget: what the client asked for, or without one all the room the
    /// context leaves after the prompt; a prompt that does not fit, or a limit beyond the room,
    /// is a 400 with the numbers (as OpenAI answers).
    pub fn fit(&self, asked: Option<usize>) -> Result<usize, ApiError> {
        let Self {
            prompt,
            context,
            prompt_param,
            limit_param: param,
        } = *self;
        if prompt >= context {
            return Err(ApiError::invalid(
                format!(
                    "This model's maximum context length is {context} tokens. However, your \
                     {prompt_param} resulted in {prompt} tokens. Please reduce the length of the \
                     {prompt_param}."
                ),
                Some(prompt_param),
            )
            .with_code("context_length_exceeded"));
        }
        let room = context - prompt;
        match asked {
            Some(m) if m > room => Err(ApiError::invalid(
                format!(
                    "{param} is too large: {m}. This model's maximum context length is {context} \
                     tokens and your {prompt_param} resulted in {prompt} tokens, which leaves room for \
                     {room} completion tokens."
                ),
                Some(param),
            )
            .with_code("context_length_exceeded")),
            Some(m) => Ok(m),
            None => Ok(room),
        }
    }
}

/// Count the prompt's tokens on `model` and fit the completion's limit into the context left
/// (a 400 when it does not fit); the prompt tokens, when the engine could count them.
async fn fit_completion(
    state: &ApiState,
    model: &str,
    req: &CreateChatCompletionRequest,
    params: &mut crate::serve::ChatParams,
) -> Result<Option<usize>, ApiError> {
    let prompt_tokens = state.engine.prompt_tokens(model, params).await;
    if let Some(prompt) = prompt_tokens {
        let limit_param = if req.max_completion_tokens.is_some() {
            "max_completion_tokens"
        } else {
            "max_tokens"
        };
        let budget = ContextBudget {
            prompt,
            context: state.engine.context_len(),
            prompt_param: "messages",
            limit_param,
        };
        params.max_tokens = Some(budget.fit(params.max_tokens)?);
    }
    Ok(prompt_tokens)
}

/// Create a chat completion.
#[utoipa::path(operation_id = "create_chat_completion",
    tag = "Chat", request_body = CreateChatCompletionRequest,
    responses((status = 200, body = types::CreateChatCompletionResponse,
               description = "A completion, or with `stream: true` a text/event-stream of chunks"),
              (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
              (status = 503, body = ErrorResponse)))]
#[post("/v1/chat/completions")]
#[tracing::instrument(skip_all, fields(model = %body.model))]
pub async fn create_chat_completion(
    state: web::Data<ApiState>,
    caller: Caller,
    body: JsonBody<CreateChatCompletionRequest>,
) -> Result<HttpResponse, ApiError> {
    respond(&state, &caller, body.into_inner()).await
}

/// Answer a chat request (the handler's work; batches call it too).
pub async fn respond(
    state: &ApiState,
    caller: &Caller,
    req: CreateChatCompletionRequest,
) -> Result<HttpResponse, ApiError> {
    let mut params = validate(&req)?;
    let engine = &state.engine;
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    if req.model != engine.base_name()
        && let Some(e) = state.store.get_ensemble(&caller.0, &req.model).await?
    {
        // Every member shares the base's template and tokenizer: the base counts the prompt.
        fit_completion(state, engine.base_name(), &req, &mut params).await?;
        return ensemble::answer(state, caller, e, params, req.stream, include_usage).await;
    }
    make_resident(state, caller, &req.model).await?;
    let n = params.n;
    let prompt_tokens = fit_completion(state, &req.model, &req, &mut params).await?;
    let mut generation = engine.chat(&req.model, params, req.stream).await?;
    if req.stream {
        if let Some(tokens) = prompt_tokens {
            generation.set_prompt_tokens(tokens);
        }
        return Ok(sse_response(sse_stream(
            generation,
            req.model.clone(),
            StreamShape { include_usage, n },
        )));
    }
    let done = generation.finish().await?;
    Ok(HttpResponse::Ok().json(completion_from(done, &req.model)))
}
