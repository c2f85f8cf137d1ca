//! The dashboard's server side and `/metrics`: pages and assets, the chart endpoint's answers
//! (bad input, another organization's job, the points of a trained job) and the metrics that
//! come from the database.

use serde_json::json;

use crate::helpers::upload_qa;
use crate::helpers::{AppOptions, TestApp, assert_error, spawn_app_with};

async fn keyed_app() -> TestApp {
    spawn_app_with(AppOptions {
        api_keys: vec!["sk-a".into(), "sk-b".into()],
        ..Default::default()
    })
    .await
}

#[tokio::test]
async fn pages_and_assets_are_served_without_a_key_and_unknown_pages_are_404() {
    let mut app = keyed_app().await;
    app.api_key = None;
    for page in [
        "/ui",
        "/ui/",
        "/ui/jobs",
        "/ui/job",
        "/ui/files",
        "/ui/playground",
    ] {
        let res = app.get(page).await;
        assert_eq!(res.status(), 200, "{page}");
        let kind = res.headers()["content-type"].to_str().unwrap().to_owned();
        assert!(kind.starts_with("text/html"), "{page}: {kind}");
        assert!(res.text().await.unwrap().contains("/ui/static/app.js"));
    }
    let js = app.get("/ui/static/app.js").await;
    assert_eq!(js.status(), 200);
    assert!(js.text().await.unwrap().contains("/v1/fine_tuning/jobs"));
    assert_eq!(app.get("/ui/static/nope.js").await.status(), 404);
    assert_eq!(app.get("/ui/nope").await.status(), 404);
}

#[tokio::test]
async fn charts_need_a_key_a_known_metric_and_the_callers_own_jobs() {
    let mut app = keyed_app().await;
    let train = upload_qa(&app, 10).await;
    let hp = json!({"n_epochs": 2, "batch_size": 2, "learning_rate": 0.01, "logging_steps": 1});
    let job = app
        .create_job(
            &train,
            json!({"method": {"type": "supervised", "supervised": {"hyperparameters": hp}}}),
        )
        .await;
    let id = job["id"].as_str().unwrap().to_owned();

    // Before training: a chart with nothing to draw.
    let res = app.get(&format!("/ui/charts/loss?jobs={id}")).await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["x-chart-points"], "0");
    assert!(res.text().await.unwrap().contains("no points yet"));

    assert!(app.worker().run_once().await.unwrap());
    assert_eq!(app.job(&id).await["status"], "succeeded");
    for metric in ["loss", "accuracy", "learning_rate", "tokens_per_second"] {
        let res = app
            .get(&format!("/ui/charts/{metric}?jobs={id}&log=true"))
            .await;
        assert_eq!(res.status(), 200, "{metric}");
        assert_eq!(res.headers()["content-type"], "image/svg+xml");
        // Ten steps (10 examples, batch 2, 2 epochs), every one logged.
        assert_eq!(res.headers()["x-chart-points"], "10", "{metric}");
        assert!(res.text().await.unwrap().starts_with("<svg"));
    }
    // Metrics events carry what the charts draw.
    let rows = app.metrics_events(&id).await;
    let last = rows.last().expect("a metrics event");
    assert!(last["learning_rate"].as_f64().unwrap() >= 0.0);
    assert!(last["tokens_per_second"].as_f64().unwrap() > 0.0);

    assert_error(
        app.get(&format!("/ui/charts/bogus?jobs={id}")).await,
        400,
        Some("metric"),
    )
    .await;
    assert_error(app.get("/ui/charts/loss?jobs=").await, 400, Some("jobs")).await;
    let nine = [id.as_str(); 9].join(",");
    assert_error(
        app.get(&format!("/ui/charts/loss?jobs={nine}")).await,
        400,
        Some("jobs"),
    )
    .await;
    assert_error(app.get("/ui/charts/loss").await, 400, None).await;
    assert_error(
        app.get("/ui/charts/loss?jobs=ftjob-nope").await,
        404,
        Some("id"),
    )
    .await;
    assert_error(
        app.get("/ui/charts/loss?jobs=not-an-id").await,
        404,
        Some("id"),
    )
    .await;

    app.api_key = Some("sk-b".into());
    assert_error(
        app.get(&format!("/ui/charts/loss?jobs={id}")).await,
        404,
        Some("id"),
    )
    .await;
    app.api_key = None;
    assert_error(
        app.get(&format!("/ui/charts/loss?jobs={id}")).await,
        401,
        None,
    )
    .await;
}

#[tokio::test]
async fn metrics_need_a_key_and_count_jobs_by_status_from_the_database() {
    let mut app = keyed_app().await;
    let train = upload_qa(&app, 10).await;
    let job = app.create_job(&train, json!({})).await;
    let status = app.job(job["id"].as_str().unwrap()).await["status"].clone();
    app.api_key = None;
    assert_error(app.get("/metrics").await, 401, None).await;
    app.api_key = Some("sk-b".into());
    let res = app.get("/metrics").await;
    assert_eq!(res.status(), 200);
    assert!(
        res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = res.text().await.unwrap();
    // This test's database holds exactly the one queued job (another key's, operator-wide).
    assert!(
        text.lines()
            .any(|l| l == "ferrotune:fine_tuning_queue_depth 1"),
        "{text}"
    );
    let line = format!("ferrotune:fine_tuning_jobs{{status={status}}} 1");
    assert!(text.lines().any(|l| l == line), "{line} in {text}");
    assert!(text.contains("# TYPE ferrotune:fine_tuning_queue_depth gauge"));
    assert!(text.contains("process_resident_memory_bytes"));
    assert!(text.contains(
        "ferrotune:http_requests_total{method=\"GET\",route=\"/metrics\",status=\"401\"}"
    ));
}
