//! The Responses API: `POST /v1/responses` (whole or streamed as semantic events), and the
//! stored responses of an organization: `GET` / `DELETE /v1/responses/{id}`,
//! `GET /v1/responses/{id}/input_items`. A request's input items become the chat conversation
//! the engine answers, after the stored conversation of `previous_response_id`.
//! See <https://platform.openai.com/docs/api-reference/responses>.

use std::collections::VecDeque;

use actix_web::web::Bytes;
use actix_web::{HttpResponse, delete, get, post, web};
use serde_json::{Value, json};

pub mod input;
pub mod render;
pub mod types;

use crate::api::ApiState;
use crate::api::auth::Caller;
use crate::api::chat::render::{now, sse_response};
use crate::api::chat::{ContextBudget, make_resident};
use crate::api::error::{ApiError, ErrorResponse};
use crate::api::json_body::JsonBody;
use crate::api::metadata::check_metadata;
use crate::api::sampling::{bad, in_range};
use crate::domain::organization::OrganizationId;
use crate::domain::tools::ToolChoice;
use crate::serve::events::{Answer, Event};
use crate::serve::{ChatParams, Generation};
use crate::store::responses::ResponseRow;
use input::{input_items, item_id, text_format, tool_use, turns};
use render::Draft;
use types::{
    CreateResponseRequest, DeletedResponse, InputItemList, InputItemsQuery, ResponseObject,
};

/// A request checked and turned into engine parameters, with what its stored row needs.
struct Prepared {
    params: ChatParams,
    /// Every item before the input (from `previous_response_id`).
    history: Vec<Value>,
    /// The input's items as stored.
    input: Vec<Value>,
    /// `truncation: auto`.
    truncate: bool,
}

/// Check `req`, read the conversation it goes on from and build the engine parameters.
async fn prepare(
    state: &ApiState,
    org: &OrganizationId,
    req: &CreateResponseRequest,
) -> Result<Prepared, ApiError> {
    crate::domain::text::storable("model", &req.model)?;
    // Everything kept with the response must be storable (no NUL characters; `metadata` is
    // checked with its other rules).
    for (param, value) in [
        ("input", req.input.as_ref()),
        ("tools", req.tools.as_ref()),
        ("tool_choice", req.tool_choice.as_ref()),
        ("text", req.text.as_ref()),
    ] {
        if let Some(v) = value {
            crate::domain::text::storable_json(param, v)?;
        }
    }
    for (param, value) in [
        ("instructions", &req.instructions),
        ("previous_response_id", &req.previous_response_id),
        ("user", &req.user),
    ] {
        if let Some(v) = value {
            crate::domain::text::storable(param, v)?;
        }
    }
    if req.background == Some(true) {
        return Err(bad(
            "background",
            "background responses are not served; stream the response instead",
        ));
    }
    in_range(req.temperature, 0.0, 2.0, "temperature")?;
    if req.top_p.is_some_and(|p| !(p > 0.0 && p <= 1.0)) {
        return Err(bad("top_p", "top_p must be greater than 0 and at most 1"));
    }
    in_range(req.top_logprobs, 0, 20, "top_logprobs")?;
    if req.max_output_tokens == Some(0) {
        return Err(bad(
            "max_output_tokens",
            "max_output_tokens must be at least 1",
        ));
    }
    let truncate = match req.truncation.as_deref() {
        None | Some("disabled") => false,
        Some("auto") => true,
        Some(other) => {
            return Err(bad(
                "truncation",
                format!("truncation must be 'auto' or 'disabled', not '{other}'"),
            ));
        }
    };
    let history = match &req.previous_response_id {
        None => Vec::new(),
        Some(id) => {
            let prev = state.store.get_response(org, id).await?.ok_or_else(|| {
                ApiError::not_found("response", id).with_param("previous_response_id")
            })?;
            let mut items = as_list(prev.history);
            items.extend(as_list(prev.input_items));
            items.extend(as_list(
                prev.body.get("output").cloned().unwrap_or_default(),
            ));
            items
        }
    };
    let input = input_items(req.input.as_ref(), &history)?;
    let conversation: Vec<Value> = history.iter().chain(&input).cloned().collect();
    let tools = tool_use(
        req.tools.as_ref(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
    )?;
    let mut json_schema = text_format(req.text.as_ref())?;
    // A forced call is the whole answer: the text format applies to text answers only (as
    // OpenAI takes both, which the Agents SDK sends for an agent with an output type).
    if tools.as_ref().is_some_and(|t| t.choice != ToolChoice::Auto) {
        json_schema = None;
    }
    let logprobs = req.top_logprobs.is_some()
        || req
            .include
            .iter()
            .flatten()
            .any(|i| i == "message.output_text.logprobs");
    let params = ChatParams {
        messages: turns(req.instructions.as_deref(), &conversation),
        temperature: req.temperature,
        top_p: req.top_p,
        n: 1,
        max_tokens: req.max_output_tokens,
        logprobs,
        top_logprobs: req.top_logprobs.unwrap_or(0),
        json_schema,
        tools,
        seed: req.seed.map(|s| s as u64),
        ..ChatParams::default()
    };
    Ok(Prepared {
        params,
        history,
        input,
        truncate,
    })
}

/// A JSON list's elements (nothing for anything else).
fn as_list(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) => items,
        _ => Vec::new(),
    }
}

