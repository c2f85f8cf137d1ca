//! The chat, tools and completions tests that run on both engines: the default (llama.cpp on
//! the CPU) in their own files, and mistral.rs (the GPU engine, selectable on the CPU) here, so
//! neither rots.

use ferrotune::config::EngineChoice;

use crate::helpers::{AppOptions, TestApp, spawn_app_with};

async fn mistral() -> TestApp {
    spawn_app_with(AppOptions {
        engine: Some(EngineChoice::Mistralrs),
        ..AppOptions::default()
    })
    .await
}

/// A test per shared body: `module::body` runs on a mistral.rs server.
macro_rules! on_mistral {
    ($($module:ident::$body:ident),* $(,)?) => {$(
        #[tokio::test]
        async fn $body() {
            let app = mistral().await;
            assert_eq!(app.engine.kind(), "mistralrs");
            crate::$module::$body(app).await;
        }
    )*};
}

on_mistral!(
    chat::answers_in_openai_shape,
    chat::streams_in_openai_shape,
    chat::honours_n_stop_and_max_tokens,
    chat::serves_a_fine_tune,
    chat::ends_a_cut_stream_with_an_error_event,
    tools::calls_a_required_tool,
    tools::follows_a_named_tool_choice,
    tools::follows_a_json_schema,
    completions::continues_a_prompt,
);
