//! Paged attention is a GPU option: on the CPU `auto` leaves it off and the server serves, while
//! `on` is refused at start with the reason, before the server takes requests.

use ferrotune::config::{PagedAttention, Settings};
use ferrotune::startup::Application;

use crate::helpers::spawn_app;

#[tokio::test]
async fn paged_attention_on_without_a_gpu_is_refused_at_start() {
    // `auto` (the default) on the CPU: the server runs and answers.
    let app = spawn_app().await;
    let res = app
        .post(
            "/v1/chat/completions",
            &serde_json::json!({"model": "ferrotune-tiny", "max_tokens": 3,
                "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
    assert_eq!(res.status(), 200);

    let data = tempfile::tempdir().unwrap();
    let mut settings = Settings::local(data.path().to_owned());
    settings.storage.database_url = Some(app.database_url());
    settings.model.paged_attention = PagedAttention::On;
    let err = match Application::build(settings).await {
        Ok(_) => panic!("a CPU server started with --paged-attention on"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("--paged-attention on needs a CUDA device"),
        "{err}"
    );
}
