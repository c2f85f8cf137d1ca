//! `POST /v1/chat/completions`: validate, route `model` to a resident engine model (loading a
//! fine-tuned one on demand), generate, render OpenAI's response or its SSE stream.
//! See <https://platform.openai.com/docs/api-reference/chat/create>.

use std::path::Path;

use actix_web::post;
use actix_web::{HttpResponse, web};
use mistralrs::core::Response;

pub mod render;
pub mod types;
pub mod validate;

use crate::api::ApiState;
use crate::api::auth::Caller;
use crate::api::error::{ApiError, ErrorResponse};
use crate::serve::ServeError;
use render::{StreamShape, completion_from, sse_stream};
use types::CreateChatCompletionRequest;
use validate::validate;

/// 404 `model_not_found`, worded as OpenAI does.
pub fn model_not_found(model: &str) -> ApiError {
    ApiError::not_found_model(model)
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        match e {
            ServeError::Invalid(m) => ApiError::invalid(m, None),
            ServeError::Load { .. } => ApiError::unavailable(e.to_string()),
            ServeError::Engine(_) => ApiError::internal(e),
        }
    }
}

/// The completion budget: what the client asked for, or without `max_tokens` all the room the
/// context leaves after the prompt; a prompt that does not fit, or a `max_tokens` beyond the
/// room, is a 400 with the numbers (as OpenAI answers).
fn fit_context(
    req: &CreateChatCompletionRequest,
    prompt: usize,
    context: usize,
    asked: Option<usize>,
) -> Result<usize, ApiError> {
    if prompt >= context {
        return Err(ApiError::invalid(
            format!(
                "This model's maximum context length is {context} tokens. However, your \
                 messages resulted in {prompt} tokens. Please reduce the length of the messages."
            ),
            Some("messages"),
        )
        .with_code("context_length_exceeded"));
    }
    let room = context - prompt;
    match asked {
        Some(m) if m > room => {
            let param = if req.max_completion_tokens.is_some() {
                "max_completion_tokens"
            } else {
                "max_tokens"
            };
            Err(ApiError::invalid(
                format!(
                    "{param} is too large: {m}. This model's maximum context length is {context} \
                     tokens and your messages resulted in {prompt} tokens, which leaves room for \
                     {room} completion tokens."
                ),
                Some(param),
            )
            .with_code("context_length_exceeded"))
        }
        Some(m) => Ok(m),
        None => Ok(room),
    }
}

/// Create a chat completion.
#[utoipa::path(operation_id = "create_chat_completion",
    tag = "Chat", request_body = CreateChatCompletionRequest,
    responses((status = 200, body = types::CreateChatCompletionResponse,
               description = "A completion, or with `stream: true` a text/event-stream of chunks"),
              (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
              (status = 503, body = ErrorResponse)))]
#[post("/v1/chat/completions")]
pub async fn create_chat_completion(
    state: web::Data<ApiState>,
    caller: Caller,
    body: web::Json<CreateChatCompletionRequest>,
) -> Result<HttpResponse, ApiError> {
    let req = body.into_inner();
    let mut params = validate(&req)?;
    let engine = &state.engine;
    if req.model != engine.base_name() {
        let row = state
            .store
            .get_model(&caller.0, &req.model)
            .await?
            .ok_or_else(|| model_not_found(&req.model))?;
        engine
            .ensure_loaded(&req.model, Path::new(&row.path))
            .await?;
    }
    let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
    let n = params.n;
    let prompt_tokens = engine.prompt_tokens(&req.model, &params.messages).await;
    if let Some(prompt) = prompt_tokens {
        params.max_tokens = Some(fit_context(
            &req,
            prompt,
            engine.context_len(),
            params.max_tokens,
        )?);
    }
    let max_tokens = params.max_tokens;
    let mut generation = engine.chat(&req.model, params, req.stream).await?;
    if req.stream {
        return Ok(HttpResponse::Ok()
            .content_type("text/event-stream")
            .insert_header(("Cache-Control", "no-cache"))
            .streaming(sse_stream(
                generation,
                req.model.clone(),
                StreamShape {
                    include_usage,
                    n,
                    max_tokens,
                    prompt_tokens,
                },
            )));
    }
    match generation.rx.recv().await {
        Some(Response::Done(done)) => {
            Ok(HttpResponse::Ok().json(completion_from(done, &req.model)))
        }
        Some(Response::ValidationError(e)) => Err(ApiError::invalid(e.to_string(), None)),
        Some(Response::ModelError(msg, _)) | Some(Response::CompletionModelError(msg, _)) => {
            Err(ApiError::internal(format!("model error: {msg}")))
        }
        Some(Response::InternalError(e)) => Err(ApiError::internal(e)),
        Some(_) => Err(ApiError::internal("unexpected engine response")),
        None => Err(ApiError::unavailable(
            "the model stopped before answering; try again".to_owned(),
        )),
    }
}