/// Drop the conversation's oldest turn after the system message (and the tool outputs it
/// leaves without their call); `false` when only one turn is left.
fn drop_oldest(params: &mut ChatParams) -> bool {
    let first = params
        .messages
        .iter()
        .position(|t| t.role != "system")
        .unwrap_or(params.messages.len());
    if params.messages.len() - first <= 1 {
        return false;
    }
    params.messages.remove(first);
    while params.messages.get(first).is_some_and(|t| t.role == "tool")
        && params.messages.len() - first > 1
    {
        params.messages.remove(first);
    }
    true
}

/// Fit the answer's limit into the context `counter` (the model, or the base for an ensemble)
/// leaves: with `truncation: auto` the oldest turns go until it fits, otherwise a 400.
async fn fit(
    state: &ApiState,
    counter: &str,
    params: &mut ChatParams,
    truncate: bool,
) -> Result<Option<usize>, ApiError> {
    let asked = params.max_tokens;
    loop {
        let Some(prompt) = state.engine.prompt_tokens(counter, params).await else {
            return Ok(None);
        };
        let budget = ContextBudget {
            prompt,
            context: state.engine.context_len(),
            prompt_param: "input",
            limit_param: "max_output_tokens",
        };
        match budget.fit(asked) {
            Ok(limit) => {
                params.max_tokens = Some(limit);
                return Ok(Some(prompt));
            }
            Err(e) if !truncate || !drop_oldest(params) => return Err(e),
            Err(_) => {}
        }
    }
}

/// The response object before any output.
fn draft_object(req: &CreateResponseRequest, metadata: Value) -> ResponseObject {
    ResponseObject {
        id: item_id("resp"),
        object: "response".to_owned(),
        created_at: now(),
        completed_at: None,
        status: "in_progress".to_owned(),
        error: None,
        incomplete_details: None,
        instructions: req.instructions.clone(),
        max_output_tokens: req.max_output_tokens,
        model: req.model.clone(),
        output: Vec::new(),
        parallel_tool_calls: req.parallel_tool_calls.unwrap_or(true),
        previous_response_id: req.previous_response_id.clone(),
        reasoning: json!({"effort": null, "summary": null}),
        store: req.store.unwrap_or(true),
        temperature: req.temperature.unwrap_or(1.0),
        text: match &req.text {
            Some(Value::Object(t)) if t.contains_key("format") => Value::Object(t.clone()),
            _ => json!({"format": {"type": "text"}}),
        },
        tool_choice: req.tool_choice.clone().unwrap_or_else(|| json!("auto")),
        tools: req.tools.clone().map(as_list).unwrap_or_default(),
        top_p: req.top_p.unwrap_or(1.0),
        truncation: req
            .truncation
            .clone()
            .unwrap_or_else(|| "disabled".to_owned()),
        usage: None,
        metadata,
        user: req.user.clone(),
        background: false,
    }
}

/// Where the engine's events come from: a generation, or an ensemble's chosen answer.
enum Source {
    Live(Box<Generation>),
    Chosen(VecDeque<Event>),
}

impl Source {
    async fn next(&mut self) -> Option<Event> {
        match self {
            Self::Live(g) => g.recv().await,
            Self::Chosen(events) => events.pop_front(),
        }
    }
}

/// An ensemble's answer as the events of one generation.
fn events_of(answer: Answer) -> VecDeque<Event> {
    let mut events = VecDeque::new();
    if let Some(c) = answer.choices.into_iter().next() {
        if c.tool_calls.is_empty() {
            events.push_back(Event::Text {
                choice: 0,
                text: c.text,
                logprobs: c.logprobs.unwrap_or_default(),
            });
        } else {
            events.push_back(Event::ToolCalls {
                choice: 0,
                calls: c.tool_calls,
            });
        }
        events.push_back(Event::Finished {
            choice: 0,
            reason: c.finish_reason,
        });
    }
    events.push_back(Event::Done(answer.usage));
    events
}

