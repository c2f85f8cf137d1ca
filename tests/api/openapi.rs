use crate::helpers::spawn_app;

#[test]
fn committed_openapi_matches_the_code() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/openapi/openapi.json");
    let committed = std::fs::read_to_string(path).expect("openapi/openapi.json exists");
    let generated = ferrotune::api::openapi::spec_json();
    assert!(
        committed == generated,
        "openapi/openapi.json is stale: run `cargo run -- openapi > openapi/openapi.json`"
    );
}

#[test]
fn openapi_documents_every_route() {
    let spec: serde_json::Value =
        serde_json::from_str(&ferrotune::api::openapi::spec_json()).unwrap();
    let paths = spec["paths"].as_object().unwrap();
    for p in [
        "/v1/files",
        "/v1/files/{file_id}",
        "/v1/files/{file_id}/content",
        "/v1/fine_tuning/jobs",
        "/v1/fine_tuning/jobs/{job_id}",
        "/v1/fine_tuning/jobs/{job_id}/cancel",
        "/v1/fine_tuning/jobs/{job_id}/pause",
        "/v1/fine_tuning/jobs/{job_id}/resume",
        "/v1/fine_tuning/jobs/{job_id}/events",
        "/v1/fine_tuning/jobs/{job_id}/checkpoints",
        "/health",
        "/v1/chat/completions",
        "/v1/models",
        "/v1/models/{model}",
        "/v1/load_lora_adapter",
        "/v1/unload_lora_adapter",
    ] {
        assert!(paths.contains_key(p), "{p} missing from the spec");
    }
}

#[tokio::test]
async fn the_server_serves_its_spec() {
    let app = spawn_app().await;
    let res = app.get("/openapi.json").await;
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.text().await.unwrap(),
        ferrotune::api::openapi::spec_json()
    );
}
