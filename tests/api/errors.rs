use crate::helpers::{assert_error, spawn_app};

#[tokio::test]
async fn unknown_routes_and_wrong_methods_get_the_json_envelope() {
    let app = spawn_app().await;
    let err = assert_error(app.get("/v1/does-not-exist").await, 404, None).await;
    assert_eq!(err["code"], "unknown_url");
    let err = assert_error(app.delete("/v1/fine_tuning/jobs").await, 405, None).await;
    assert_eq!(err["code"], "method_not_allowed");
    let res = app
        .client
        .put(format!("{}/v1/files/file-x", app.address))
        .send()
        .await
        .unwrap();
    assert_error(res, 405, None).await;
}

#[tokio::test]
async fn malformed_json_and_wrong_content_types_are_400() {
    let app = spawn_app().await;
    let url = format!("{}/v1/fine_tuning/jobs", app.address);
    let send = |body: &'static str, ct: &'static str| {
        app.client
            .post(&url)
            .header("content-type", ct)
            .body(body)
            .send()
    };
    let err = assert_error(
        send("{\"model\":", "application/json").await.unwrap(),
        400,
        None,
    )
    .await;
    assert!(err["message"].as_str().unwrap().contains("Invalid JSON"));
    assert_error(send("[1,2]", "application/json").await.unwrap(), 400, None).await;
    // A field of the wrong type is named, as every other 400 names its parameter.
    assert_error(
        send(
            "{\"model\": 5, \"training_file\": \"file-a\"}",
            "application/json",
        )
        .await
        .unwrap(),
        400,
        Some("model"),
    )
    .await;
    assert_error(
        send("model=x", "application/x-www-form-urlencoded")
            .await
            .unwrap(),
        400,
        None,
    )
    .await;
}

#[tokio::test]
async fn health_reports_the_database() {
    let app = spawn_app().await;
    let res = app.get("/health").await;
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["database"], "ok");
}
