//! The Responses API on a real server (the default engine, the generated tiny model, a real
//! Postgres): stored responses and their input items, conversations carried by
//! `previous_response_id`, the SSE event stream, ensembles, and bad input that stores nothing.

use serde_json::{Value, json};

use crate::helpers::fixtures::QA;
use crate::helpers::{assert_error, fine_tune, spawn_app};

async fn respond(app: &crate::helpers::TestApp, body: Value) -> Value {
    let res = app.post("/v1/responses", &body).await;
    assert_eq!(res.status(), 200, "{body}");
    res.json().await.unwrap()
}

async fn stored_responses(app: &crate::helpers::TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from response")
        .fetch_one(app.store.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn input_items_page_in_both_orders_and_a_deleted_response_is_gone() {
    let app = spawn_app().await;
    let input: Vec<Value> = (0..5)
        .map(|i| json!({"role": "user", "content": format!("line {i}")}))
        .collect();
    let r = respond(
        &app,
        json!({"model": "ferrotune-tiny", "input": input, "max_output_tokens": 2}),
    )
    .await;
    let id = r["id"].as_str().unwrap();
    let texts = |page: &Value| -> Vec<String> {
        page["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["content"][0]["text"].as_str().unwrap().to_owned())
            .collect()
    };
    let page: Value = app
        .get(&format!("/v1/responses/{id}/input_items?limit=2"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(texts(&page), ["line 4", "line 3"]);
    assert_eq!(page["has_more"], true);
    let after = page["last_id"].as_str().unwrap();
    let next: Value = app
        .get(&format!(
            "/v1/responses/{id}/input_items?limit=10&after={after}"
        ))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(texts(&next), ["line 2", "line 1", "line 0"]);
    assert_eq!(next["has_more"], false);
    let asc: Value = app
        .get(&format!("/v1/responses/{id}/input_items?order=asc&limit=1"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(texts(&asc), ["line 0"]);
    for (query, param) in [
        ("after=msg_nothing", "after"),
        ("limit=0", "limit"),
        ("order=sideways", "order"),
    ] {
        let res = app
            .get(&format!("/v1/responses/{id}/input_items?{query}"))
            .await;
        assert_error(res, 400, Some(param)).await;
    }

    let deleted: Value = app
        .delete(&format!("/v1/responses/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        deleted,
        json!({"id": id, "object": "response", "deleted": true})
    );
    for path in [
        format!("/v1/responses/{id}"),
        format!("/v1/responses/{id}/input_items"),
    ] {
        assert_error(app.get(&path).await, 404, Some("id")).await;
    }
    assert_error(
        app.delete(&format!("/v1/responses/{id}")).await,
        404,
        Some("id"),
    )
    .await;
    let res = app
        .post(
            "/v1/responses",
            &json!({"model": "ferrotune-tiny", "input": "more", "previous_response_id": id}),
        )
        .await;
    assert_error(res, 404, Some("previous_response_id")).await;
}

#[tokio::test]
async fn a_conversation_goes_on_across_three_responses() {
    let app = spawn_app().await;
    let ask = |input: &str, previous: Option<&str>| {
        json!({"model": "ferrotune-tiny", "input": input, "max_output_tokens": 3,
               "temperature": 0, "previous_response_id": previous, "instructions": "Be brief."})
    };
    let first = respond(&app, ask("one", None)).await;
    let second = respond(&app, ask("two", first["id"].as_str())).await;
    let third = respond(&app, ask("three", second["id"].as_str())).await;
    let tokens = |r: &Value| r["usage"]["input_tokens"].as_u64().unwrap();
    // Each replays the earlier inputs and outputs: the prompt grows.
    assert!(tokens(&first) < tokens(&second) && tokens(&second) < tokens(&third));
    let row = app
        .store
        .get_response(
            &ferrotune::domain::organization::OrganizationId::local(),
            third["id"].as_str().unwrap(),
        )
        .await
        .unwrap()
        .unwrap();
    let history: Vec<&str> = row
        .history
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    // Two inputs and two outputs before the third input; instructions are not carried.
    assert_eq!(history, ["message", "message", "message", "message"]);
    assert_eq!(row.history[0]["content"][0]["text"], "one");
    assert_eq!(row.history[1]["role"], "assistant");
}

#[tokio::test]
async fn a_stream_sends_named_numbered_events_and_stores_the_response() {
    let app = spawn_app().await;
    let res = app
        .post(
            "/v1/responses",
            &json!({"model": "ferrotune-tiny", "input": "hi", "stream": true,
                    "max_output_tokens": 4, "temperature": 0}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    // Every event names its type on an `event:` line matching its data's `type` (no `[DONE]`).
    let events: Vec<Value> = text
        .split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|block| {
            let (kind, data) = block.split_once('\n').unwrap();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], kind.strip_prefix("event: ").unwrap());
            data
        })
        .collect();
    let numbers: Vec<u64> = events
        .iter()
        .map(|e| e["sequence_number"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, (0..events.len() as u64).collect::<Vec<_>>());
    let last = events.last().unwrap();
    assert_eq!(last["type"], "response.incomplete");
    let id = last["response"]["id"].as_str().unwrap();
    let stored: Value = app
        .get(&format!("/v1/responses/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stored, last["response"]);
}

#[tokio::test]
async fn an_ensemble_answers_a_response_with_its_usage_summed() {
    let app = spawn_app().await;
    let (_, tuned) = fine_tune(&app, "health").await;
    let res = app
        .post(
            "/v1/ensembles",
            &json!({"name": "pair", "members": [tuned, "ferrotune-tiny"],
                    "strategy": "best_logprob"}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let ask = |model: &str| json!({"model": model, "input": QA[0].0, "max_output_tokens": 40, "temperature": 0});
    let single = respond(&app, ask("ferrotune-tiny")).await;
    let pair = respond(&app, ask("pair")).await;
    assert_eq!(pair["model"], "pair");
    // The tuned member is surer of its answer than the random base, and wins.
    assert_eq!(pair["output"][0]["content"][0]["text"], QA[0].1);
    assert_eq!(
        pair["usage"]["input_tokens"],
        2 * single["usage"]["input_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn bad_input_is_a_400_and_stores_nothing() {
    let app = spawn_app().await;
    let call = json!({"type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{"});
    for (body, param) in [
        (json!({"model": "ferrotune-tiny"}), "input"),
        (json!({"model": "ferrotune-tiny", "input": []}), "input"),
        (json!({"model": "ferrotune-tiny", "input": 7}), "input"),
        (
            json!({"model": "ferrotune-tiny", "input": "a\u{0}b"}),
            "input",
        ),
        (
            json!({"model": "ferrotune-tiny", "input": "hi", "instructions": "\u{0}"}),
            "instructions",
        ),
        (
            json!({"model": "ferrotune-tiny", "input": [call]}),
            "input[0].arguments",
        ),
        (
            json!({"model": "ferrotune-tiny", "input": [{"type": "message", "role": "user",
                   "content": [{"type": "input_image", "image_url": "x"}]}]}),
            "input[0].content[0].type",
        ),
        (
            json!({"model": "ferrotune-tiny", "input": "hi", "metadata": {"k": 1}}),
            "metadata.k",
        ),
        (
            json!({"model": "ferrotune-tiny", "input": "hi", "max_output_tokens": 0}),
            "max_output_tokens",
        ),
        (
            json!({"model": "ferrotune-tiny", "input": "hi", "tools": [{"type": "function",
                   "name": "bad name"}]}),
            "tools[0].name",
        ),
        (
            json!({"model": "ferrotune-tiny", "input": "hi", "tool_choice": "required"}),
            "tool_choice",
        ),
        (
            json!({"model": "ferrotune-tiny", "input": "hi", "text": {"format":
                   {"type": "json_schema", "name": "x"}}}),
            "text.format",
        ),
    ] {
        let res = app.post("/v1/responses", &body).await;
        assert_error(res, 400, Some(param)).await;
    }
    let res = app
        .post(
            "/v1/responses",
            &json!({"model": "no-such-model", "input": "hi"}),
        )
        .await;
    assert_eq!(res.status(), 404);
    assert_eq!(stored_responses(&app).await, 0);
}