/// Start answering: an ensemble's members answer first (their usage summed), a model streams.
async fn source(
    state: &ApiState,
    caller: &Caller,
    req: &CreateResponseRequest,
    prepared: &mut Prepared,
) -> Result<Source, ApiError> {
    let engine = &state.engine;
    if req.model != engine.base_name()
        && let Some(e) = state.store.get_ensemble(&caller.0, &req.model).await?
    {
        // Every member shares the base's template and tokenizer: the base counts the input.
        fit(
            state,
            engine.base_name(),
            &mut prepared.params,
            prepared.truncate,
        )
        .await?;
        let outcome = state
            .models()
            .answer_with_ensemble(&caller.0, &e, &prepared.params)
            .await?;
        let (prompt, completion) = outcome.answered.iter().fold((0, 0), |(p, c), a| {
            (
                p + a.done.usage.prompt_tokens,
                c + a.done.usage.completion_tokens,
            )
        });
        let mut answer = outcome
            .answered
            .into_iter()
            .nth(outcome.winner)
            .map(|a| a.done)
            .ok_or_else(|| ApiError::internal("an ensemble chose no answer"))?;
        answer.usage.prompt_tokens = prompt;
        answer.usage.completion_tokens = completion;
        return Ok(Source::Chosen(events_of(answer)));
    }
    make_resident(state, caller, &req.model).await?;
    let prompt = fit(state, &req.model, &mut prepared.params, prepared.truncate).await?;
    let mut generation = engine
        .chat(&req.model, prepared.params.clone(), req.stream)
        .await?;
    if let Some(tokens) = prompt {
        generation.set_prompt_tokens(tokens);
    }
    Ok(Source::Live(Box::new(generation)))
}

/// `value` with every NUL character (which the model may generate and Postgres cannot keep)
/// replaced by U+FFFD.
fn scrub(value: Value) -> Value {
    match value {
        Value::String(s) if s.contains('\0') => Value::String(s.replace('\0', "\u{fffd}")),
        Value::Array(items) => Value::Array(items.into_iter().map(scrub).collect()),
        Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (k, scrub(v))).collect()),
        other => other,
    }
}

/// The row that keeps a finished response.
fn row_of(draft: &Draft, prepared: &Prepared) -> ResponseRow {
    ResponseRow {
        id: draft.response.id.clone(),
        body: scrub(serde_json::to_value(&draft.response).unwrap_or(Value::Null)),
        input_items: Value::Array(prepared.input.clone()),
        history: Value::Array(prepared.history.clone()),
    }
}

/// Create a response.
#[utoipa::path(operation_id = "create_response",
    tag = "Responses", request_body = CreateResponseRequest,
    responses((status = 200, body = ResponseObject,
               description = "The response, or with `stream: true` a text/event-stream of its \
                              semantic events"),
              (status = 400, body = ErrorResponse), (status = 404, body = ErrorResponse),
              (status = 503, body = ErrorResponse)))]
#[post("/v1/responses")]
#[tracing::instrument(skip_all, fields(model = %body.model))]
pub async fn create_response(
    state: web::Data<ApiState>,
    caller: Caller,
    body: JsonBody<CreateResponseRequest>,
) -> Result<HttpResponse, ApiError> {
    respond(state, caller, body.into_inner()).await
}

/// Answer a Responses request (the handler's work; batches call it too).
pub async fn respond(
    state: web::Data<ApiState>,
    caller: Caller,
    req: CreateResponseRequest,
) -> Result<HttpResponse, ApiError> {
    let metadata = check_metadata(req.metadata.as_ref())?;
    let mut prepared = prepare(&state, &caller.0, &req).await?;
    let mut source = source(&state, &caller, &req, &mut prepared).await?;
    let mut draft = Draft::new(
        draft_object(&req, metadata),
        prepared.params.logprobs,
        req.stream,
    );
    if req.stream {
        draft.start();
        return Ok(sse_response(stream(
            state.into_inner(),
            caller.0,
            source,
            draft,
            prepared,
        )));
    }
    while !draft.ended() {
        match source.next().await {
            Some(event) => draft.take(event),
            None => draft.fail("the generation ended without finishing"),
        }
    }
    if draft.response.store {
        state
            .store
            .insert_response(&caller.0, &row_of(&draft, &prepared))
            .await?;
    }
    Ok(HttpResponse::Ok().json(&draft.response))
}

/// One server-sent event: `event: {kind}` and its JSON.
fn sse_event(kind: &str, event: &Value) -> Bytes {
    Bytes::from(format!("event: {kind}\ndata: {event}\n\n"))
}

