//! The legacy `/v1/completions` on the tiny model: shape, several prompts × n, echo, logprobs,
//! streaming, and the parameters it refuses.

use serde_json::{Value, json};

use crate::helpers::sse_events;
use crate::helpers::{TestApp, assert_error, spawn_app};

async fn complete(app: &TestApp, extra: Value) -> reqwest::Response {
    let mut body = json!({"model": "ferrotune-tiny", "prompt": "Water is", "temperature": 0});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    app.post("/v1/completions", &body).await
}

#[tokio::test]
async fn a_prompt_is_continued_in_openai_shape() {
    continues_a_prompt(spawn_app().await).await;
}

/// [`a_prompt_is_continued_in_openai_shape`] on `app`'s engine.
pub(crate) async fn continues_a_prompt(app: TestApp) {
    let body: Value = complete(&app, json!({"max_tokens": 4}))
        .await
        .json()
        .await
        .unwrap();
    assert!(body["id"].as_str().unwrap().starts_with("cmpl-"), "{body}");
    assert_eq!(body["object"], "text_completion");
    assert_eq!(body["model"], "ferrotune-tiny");
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["logprobs"], Value::Null);
    assert_eq!(choice["finish_reason"], "length");
    assert_eq!(body["usage"]["completion_tokens"], 4);
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"],
        usage["prompt_tokens"].as_u64().unwrap() + 4
    );
    // Greedy and deterministic: echo puts the same continuation after the prompt.
    let echoed: Value = complete(&app, json!({"max_tokens": 4, "echo": true}))
        .await
        .json()
        .await
        .unwrap();
    let text = choice["text"].as_str().unwrap();
    assert_eq!(echoed["choices"][0]["text"], format!("Water is{text}"));
}

#[tokio::test]
async fn several_prompts_and_choices_are_numbered_prompt_by_prompt() {
    let app = spawn_app().await;
    let body: Value = complete(
        &app,
        json!({"prompt": ["One", "Two"], "n": 2, "max_tokens": 2, "temperature": 1.0, "logprobs": 2}),
    )
    .await
    .json()
    .await
    .unwrap();
    let choices = body["choices"].as_array().unwrap();
    let indices: Vec<u64> = choices
        .iter()
        .map(|c| c["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, [0, 1, 2, 3], "{body}");
    let lp = &choices[0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 2, "{lp}");
    assert_eq!(lp["token_logprobs"].as_array().unwrap().len(), 2);
    assert_eq!(lp["text_offset"][0], 0);
    assert!(lp["top_logprobs"][0].as_object().unwrap().len() <= 2);
    assert_eq!(body["usage"]["completion_tokens"], 8);
}

#[tokio::test]
async fn a_stream_sends_text_chunks_finish_usage_and_done() {
    let app = spawn_app().await;
    let res = complete(
        &app,
        json!({"stream": true, "max_tokens": 3, "prompt": ["A", "B"],
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let events = sse_events(&res.text().await.unwrap());
    assert!(events.iter().all(|e| e["object"] == "text_completion"));
    for index in [0, 1] {
        let of: Vec<&Value> = events
            .iter()
            .flat_map(|e| e["choices"].as_array().unwrap())
            .filter(|c| c["index"] == index)
            .collect();
        assert!(
            of.iter().any(|c| c["finish_reason"] == "length"),
            "{events:?}"
        );
    }
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert_eq!(last["usage"]["completion_tokens"], 6);
}

#[tokio::test]
async fn refused_parameters_are_400s_naming_them() {
    let app = spawn_app().await;
    for (extra, param) in [
        (json!({"suffix": "end"}), "suffix"),
        (json!({"prompt": [1, 2, 3]}), "prompt"),
        (json!({"prompt": []}), "prompt"),
        (json!({"prompt": 7}), "prompt"),
        (json!({"best_of": 3}), "best_of"),
        (json!({"logprobs": 6}), "logprobs"),
        (json!({"logprobs": 1, "echo": true}), "echo"),
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"temperature": 5}), "temperature"),
        (json!({"max_tokens": 100000}), "max_tokens"),
    ] {
        assert_error(complete(&app, extra).await, 400, Some(param)).await;
    }
    let missing = app
        .post("/v1/completions", &json!({"model": "nope", "prompt": "x"}))
        .await;
    assert_error(missing, 404, Some("model")).await;
}
