//! A base model whose chat template renders `tools` itself (the Qwen2.5 / Hermes way: a
//! `<tools>` block in the system turn, calls in `<tool_call>` tags, results in `<tool_response>`;
//! the template below is written for this test). Serving hands the tools to that template instead
//! of the documented system text, forced calls still come back as `tool_calls`, and the prompt
//! served is the prompt training renders (same token count, on a tokenizer of one token per
//! character), tool calls and results included. Both render as Hugging Face does, with
//! `trim_blocks` and `lstrip_blocks`.

use ferrotune::domain::dataset::Turn;
use ferrotune::model_dir::template::ChatTemplate;
use serde_json::{Value, json};

use crate::helpers::{AppOptions, TestApp, spawn_app_with};
use crate::tools::tools;

const TOOLS_TEMPLATE: &str = r#"{%- if tools %}<|im_start|>system
{% if messages[0].role == 'system' %}{{ messages[0].content }}

{% endif %}You may call functions. Their signatures are inside <tools></tools>:
<tools>
{%- for tool in tools %}
{{ "\n" }}{{ tool | tojson }}
{%- endfor %}
{{ "\n" }}</tools>
Call one with <tool_call>{"name": <name>, "arguments": <arguments>}</tool_call>.<|im_end|>
{% elif messages[0].role == 'system' %}<|im_start|>system
{{ messages[0].content }}<|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' %}
{%- elif message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{% if message.content %}{{ message.content }}
{% endif %}
{%- for call in message.tool_calls %}<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>{% endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"#;

const MODEL: &str = "tools-tiny";

/// A server on the tiny model with [`TOOLS_TEMPLATE`] as its chat template.
async fn app() -> (TestApp, tempfile::TempDir) {
    let models = tempfile::tempdir().unwrap();
    let dir = models.path().join(MODEL);
    ferrotune::train::tiny::init_tiny(&dir, ferrotune::train::tiny::TinyArch::Llama, 1).unwrap();
    let path = dir.join("tokenizer_config.json");
    let mut config: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["chat_template"] = json!(TOOLS_TEMPLATE);
    std::fs::write(&path, config.to_string()).unwrap();
    let app = spawn_app_with(AppOptions {
        base_model: Some(dir),
        ..Default::default()
    })
    .await;
    (app, models)
}

/// Tokens of `turns` as training renders them (generation prompt added), and the text.
fn trained_prompt(app_models: &std::path::Path, turns: Value, tools: &Value) -> (usize, String) {
    let dir = app_models.join(MODEL);
    let turns: Vec<Turn> = serde_json::from_value(turns).unwrap();
    let text = ChatTemplate::from_model_dir(&dir)
        .unwrap()
        .render(&turns, true, Some(tools))
        .unwrap();
    let tokenizer = ferrotune::train::data::load_tokenizer(&dir).unwrap();
    (tokenizer.encode(text.as_str(), true).unwrap().len(), text)
}

/// [`crate::tools::chat`] to this test's model; the 200 body.
async fn chat(app: &TestApp, mut body: Value) -> Value {
    body["model"] = json!(MODEL);
    let res = crate::tools::chat(app, body).await;
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

#[tokio::test]
async fn a_template_with_tools_renders_them_and_serves_what_training_renders() {
    let (app, models) = app().await;
    let question = "What is the weather in Paris?";
    let body = chat(
        &app,
        json!({"tool_choice": "required", "parallel_tool_calls": false,
               "messages": [{"role": "user", "content": question}]}),
    )
    .await;
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls", "{body}");
    let call = &choice["message"]["tool_calls"][0];
    let name = call["function"]["name"].as_str().unwrap();
    assert!(["get_weather", "get_time"].contains(&name), "{body}");
    let args: Value =
        serde_json::from_str(call["function"]["arguments"].as_str().unwrap()).unwrap();
    assert!(args.is_object(), "{args}");

    let turns = json!([{"role": "user", "content": question, "train": false}]);
    let (tokens, text) = trained_prompt(models.path(), turns, &tools());
    // The template's own tool block, not the documented system text of templates without tools;
    // `get_time` has no description and renders with the null serving gives it.
    assert!(text.contains("<tools>\n{"), "{text}");
    assert!(text.contains(r#""description":null"#), "{text}");
    assert!(!text.contains("You can call these functions"), "{text}");
    assert_eq!(body["usage"]["prompt_tokens"], tokens, "{text}");
}

#[tokio::test]
async fn a_tool_call_and_its_result_render_alike_in_serving_and_training() {
    let (app, models) = app().await;
    let messages = json!([
        {"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C and sunny"}
    ]);
    let body = chat(&app, json!({"messages": messages, "max_tokens": 5})).await;

    let turns = json!([
        {"role": "user", "content": "What is the weather in Paris?", "train": false},
        {"role": "assistant", "content": "", "train": true, "tool_calls": [
            {"id": "call_1", "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}]},
        {"role": "tool", "content": "18 C and sunny", "train": false, "tool_call_id": "call_1"}
    ]);
    let (tokens, text) = trained_prompt(models.path(), turns, &tools());
    assert!(
        text.contains(
            "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Paris\"}}"
        ),
        "{text}"
    );
    assert!(
        text.contains("<tool_response>\n18 C and sunny\n</tool_response>"),
        "{text}"
    );
    assert_eq!(body["usage"]["prompt_tokens"], tokens, "{text}");
}