/// The SSE body of a streamed response (`draft` started); the finished response is stored (with
/// `store`) before its last event is sent.
fn stream(
    state: std::sync::Arc<ApiState>,
    org: OrganizationId,
    source: Source,
    draft: Draft,
    prepared: Prepared,
) -> impl futures_util::Stream<Item = Result<Bytes, actix_web::Error>> {
    struct Flow {
        state: std::sync::Arc<ApiState>,
        org: OrganizationId,
        source: Source,
        draft: Draft,
        prepared: Prepared,
        pending: VecDeque<Bytes>,
        finished: bool,
    }
    let mut draft = draft;
    // `response.created` and `response.in_progress` go out at once, before the first token.
    let pending = draft
        .take_events()
        .iter()
        .map(|(kind, event)| sse_event(kind, event))
        .collect();
    let flow = Flow {
        state,
        org,
        source,
        draft,
        prepared,
        pending,
        finished: false,
    };
    futures_util::stream::unfold(flow, |mut f| async move {
        loop {
            if let Some(bytes) = f.pending.pop_front() {
                return Some((Ok(bytes), f));
            }
            if f.finished {
                return None;
            }
            match f.source.next().await {
                Some(event) => f.draft.take(event),
                None => f.draft.fail("the generation ended without finishing"),
            }
            if f.draft.ended() {
                // Stored before the last event goes out: a client that retrieves the response
                // as soon as it sees `response.completed` finds it.
                f.finished = true;
                if f.draft.response.store {
                    let row = row_of(&f.draft, &f.prepared);
                    if let Err(e) = f.state.store.insert_response(&f.org, &row).await {
                        tracing::error!(error = %e, "storing a streamed response failed");
                    }
                }
            }
            for (kind, event) in f.draft.take_events() {
                f.pending.push_back(sse_event(&kind, &event));
            }
        }
    })
}

/// A stored response of the caller's organization, or a 404.
async fn stored(state: &ApiState, org: &OrganizationId, id: &str) -> Result<ResponseRow, ApiError> {
    state
        .store
        .get_response(org, id)
        .await?
        .ok_or_else(|| ApiError::not_found("response", id))
}

/// Retrieve a stored response.
#[utoipa::path(operation_id = "get_response", tag = "Responses",
    params(("id" = String, Path, description = "The response id")),
    responses((status = 200, body = ResponseObject), (status = 404, body = ErrorResponse)))]
#[get("/v1/responses/{id}")]
pub async fn get_response(
    state: web::Data<ApiState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let row = stored(&state, &caller.0, &id).await?;
    Ok(HttpResponse::Ok().json(row.body))
}

/// Delete a stored response.
#[utoipa::path(operation_id = "delete_response", tag = "Responses",
    params(("id" = String, Path, description = "The response id")),
    responses((status = 200, body = DeletedResponse), (status = 404, body = ErrorResponse)))]
#[delete("/v1/responses/{id}")]
pub async fn delete_response(
    state: web::Data<ApiState>,
    caller: Caller,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    if !state.store.delete_response(&caller.0, &id).await? {
        return Err(ApiError::not_found("response", &id));
    }
    Ok(HttpResponse::Ok().json(DeletedResponse {
        id: id.into_inner(),
        object: "response",
        deleted: true,
    }))
}

/// List a stored response's input items (last first unless `order=asc`).
#[utoipa::path(operation_id = "list_response_input_items", tag = "Responses",
    params(("id" = String, Path, description = "The response id"), InputItemsQuery),
    responses((status = 200, body = InputItemList), (status = 400, body = ErrorResponse),
              (status = 404, body = ErrorResponse)))]
#[get("/v1/responses/{id}/input_items")]
pub async fn list_input_items(
    state: web::Data<ApiState>,
    caller: Caller,
    id: web::Path<String>,
    query: web::Query<InputItemsQuery>,
) -> Result<HttpResponse, ApiError> {
    let q = query.into_inner();
    let page = crate::domain::pagination::PageRequest::parse(
        q.limit,
        q.after,
        q.order.as_deref(),
        20,
        100,
    )?;
    let row = stored(&state, &caller.0, &id).await?;
    let mut items = as_list(row.input_items);
    if page.order == crate::domain::pagination::Order::Desc {
        items.reverse();
    }
    let item_id = |v: &Value| v.get("id").and_then(Value::as_str).map(str::to_owned);
    if let Some(after) = &page.after {
        let at = items
            .iter()
            .position(|v| item_id(v).as_deref() == Some(after.as_str()))
            .ok_or_else(|| {
                bad(
                    "after",
                    format!("No input item with id '{after}' to list after"),
                )
            })?;
        items.drain(..=at);
    }
    let has_more = items.len() > page.limit as usize;
    items.truncate(page.limit as usize);
    Ok(HttpResponse::Ok().json(InputItemList {
        object: "list",
        first_id: items.first().and_then(item_id),
        last_id: items.last().and_then(item_id),
        data: items,
        has_more,
    }))
}
