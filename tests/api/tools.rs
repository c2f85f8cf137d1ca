//! Tools and function calling through `/v1/chat/completions` on the tiny model: forced calls
//! (`required`, a named function) come back as parseable `tool_calls`, streamed as OpenAI
//! streams them; tool results round-trip; bad tool input is a 400 naming its parameter.

use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_error, spawn_app, sse_events};

/// Two functions whose arguments are enums, so a forced call is short whatever the weights.
pub fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city",
         "parameters": {"type": "object", "properties": {"city": {"enum": ["Paris", "Oslo"]}},
                        "required": ["city"], "additionalProperties": false}}},
        {"type": "function", "function": {"name": "get_time",
         "parameters": {"type": "object", "properties": {"zone": {"enum": ["utc", "cet"]}},
                        "required": ["zone"], "additionalProperties": false}}}
    ])
}

/// A chat request offering [`tools`] (greedy, 60 tokens at most); `extra` adds or replaces fields.
pub async fn chat(app: &TestApp, extra: Value) -> reqwest::Response {
    let mut body = json!({"model": "ferrotune-tiny", "max_tokens": 60, "temperature": 0,
        "messages": [{"role": "user", "content": "What is the weather in Paris?"}], "tools": tools()});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    app.post("/v1/chat/completions", &body).await
}

#[tokio::test]
async fn a_named_tool_choice_returns_a_valid_call() {
    follows_a_named_tool_choice(spawn_app().await).await;
}

/// [`a_named_tool_choice_returns_a_valid_call`] on `app`'s engine.
pub(crate) async fn follows_a_named_tool_choice(app: TestApp) {
    let named = json!({"type": "function", "function": {"name": "get_time"}});
    let res = chat(&app, json!({"tool_choice": named})).await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
    assert_eq!(choice["message"]["content"], Value::Null);
    let call = &choice["message"]["tool_calls"][0];
    assert!(call["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_time");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(
        ["utc", "cet"].contains(&args["zone"].as_str().unwrap()),
        "{args}"
    );
}

#[tokio::test]
async fn required_calls_one_of_the_tools_and_streams_it_in_pieces() {
    calls_a_required_tool(spawn_app().await).await;
}

/// [`required_calls_one_of_the_tools_and_streams_it_in_pieces`] on `app`'s engine.
pub(crate) async fn calls_a_required_tool(app: TestApp) {
    let one = json!({"tool_choice": "required", "parallel_tool_calls": false});
    let body: Value = chat(&app, one.clone()).await.json().await.unwrap();
    let call = &body["choices"][0]["message"]["tool_calls"][0];
    let name = call["function"]["name"].as_str().unwrap();
    assert!(["get_weather", "get_time"].contains(&name), "{body}");

    let mut streamed = one;
    streamed["stream"] = json!(true);
    let events = sse_events(&chat(&app, streamed).await.text().await.unwrap());
    let pieces: Vec<&Value> = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert!(pieces.len() >= 2, "{events:?}");
    assert_eq!(pieces[0]["index"], 0);
    assert!(pieces[0]["id"].as_str().unwrap().starts_with("call_"));
    assert_eq!(pieces[0]["function"]["name"], name);
    assert!(pieces[1..].iter().all(|p| p.get("id").is_none()));
    let arguments: String = pieces
        .iter()
        .map(|p| p["function"]["arguments"].as_str().unwrap())
        .collect();
    assert_eq!(arguments, call["function"]["arguments"]);
    let finish = events
        .iter()
        .find_map(|e| e["choices"][0]["finish_reason"].as_str());
    assert_eq!(finish, Some("tool_calls"));
}

#[tokio::test]
async fn a_tool_result_round_trips_into_an_answer() {
    let app = spawn_app().await;
    let messages = json!([
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"}
    ]);
    let res = chat(
        &app,
        json!({"messages": messages, "tool_choice": "none", "max_tokens": 5}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["choices"][0]["message"]["content"].is_string(),
        "{body}"
    );
    assert!(body["choices"][0]["message"].get("tool_calls").is_none());
    assert!(body["usage"]["prompt_tokens"].as_u64().unwrap() > 20);
}

#[tokio::test]
async fn bad_tool_input_is_a_400_naming_the_parameter() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"tools": [{"type": "function", "function": {"description": "no name"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "string"}}}]}),
            "tools[0].function.parameters",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f",
            "parameters": {"type": "object", "properties": {"a": {"type": "text"}}}}}]}),
            "tools[0].function.parameters.properties.a",
        ),
        (
            json!({"tool_choice": {"type": "function", "function": {"name": "get_stock"}}}),
            "tool_choice",
        ),
        (
            json!({"tools": null, "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            json!({"messages": [{"role": "user", "content": "Hi"},
                             {"role": "tool", "tool_call_id": "call_9", "content": "42"}]}),
            "messages[1]",
        ),
        (
            json!({"messages": [{"role": "tool", "content": "42"}]}),
            "messages[0].tool_call_id",
        ),
        (
            json!({"messages": [{"role": "user", "content": "Hi", "tool_calls": []}]}),
            "messages[0].tool_calls",
        ),
        (
            json!({"tool_choice": "required", "response_format": {"type": "json_object"}}),
            "response_format",
        ),
    ];
    for (extra, param) in cases {
        assert_error(chat(&app, extra).await, 400, Some(param)).await;
    }
}

#[tokio::test]
async fn a_json_schema_response_format_is_followed() {
    follows_a_json_schema(spawn_app().await).await;
}

/// [`a_json_schema_response_format_is_followed`] on `app`'s engine.
pub(crate) async fn follows_a_json_schema(app: TestApp) {
    let schema = json!({"type": "object", "properties": {"answer": {"enum": ["yes", "no"]}},
                        "required": ["answer"], "additionalProperties": false});
    let format = json!({"type": "json_schema", "json_schema": {"name": "a", "schema": schema, "strict": true}});
    let res = chat(&app, json!({"tools": null, "response_format": format})).await;
    let body: Value = res.json().await.unwrap();
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    let parsed: Value = serde_json::from_str(content).unwrap_or_else(|e| panic!("{content}: {e}"));
    assert!(["yes", "no"].contains(&parsed["answer"].as_str().unwrap()));
    let bad = json!({"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": 5}}});
    assert_error(
        chat(&app, json!({"response_format": bad})).await,
        400,
        Some("response_format.json_schema.schema"),
    )
    .await;
}
