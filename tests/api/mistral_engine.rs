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

#[tokio::test]
async fn answers_in_openai_shape() {
    crate::chat::answers_in_openai_shape(mistral().await).await;
}

#[tokio::test]
async fn streams_in_openai_shape() {
    crate::chat::streams_in_openai_shape(mistral().await).await;
}

#[tokio::test]
async fn honours_n_stop_and_max_tokens() {
    crate::chat::honours_n_stop_and_max_tokens(mistral().await).await;
}

#[tokio::test]
async fn serves_a_fine_tune() {
    crate::chat::serves_a_fine_tune(mistral().await).await;
}

#[tokio::test]
async fn calls_a_required_tool() {
    crate::tools::calls_a_required_tool(mistral().await).await;
}

#[tokio::test]
async fn follows_a_json_schema() {
    crate::tools::follows_a_json_schema(mistral().await).await;
}

#[tokio::test]
async fn continues_a_prompt() {
    crate::completions::continues_a_prompt(mistral().await).await;
}
