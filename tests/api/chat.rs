//! Chat completions on the default engine (llama.cpp on the CPU), all real: the generated tiny base model and models fine-tuned
//! by the candle trainer through the jobs API, hot-loaded on first use.

use serde_json::{Value, json};

use crate::helpers::fixtures::QA;
use crate::helpers::{
    AppOptions, TestApp, ask, assert_error, fine_tune, fine_tune_lazily, spawn_app,
    spawn_app_sharing, spawn_app_with,
};

#[tokio::test]
async fn the_base_model_answers_in_openai_shape() {
    answers_in_openai_shape(spawn_app().await).await;
}

/// [`the_base_model_answers_in_openai_shape`] on `app`'s engine.
pub(crate) async fn answers_in_openai_shape(app: TestApp) {
    let body = ask(&app, "ferrotune-tiny", "Hello?").await;
    assert!(body["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "ferrotune-tiny");
    let choice = &body["choices"][0];
    assert_eq!(choice["index"], 0);
    assert_eq!(choice["message"]["role"], "assistant");
    assert_eq!(choice["message"]["refusal"], Value::Null);
    assert!(choice["message"]["content"].is_string());
    assert!(["stop", "length"].contains(&choice["finish_reason"].as_str().unwrap()));
    let usage = &body["usage"];
    assert_eq!(
        usage["total_tokens"],
        usage["prompt_tokens"].as_u64().unwrap() + usage["completion_tokens"].as_u64().unwrap()
    );
}

#[tokio::test]
async fn a_fine_tuned_model_is_served_after_its_job_and_recites_what_it_learned() {
    serves_a_fine_tune(spawn_app().await).await;
}

/// [`a_fine_tuned_model_is_served_after_its_job_and_recites_what_it_learned`] on `app`'s engine.
pub(crate) async fn serves_a_fine_tune(app: TestApp) {
    let (job, model) = fine_tune(&app, "health").await;
    let tuned = ask(&app, &model, QA[0].0).await;
    assert_eq!(tuned["choices"][0]["message"]["content"], QA[0].1);
    assert_eq!(tuned["model"], model.as_str());
    let base = ask(&app, "ferrotune-tiny", QA[0].0).await;
    assert_ne!(base["choices"][0]["message"]["content"], QA[0].1);
    // A checkpoint is servable too.
    let ckpts: Value = app
        .get(&format!("/v1/fine_tuning/jobs/{job}/checkpoints"))
        .await
        .json()
        .await
        .unwrap();
    let ckpt = ckpts["data"][0]["fine_tuned_model_checkpoint"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(ckpt.starts_with(&format!("{model}:ckpt-step-")));
    let answer = ask(&app, &ckpt, QA[1].0).await;
    assert_eq!(answer["model"], ckpt.as_str());
}

#[tokio::test]
async fn streaming_sends_role_deltas_finish_usage_and_done() {
    streams_in_openai_shape(spawn_app().await).await;
}

/// [`streaming_sends_role_deltas_finish_usage_and_done`] on `app`'s engine.
pub(crate) async fn streams_in_openai_shape(app: TestApp) {
    let res = app
        .post("/v1/chat/completions", &json!({"model": "ferrotune-tiny", "stream": true, "max_tokens": 5,
            "stream_options": {"include_usage": true}, "messages": [{"role": "user", "content": "Hi"}]}))
        .await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let text = res.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let events: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let id = events[0]["id"].as_str().unwrap();
    assert!(
        events
            .iter()
            .all(|e| e["id"] == id && e["object"] == "chat.completion.chunk")
    );
    assert_eq!(
        events[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert!(last["usage"]["completion_tokens"].as_u64().unwrap() >= 1);
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|e| e["usage"].is_null())
    );
    let finish = &events[events.len() - 2]["choices"][0];
    assert_eq!(finish["delta"], json!({}));
    assert_eq!(finish["finish_reason"], "length");
    let content: String = events
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert!(!content.is_empty());
}

#[tokio::test]
async fn n_stop_and_max_tokens_are_honoured() {
    honours_n_stop_and_max_tokens(spawn_app().await).await;
}

/// [`n_stop_and_max_tokens_are_honoured`] on `app`'s engine.
pub(crate) async fn honours_n_stop_and_max_tokens(app: TestApp) {
    let two: Value = app
        .post(
            "/v1/chat/completions",
            &json!({"model": "ferrotune-tiny", "n": 2, "max_tokens": 3, "temperature": 1.0,
            "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(two["choices"].as_array().unwrap().len(), 2);
    // Each choice's tokens are counted (mistral.rs alone reports one choice's): one
    // log-probability per generated token.
    let with_logprobs: Value = app
        .post(
            "/v1/chat/completions",
            &json!({"model": "ferrotune-tiny", "n": 3, "max_tokens": 3, "temperature": 1.0,
            "logprobs": true, "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    let generated: usize = with_logprobs["choices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["logprobs"]["content"].as_array().unwrap().len())
        .sum();
    assert_eq!(
        with_logprobs["usage"]["completion_tokens"], generated,
        "{with_logprobs}"
    );
    let streamed = app
        .post(
            "/v1/chat/completions",
            &json!({"model": "ferrotune-tiny", "n": 2, "max_tokens": 3, "temperature": 1.0,
            "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await
        .text()
        .await
        .unwrap();
    let events = crate::helpers::sse_events(&streamed);
    let last = events.last().unwrap();
    assert_eq!(last["choices"], json!([]));
    assert!(
        last["usage"]["completion_tokens"].as_u64().unwrap() >= 2,
        "{last}"
    );
    for index in [0, 1] {
        let finished = events.iter().any(|e| {
            e["choices"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["index"] == index && !c["finish_reason"].is_null())
        });
        assert!(finished, "choice {index} never finished: {streamed}");
    }
    let short: Value = app
        .post(
            "/v1/chat/completions",
            &json!({"model": "ferrotune-tiny", "max_completion_tokens": 1,
            "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(short["choices"][0]["finish_reason"], "length");
    assert_eq!(short["usage"]["completion_tokens"], 1);
}

#[tokio::test]
async fn bad_chat_requests_get_openai_errors() {
    let app = spawn_app().await;
    let chat = |body: Value| {
        let app = &app;
        async move { app.post("/v1/chat/completions", &body).await }
    };
    let msgs = json!([{"role": "user", "content": "Hi"}]);
    let err = assert_error(
        chat(json!({"model": "gpt-9", "messages": msgs})).await,
        404,
        Some("model"),
    )
    .await;
    assert_eq!(err["code"], "model_not_found");
    assert_eq!(
        err["message"],
        "The model `gpt-9` does not exist or you do not have access to it."
    );
    let tiny = |extra: Value| {
        let mut body = json!({"model": "ferrotune-tiny", "messages": msgs});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (body, param) in [
        (tiny(json!({"messages": []})), "messages"),
        (tiny(json!({"temperature": 3})), "temperature"),
        (tiny(json!({"n": 0})), "n"),
        (tiny(json!({"stop": ["a", "b", "c", "d", "e"]})), "stop"),
        (tiny(json!({"top_logprobs": 2})), "top_logprobs"),
    ] {
        assert_error(chat(body).await, 400, Some(param)).await;
    }
    assert_error(
        chat(json!({"model": "ferrotune-tiny", "messages": [{"role": "robot", "content": "x"}]}))
            .await,
        400,
        Some("messages[0].role"),
    )
    .await;
    assert_error(chat(json!({"model": "ferrotune-tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]})).await, 400, Some("messages[0].content")).await;
    assert_error(chat(json!({"messages": msgs})).await, 400, Some("model")).await;
}

#[tokio::test]
async fn models_are_listed_retrieved_and_deleted() {
    let app = spawn_app().await;
    let (_, model) = fine_tune(&app, "m").await;
    let list: Value = app.get("/v1/models").await.json().await.unwrap();
    assert_eq!(list["object"], "list");
    let ids: Vec<&str> = list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids[0], "ferrotune-tiny");
    assert!(ids.contains(&model.as_str()));
    assert!(
        ids.iter()
            .any(|i| i.starts_with(&format!("{model}:ckpt-step-")))
    );
    let one: Value = app
        .get(&format!("/v1/models/{model}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        (one["object"].clone(), one["owned_by"].clone()),
        (json!("model"), json!("org-local"))
    );
    ask(&app, &model, "Hi").await;
    assert_error(
        app.delete("/v1/models/ferrotune-tiny").await,
        400,
        Some("model"),
    )
    .await;
    let deleted: Value = app
        .delete(&format!("/v1/models/{model}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        deleted,
        json!({"id": model, "object": "model", "deleted": true})
    );
    assert!(
        app.engine.resident().is_empty(),
        "the deleted model is evicted"
    );
    let chat = app
        .post(
            "/v1/chat/completions",
            &json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
    assert_error(chat, 404, Some("model")).await;
    assert_error(
        app.get(&format!("/v1/models/{model}")).await,
        404,
        Some("model"),
    )
    .await;
    let list: Value = app.get("/v1/models").await.json().await.unwrap();
    assert_eq!(
        list["data"].as_array().unwrap().len(),
        1,
        "checkpoints go with their model"
    );
}

#[tokio::test]
async fn fine_tunes_are_adapters_on_one_base_and_not_bounded_by_the_merged_copies_budget() {
    // llama.cpp attaches adapters to the shared base: the budget of merged copies does not apply.
    let app = spawn_app_with(AppOptions {
        max_resident_models: Some(1),
        ..Default::default()
    })
    .await;
    assert_eq!(app.engine.kind(), "llamacpp");
    let (_, a) = fine_tune_lazily(&app, "a").await;
    let (_, b) = fine_tune_lazily(&app, "b").await;
    for model in [&a, &b, &a] {
        let answer = ask(&app, model, QA[0].0).await;
        assert_eq!(
            answer["choices"][0]["message"]["content"], QA[0].1,
            "{model}"
        );
    }
    let mut both = vec![a, b];
    both.sort();
    assert_eq!(app.engine.resident(), both);
    assert_eq!(app.engine.loads(), 2, "each adapter is attached once");
}

#[tokio::test]
async fn resident_models_are_bounded_lru_and_reloaded_on_demand() {
    // mistral.rs merges each fine-tune into a copy of the base: those copies are bounded.
    let app = spawn_app_with(AppOptions {
        max_resident_models: Some(1),
        engine: Some(ferrotune::config::EngineChoice::Mistralrs),
        ..Default::default()
    })
    .await;
    let (_, a) = fine_tune_lazily(&app, "a").await;
    let (_, b) = fine_tune_lazily(&app, "b").await;
    ask(&app, &a, QA[0].0).await;
    assert_eq!(app.engine.resident(), vec![a.clone()]);
    ask(&app, &b, QA[0].0).await;
    assert_eq!(app.engine.resident(), vec![b.clone()], "a was evicted");
    let again = ask(&app, &a, QA[0].0).await;
    assert_eq!(
        again["choices"][0]["message"]["content"], QA[0].1,
        "a reloads and still answers"
    );
    assert_eq!(app.engine.loads(), 3);
}

#[tokio::test]
async fn serve_quant_serves_quantized_base_and_fine_tuned_models() {
    let app = spawn_app_with(AppOptions {
        serve_quant: Some(ferrotune::config::ServeQuant::Q8_0),
        ..Default::default()
    })
    .await;
    let base = ask(&app, "ferrotune-tiny", "Hello?").await;
    assert!(
        base["choices"][0]["message"]["content"].is_string(),
        "{base}"
    );
    let (_, model) = fine_tune_lazily(&app, "q").await;
    // The adapter is merged before quantizing: the fine-tune still recites what it learned.
    let answer = ask(&app, &model, QA[0].0).await;
    assert_eq!(
        answer["choices"][0]["message"]["content"], QA[0].1,
        "{answer}"
    );
}

#[tokio::test]
async fn concurrent_first_requests_share_one_load() {
    let app = spawn_app().await;
    let (_, model) = fine_tune_lazily(&app, "c").await;
    let requests = (0..4).map(|_| ask(&app, &model, QA[2].0));
    let answers = futures_util::future::join_all(requests).await;
    assert!(
        answers
            .iter()
            .all(|a| a["choices"][0]["message"]["content"] == QA[2].1)
    );
    assert_eq!(app.engine.loads(), 1);
}

#[tokio::test]
async fn fine_tuned_models_survive_a_restart() {
    let first = spawn_app().await;
    let (_, model) = fine_tune_lazily(&first, "r").await;
    let restarted = spawn_app_sharing(&first).await;
    assert!(restarted.engine.resident().is_empty());
    let answer = ask(&restarted, &model, QA[3].0).await;
    assert_eq!(answer["choices"][0]["message"]["content"], QA[3].1);
}

/// The model is attached before the job reads `succeeded`: the first request after it finds the
/// adapter ready (no load on the request path).
#[tokio::test]
async fn a_succeeded_job_is_attached_before_it_reads_succeeded() {
    let app = spawn_app().await;
    let (_, model) = fine_tune(&app, "eager").await;
    assert_eq!(app.engine.resident(), vec![model.clone()]);
    assert_eq!(app.engine.loads(), 1);
    let answer = ask(&app, &model, QA[0].0).await;
    assert_eq!(answer["choices"][0]["message"]["content"], QA[0].1);
    assert_eq!(app.engine.loads(), 1, "the request loaded nothing");
}

#[tokio::test]
async fn a_client_that_disconnects_mid_stream_cancels_its_generation() {
    let app = spawn_app().await;
    let mut res = app
        .post(
            "/v1/chat/completions",
            // No max_tokens: the longest generation the context allows.
            &json!({"model": "ferrotune-tiny", "stream": true,
            "temperature": 1.0, "messages": [{"role": "user", "content": "Tell me everything."}]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let first = res.chunk().await.unwrap().unwrap();
    assert!(first.starts_with(b"data: "));
    assert_eq!(app.engine.active_generations(), 1);
    drop(res);
    for _ in 0..100 {
        if app.engine.active_generations() == 0 {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the generation is still running after the client left");
}

/// Stream `body` to `path`, stop the engine's generations after the first chunk (as a
/// mistral.rs panic does) and return everything the client received.
async fn stream_cut_by_engine_death(app: &TestApp, path: &str, body: Value) -> String {
    let mut res = app.post(path, &body).await;
    assert_eq!(res.status(), 200);
    let mut text = String::from_utf8(res.chunk().await.unwrap().unwrap().to_vec()).unwrap();
    app.engine
        .stop_engine_thread("ferrotune-tiny")
        .await
        .unwrap();
    while let Some(chunk) = res.chunk().await.unwrap() {
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    text
}

#[tokio::test]
async fn a_stream_whose_engine_dies_ends_with_an_error_event_and_the_next_request_is_served() {
    ends_a_cut_stream_with_an_error_event(spawn_app().await).await;
}

/// [`a_stream_whose_engine_dies_ends_with_an_error_event_and_the_next_request_is_served`] on `app`'s engine.
pub(crate) async fn ends_a_cut_stream_with_an_error_event(app: TestApp) {
    // The end tokens banned, so the answer is still going when the engine stops.
    let tok = ferrotune::train::data::load_tokenizer(app.engine.base_dir()).unwrap();
    let ban: serde_json::Map<String, Value> = ["<|im_end|>", "<|endoftext|>"]
        .iter()
        .filter_map(|t| tok.token_to_id(t))
        .map(|id| (id.to_string(), json!(-100)))
        .collect();
    let chat = json!({"model": "ferrotune-tiny", "stream": true, "temperature": 1.0,
        "max_tokens": 1500, "logit_bias": ban,
        "messages": [{"role": "user", "content": "Tell me everything."}]});
    let legacy = json!({"model": "ferrotune-tiny", "stream": true, "temperature": 1.0,
        "max_tokens": 1500, "logit_bias": ban, "prompt": "Tell me everything."});
    for (path, body) in [("/v1/chat/completions", chat), ("/v1/completions", legacy)] {
        let text = stream_cut_by_engine_death(&app, path, body).await;
        let last = text.trim_end().rsplit("\n\n").next().unwrap();
        let last: Value = serde_json::from_str(last.strip_prefix("data: ").unwrap()).unwrap();
        assert_eq!(last["error"]["type"], "server_error", "{path}: {text}");
        let message = last["error"]["message"].as_str().unwrap();
        assert!(message.contains("try again"), "{path}: {text}");
        assert!(
            !text.contains("\"finish_reason\":\"stop\"") && !text.contains("[DONE]"),
            "{path}: a cut-off answer must not read as a finished one: {text}"
        );
        // The engine serves the next request.
        let again = app
            .post(
                "/v1/chat/completions",
                &json!({"model": "ferrotune-tiny", "max_tokens": 5,
                "messages": [{"role": "user", "content": "Hi"}]}),
            )
            .await;
        assert_eq!(again.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn a_model_that_cannot_be_loaded_is_a_clear_503() {
    let app = spawn_app().await;
    let (job, model) = fine_tune_lazily(&app, "gone").await;
    std::fs::remove_dir_all(app.data_dir.path().join("jobs").join(job).join("adapter")).unwrap();
    let res = app
        .post(
            "/v1/chat/completions",
            &json!({"model": model, "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
    let err = assert_error(res, 503, None).await;
    assert_eq!(err["code"], "model_unavailable");
    assert!(err["message"].as_str().unwrap().contains(&model), "{err}");
    assert!(app.engine.resident().is_empty());
}

#[tokio::test]
async fn json_object_responses_are_constrained_to_json() {
    let app = spawn_app().await;
    let res = app
        .post("/v1/chat/completions", &json!({"model": "ferrotune-tiny", "max_tokens": 40,
            "response_format": {"type": "json_object"}, "messages": [{"role": "user", "content": "JSON please"}]}))
        .await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.trim_start().starts_with('{'), "{text}");
    if body["choices"][0]["finish_reason"] == "stop" {
        serde_json::from_str::<Value>(text).expect("a finished json_object answer parses");
    }
}

#[tokio::test]
async fn a_model_with_a_generation_in_flight_is_not_evicted() {
    let app = spawn_app_with(AppOptions {
        max_resident_models: Some(1),
        ..Default::default()
    })
    .await;
    let (_, a) = fine_tune_lazily(&app, "a").await;
    let (_, b) = fine_tune_lazily(&app, "b").await;
    ask(&app, &a, QA[0].0).await;
    // A generation of `a` that nobody reads yet: it stays in flight.
    let params = ferrotune::serve::ChatParams {
        messages: vec![ferrotune::serve::ChatTurn::new("user", "Go on.")],
        n: 1,
        ..Default::default()
    };
    let generation = app.engine.chat(&a, params, true).await.unwrap();
    ask(&app, &b, QA[0].0).await;
    let mut resident = app.engine.resident();
    resident.sort();
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(
        resident, both,
        "the busy model stays while the budget is exceeded"
    );
    drop(generation);
    assert_eq!(app.engine.active_generations(), 0);
}
