//! Ensembles, all real: members trained by one job (`ensemble_size`) or grouped through
//! `/v1/ensembles`, answering on mistral.rs by model name; layered routing both ways.

use serde_json::{Value, json};

use crate::helpers::fixtures::QA;
use crate::helpers::{AppOptions, TestApp, assert_error, spawn_app, spawn_app_with};
use crate::helpers::{ask, fine_tune, fine_tune_validated, fine_tune_with};

async fn define(app: &TestApp, body: Value) -> reqwest::Response {
    app.post("/v1/ensembles", &body).await
}

async fn model_ids(app: &TestApp) -> Vec<String> {
    let list: Value = app.get("/v1/models").await.json().await.unwrap();
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

fn content(body: &Value) -> &str {
    body["choices"][0]["message"]["content"].as_str().unwrap()
}

#[tokio::test]
async fn an_ensemble_job_trains_its_members_and_their_vote_answers() {
    let app = spawn_app_with(AppOptions {
        max_resident_models: Some(3),
        ..AppOptions::default()
    })
    .await;
    let (job, name) = fine_tune_with(&app, "team", json!({"ensemble_size": 3})).await;
    let job_body = app.job(&job).await;
    assert_eq!(job_body["hyperparameters"]["ensemble_size"], 3);
    let members: Vec<String> = (1..=3).map(|i| format!("{name}:member-{i}")).collect();
    let ids = model_ids(&app).await;
    for m in members.iter().chain([&name]) {
        assert!(ids.contains(m), "{m} in {ids:?}");
    }
    let ensemble: Value = app
        .get(&format!("/v1/ensembles/{name}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(ensemble["strategy"], "vote");
    assert_eq!(ensemble["members"], json!(members));
    assert_eq!(ensemble["fine_tuning_job_id"], job.as_str());

    // The members' steps follow one another: one run of 3 × 100 steps, checkpoints distinct.
    let events: Value = app
        .get(&format!("/v1/fine_tuning/jobs/{job}/events?limit=100"))
        .await
        .json()
        .await
        .unwrap();
    let events = events["data"].as_array().unwrap();
    let steps: Vec<u64> = events
        .iter()
        .filter(|e| e["type"] == "metrics")
        .map(|e| e["data"]["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps.first(), Some(&300), "newest first: {steps:?}");
    assert!(events.iter().any(|e| e["data"]["total_steps"] == 300));
    assert!(
        events
            .iter()
            .any(|e| e["message"].as_str().unwrap().starts_with("Member 3/3: "))
    );
    let files = job_body["result_files"].as_array().unwrap().len();
    assert!(files >= 9, "each member's files: {job_body}");

    // Each member learned the answers (seeds differ, the data does not): the vote is unanimous.
    let single = ask(&app, &members[1], QA[0].0).await;
    assert_eq!(content(&single), QA[0].1);
    let voted = ask(&app, &name, QA[0].0).await;
    assert_eq!(voted["model"], name.as_str());
    assert_eq!(content(&voted), QA[0].1);
    assert_eq!(voted["choices"][0]["logprobs"], Value::Null);
    let report = &voted["ensemble"];
    assert_eq!(report["strategy"], "vote");
    assert!(members.contains(&report["winner"].as_str().unwrap().to_owned()));
    let answers = report["answers"].as_array().unwrap();
    assert_eq!(answers.len(), 3);
    assert!(answers.iter().all(|a| a["score"] == 3.0), "{report}");
    assert!(
        answers
            .iter()
            .all(|a| a["mean_logprob"].as_f64().unwrap() <= 0.0)
    );
    // Usage counts every member's generation.
    let one = &single["usage"];
    assert_eq!(
        voted["usage"]["prompt_tokens"],
        3 * one["prompt_tokens"].as_u64().unwrap()
    );
    assert_eq!(
        voted["usage"]["completion_tokens"],
        3 * one["completion_tokens"].as_u64().unwrap()
    );

    // Streamed: the winner, then its report on the finish chunk.
    let res = app
        .post(
            "/v1/chat/completions",
            &json!({"model": name, "temperature": 0, "max_tokens": 40, "stream": true,
                    "stream_options": {"include_usage": true},
                    "messages": [{"role": "user", "content": QA[0].0}]}),
        )
        .await;
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    let chunks: Vec<Value> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|l| *l != "[DONE]")
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(text.trim_end().ends_with("data: [DONE]"));
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, QA[0].1);
    let finish = chunks
        .iter()
        .find(|c| c["choices"][0]["finish_reason"].is_string())
        .unwrap();
    assert_eq!(finish["ensemble"]["answers"].as_array().unwrap().len(), 3);
    assert_eq!(chunks.last().unwrap()["usage"], voted["usage"]);

    // What an ensemble does not do.
    let chat = |extra: Value| {
        let mut body = json!({"model": name, "messages": [{"role": "user", "content": "Hi"}]});
        for (k, v) in extra.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    let res = app
        .post("/v1/chat/completions", &chat(json!({"n": 2})))
        .await;
    assert_error(res, 400, Some("n")).await;
    let tools =
        json!([{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]);
    let res = app
        .post("/v1/chat/completions", &chat(json!({"tools": tools})))
        .await;
    assert_error(res, 400, Some("tools")).await;
    let res = app
        .post("/v1/completions", &json!({"model": name, "prompt": "Hi"}))
        .await;
    assert_error(res, 400, Some("model")).await;

    // Deleting the ensemble takes the members its job trained with it.
    let res = app.delete(&format!("/v1/models/{name}")).await;
    assert_eq!(res.status(), 200);
    let ids = model_ids(&app).await;
    assert!(ids.iter().all(|m| !m.starts_with(&name)), "{ids:?}");
    let res = app.get(&format!("/v1/ensembles/{name}")).await;
    assert_error(res, 404, Some("id")).await;
}

#[tokio::test]
async fn grouped_models_vote_by_logprob_and_layer_onto_a_fallback() {
    let app = spawn_app().await;
    let (_, tuned) = fine_tune(&app, "health").await;
    let base = "ferrotune-tiny";
    let res = define(
        &app,
        json!({"name": "pair", "members": [tuned, base], "strategy": "best_logprob"}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let created: Value = res.json().await.unwrap();
    assert_eq!(created["object"], "ensemble");
    assert_eq!(created["fine_tuning_job_id"], Value::Null);
    let list: Value = app.get("/v1/ensembles").await.json().await.unwrap();
    assert_eq!(list["data"][0]["id"], "pair");
    let retrieved: Value = app.get("/v1/models/pair").await.json().await.unwrap();
    assert_eq!(retrieved["object"], "model");

    // The tuned model is far surer of its own answer than the random base.
    let body = ask(&app, "pair", QA[0].0).await;
    let report = &body["ensemble"];
    assert_eq!(report["winner"], tuned.as_str(), "{report}");
    assert_eq!(content(&body), QA[0].1);
    let answers = report["answers"].as_array().unwrap();
    assert_eq!(answers[0]["score"], answers[0]["mean_logprob"]);
    assert!(answers[0]["score"].as_f64() > answers[1]["score"].as_f64());
    // Log-probabilities stay in the answer when asked for.
    let res = app
        .post(
            "/v1/chat/completions",
            &json!({"model": "pair", "temperature": 0, "max_tokens": 40, "logprobs": true,
                    "messages": [{"role": "user", "content": QA[0].0}]}),
        )
        .await;
    let with: Value = res.json().await.unwrap();
    assert!(
        with["choices"][0]["logprobs"]["content"]
            .as_array()
            .unwrap()
            .len()
            > 1
    );

    // Layered, forced both ways: no answer of the random base is certain (mean log-probability
    // 0), so as the member under threshold 0 it hands over to its fallback; a threshold of -100
    // keeps any member's answer.
    let base_answer = ask(&app, base, QA[0].0).await;
    for (name, member, fallback, threshold, layer, winner) in [
        (
            "unsure",
            base,
            tuned.as_str(),
            0.0,
            "fallback",
            tuned.as_str(),
        ),
        (
            "lenient",
            tuned.as_str(),
            base,
            -100.0,
            "member",
            tuned.as_str(),
        ),
    ] {
        let res = define(
            &app,
            json!({"name": name, "members": [member], "strategy": "layered",
                   "fallback": fallback, "threshold": threshold}),
        )
        .await;
        assert_eq!(res.status(), 200);
        let body = ask(&app, name, QA[0].0).await;
        let report = &body["ensemble"];
        assert_eq!(report["layer"], layer, "{report}");
        assert_eq!(report["winner"], winner);
        assert_eq!(report["threshold"], threshold);
        assert_eq!(content(&body), QA[0].1);
        let answers = report["answers"].as_array().unwrap();
        assert_eq!(answers[0]["model"], member);
        if layer == "fallback" {
            assert_eq!(answers.len(), 2);
            assert_eq!(answers[0]["content"], content(&base_answer));
            assert!(answers[0]["mean_logprob"].as_f64().unwrap() < threshold);
        } else {
            assert_eq!(answers.len(), 1);
        }
    }

    // Bad definitions.
    let other_base = ferrotune::domain::organization::OrganizationId::local();
    app.store
        .insert_adapter(&other_base, "elsewhere", "another-base", "/nowhere")
        .await
        .unwrap();
    for (body, status, param) in [
        (
            json!({"name": "x", "members": [tuned, "nope"]}),
            400,
            "members[1]",
        ),
        (
            json!({"name": "x", "members": [tuned, tuned]}),
            400,
            "members[1]",
        ),
        (json!({"name": "x", "members": [tuned]}), 400, "members"),
        (
            json!({"name": "x", "members": [tuned, "pair"]}),
            400,
            "members[1]",
        ),
        (
            json!({"name": "x", "members": [tuned, "elsewhere"]}),
            400,
            "members[1]",
        ),
        (
            json!({"name": "ft:mine", "members": [tuned, base]}),
            400,
            "name",
        ),
        (json!({"name": base, "members": [tuned, base]}), 400, "name"),
        (
            json!({"name": "x", "members": [tuned, base], "threshold": -1.0}),
            400,
            "threshold",
        ),
        (
            json!({"name": "x", "members": [tuned], "strategy": "layered", "fallback": base}),
            400,
            "threshold",
        ),
        (
            json!({"name": "x", "members": [tuned], "strategy": "layered", "threshold": -1.0}),
            400,
            "fallback",
        ),
        (
            json!({"name": "x", "members": [tuned], "strategy": "layered", "fallback": "gone", "threshold": -1.0}),
            400,
            "fallback",
        ),
        (
            json!({"name": "x", "members": [tuned], "strategy": "layered", "fallback": "elsewhere", "threshold": -1.0}),
            400,
            "fallback",
        ),
        // "auto" needs the member's job to have had a validation file; the base had no job.
        (
            json!({"name": "x", "members": [tuned], "strategy": "layered", "fallback": base, "threshold": "auto"}),
            400,
            "threshold",
        ),
        (
            json!({"name": "x", "members": [base], "strategy": "layered", "fallback": tuned, "threshold": "auto"}),
            400,
            "threshold",
        ),
        (
            json!({"name": "x", "members": [tuned, base], "threshold": "auto"}),
            400,
            "threshold",
        ),
    ] {
        let res = define(&app, body.clone()).await;
        assert_error(res, status, Some(param)).await;
    }
    let res = define(
        &app,
        json!({"name": "x", "members": [tuned, base], "strategy": "majority"}),
    )
    .await;
    assert_eq!(res.status(), 400);
    let res = define(&app, json!({"name": "pair", "members": [tuned, base]})).await;
    assert_error(res, 409, None).await;
    let res = define(&app, json!({"name": "elsewhere", "members": [tuned, base]})).await;
    assert_error(res, 409, None).await;
    assert_error(app.get("/v1/ensembles/nope").await, 404, Some("id")).await;
    assert_error(app.delete("/v1/ensembles/nope").await, 404, Some("id")).await;

    // Removing a grouping leaves its models alone.
    assert_eq!(app.delete("/v1/ensembles/pair").await.status(), 200);
    assert!(model_ids(&app).await.contains(&tuned));
    assert_error(
        app.post(
            "/v1/chat/completions",
            &json!({"model": "pair", "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await,
        404,
        Some("model"),
    )
    .await;
}

#[tokio::test]
async fn an_auto_threshold_keeps_the_domain_model_on_95_percent_of_its_validation_answers() {
    let app = spawn_app().await;
    // Calibrated as chat requests are answered here: 40 tokens at most.
    let (_, tuned) = fine_tune_validated(&app, "health", json!({"eval_max_new_tokens": 40})).await;
    let base = "ferrotune-tiny";
    let res = define(
        &app,
        json!({"name": "auto", "members": [tuned], "strategy": "layered", "fallback": base,
               "threshold": "auto"}),
    )
    .await;
    assert_eq!(res.status(), 200);
    let created: Value = res.json().await.unwrap();
    let threshold = created["threshold"].as_f64().unwrap();
    assert!((-100.0..=0.0).contains(&threshold), "{created}");
    let mut kept = 0;
    for (question, _) in QA {
        let body = ask(&app, "auto", question).await;
        let report = &body["ensemble"];
        assert_eq!(report["threshold"], threshold);
        if report["layer"] == "member" {
            kept += 1;
            assert_eq!(report["winner"], tuned.as_str());
        }
    }
    // Ten validation answers: at least 95 % of them, so all ten, stay with the domain model.
    assert_eq!(kept, QA.len());
    // A word other than "auto" is not a threshold.
    let res = define(
        &app,
        json!({"name": "soon", "members": [tuned], "strategy": "layered", "fallback": base,
               "threshold": "soon"}),
    )
    .await;
    assert_error(res, 400, Some("threshold")).await;
}

#[tokio::test]
async fn another_organization_can_neither_group_nor_reach_a_model() {
    let mut app = spawn_app_with(AppOptions {
        api_keys: vec!["sk-a".into(), "sk-b".into()],
        ..AppOptions::default()
    })
    .await;
    let (_, tuned) = fine_tune(&app, "mine").await;
    let res = define(
        &app,
        json!({"name": "a-team", "members": [tuned, "ferrotune-tiny"]}),
    )
    .await;
    assert_eq!(res.status(), 200);
    app.api_key = Some("sk-b".into());
    let res = define(
        &app,
        json!({"name": "b-team", "members": [tuned, "ferrotune-tiny"]}),
    )
    .await;
    assert_error(res, 400, Some("members[0]")).await;
    assert_error(app.get("/v1/ensembles/a-team").await, 404, Some("id")).await;
    let list: Value = app.get("/v1/ensembles").await.json().await.unwrap();
    assert_eq!(list["data"], json!([]));
    let res = app
        .post(
            "/v1/chat/completions",
            &json!({"model": "a-team", "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
    assert_error(res, 404, Some("model")).await;
}

#[tokio::test]
async fn ensemble_hyperparameters_are_checked() {
    let app = spawn_app().await;
    let file = app.training_file(10).await;
    for (hp, param) in [
        (json!({"ensemble_size": 9}), "ensemble_size"),
        (json!({"ensemble_size": 0}), "ensemble_size"),
        (json!({"ensemble_size": "3"}), "ensemble_size"),
        (json!({"ensemble_bootstrap": true}), "ensemble_bootstrap"),
        (
            json!({"ensemble_size": 2, "ensemble_bootstrap": 1}),
            "ensemble_bootstrap",
        ),
    ] {
        let res = app
            .post(
                "/v1/fine_tuning/jobs",
                &json!({"model": "ferrotune-tiny", "training_file": file,
                        "method": {"type": "supervised", "supervised": {"hyperparameters": hp}}}),
            )
            .await;
        let want = format!("method.supervised.hyperparameters.{param}");
        assert_error(res, 400, Some(&want)).await;
    }
}
