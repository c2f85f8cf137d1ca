//! Chat templates: the model's own jinja `chat_template` (rendered with minijinja, Python string
//! methods enabled so Hugging Face templates such as Qwen2's work), or a built-in named as in
//! LLaMA-Factory's `--template` (`qwen`, `chatml`, `llama3`, `mistral`, `alpaca`).
//!
//! [`ChatTemplate::segments`] splits a rendered conversation into prompt and response pieces, so
//! labels cover the assistant's tokens (and its end-of-turn token) only.

use std::path::Path;

use minijinja::{Environment, context};
use serde_json::Value;

use super::ModelDirError;
use crate::domain::dataset::{Example, Role, Turn};
use crate::domain::tools::{
    FunctionTool, TemplateTurn, parse_tools, template_messages, template_tools_value,
};

const CHATML: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const QWEN: &str = "{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";
const LLAMA3: &str = "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}";
const MISTRAL: &str = "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}{% elif message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token }}{% endif %}{% endfor %}";
const ALPACA: &str = "{% for message in messages %}{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}{% elif message['role'] == 'user' %}{{ '### Instruction:\n' + message['content'] + '\n\n' }}{% elif message['role'] == 'assistant' %}{{ '### Response:\n' + message['content'] + eos_token + '\n\n' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '### Response:\n' }}{% endif %}";

/// The ChatML template written into generated tiny models.
pub const CHATML_TEMPLATE: &str = CHATML;

/// Built-in template names.
pub const BUILTIN: [&str; 5] = ["qwen", "chatml", "llama3", "mistral", "alpaca"];

/// A chat template with the special tokens it refers to.
#[derive(Debug, Clone)]
pub struct ChatTemplate {
    source: String,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// A built-in template by LLaMA-Factory name.
    pub fn builtin(name: &str, bos_token: &str, eos_token: &str) -> Result<Self, ModelDirError> {
        let source = match name {
            "qwen" => QWEN,
            "chatml" => CHATML,
            "llama3" => LLAMA3,
            "mistral" => MISTRAL,
            "alpaca" => ALPACA,
            other => {
                return Err(ModelDirError::Unsupported(format!(
                    "unknown template '{other}'; built-ins: {}",
                    BUILTIN.join(", ")
                )));
            }
        };
        Ok(Self {
            source: source.to_owned(),
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// The model's template: `chat_template.jinja`, else `tokenizer_config.json`'s
    /// `chat_template` (a string, or a list with a `default` entry).
    pub fn from_model_dir(dir: &Path) -> Result<Self, ModelDirError> {
        let config = super::read_tokenizer_config(dir)?;
        let token = |key: &str| -> String {
            match config.get(key) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Object(o)) => o
                    .get("content")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                _ => String::new(),
            }
        };
        let jinja = dir.join("chat_template.jinja");
        let source = if jinja.exists() {
            std::fs::read_to_string(&jinja).map_err(super::io_err(&jinja))?
        } else {
            match config.get("chat_template") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str())
                    .unwrap_or_default()
                    .to_owned(),
                _ => String::new(),
            }
        };
        if source.is_empty() {
            return Err(ModelDirError::Unsupported(format!(
                "{} has no chat template; pass a built-in template ({})",
                dir.display(),
                BUILTIN.join(", ")
            )));
        }
        Ok(Self {
            source,
            bos_token: token("bos_token"),
            eos_token: token("eos_token"),
        })
    }

    /// Whether the template renders a `tools` variable itself.
    pub fn handles_tools(&self) -> bool {
        crate::domain::tools::template_handles_tools(&self.source)
    }

    /// The end-of-sequence token text.
    pub fn eos_token(&self) -> &str {
        &self.eos_token
    }

    /// Render `turns` as the model sees them, `tools` offered (several calls at once allowed).
    pub fn render(
        &self,
        turns: &[Turn],
        add_generation_prompt: bool,
        tools: Option<&Value>,
    ) -> Result<String, ModelDirError> {
        self.render_offering(turns, add_generation_prompt, tools, true)
    }

    /// [`ChatTemplate::render`] with `parallel_tool_calls` given. The messages are built by
    /// [`template_messages`], as serving builds them, so a fine-tune learns the prompt it is
    /// served with.
    fn render_offering(
        &self,
        turns: &[Turn],
        add_generation_prompt: bool,
        tools: Option<&Value>,
        parallel: bool,
    ) -> Result<String, ModelDirError> {
        let view: Vec<TemplateTurn<'_>> = turns
            .iter()
            .map(|t| TemplateTurn {
                role: t.role.as_str(),
                content: &t.content,
                tool_calls: &t.tool_calls,
                tool_call_id: t.tool_call_id.as_deref(),
            })
            .collect();
        // Tools in another shape (LLaMA-Factory's ShareGPT lists) still reach a template that
        // renders `tools`; only OpenAI-shaped ones can be offered in the documented format.
        let offered = tools.and_then(|t| parse_tools(t, "tools").ok());
        let value = offered
            .as_deref()
            .map(template_tools_value)
            .or_else(|| tools.cloned());
        self.render_view(
            &view,
            offered.as_deref().map(|t| (t, parallel)),
            value,
            add_generation_prompt,
        )
    }

    /// Render a conversation as serving hands it over: `offered` tools (and whether several
    /// calls at once are allowed) in the documented format, or as the template's `tools`.
    pub fn render_conversation(
        &self,
        view: &[TemplateTurn<'_>],
        offered: Option<(&[FunctionTool], bool)>,
        add_generation_prompt: bool,
    ) -> Result<String, ModelDirError> {
        let value = offered.map(|(t, _)| template_tools_value(t));
        self.render_view(view, offered, value, add_generation_prompt)
    }

    fn render_view(
        &self,
        view: &[TemplateTurn<'_>],
        offered: Option<(&[FunctionTool], bool)>,
        tools_value: Option<Value>,
        add_generation_prompt: bool,
    ) -> Result<String, ModelDirError> {
        let mut env = Environment::new();
        // As Hugging Face renders chat templates, and so the serving engine: a block tag eats
        // the newline after it and the spaces before it.
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |msg: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    msg,
                ))
            },
        );
        env.add_function("strftime_now", |fmt: String| {
            chrono::Utc::now().format(&fmt).to_string()
        });
        env.add_template("chat", &self.source).map_err(|e| {
            ModelDirError::Unsupported(format!("chat template does not parse: {e}"))
        })?;
        let messages = template_messages(view, offered, self.handles_tools());
        let tmpl = env
            .get_template("chat")
            .map_err(|e| ModelDirError::Unsupported(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token,
            eos_token => self.eos_token,
            tools => tools_value,
        })
        .map_err(|e| ModelDirError::Unsupported(format!("rendering the chat template failed: {e}")))
    }

    /// `(text, trained)` pieces whose concatenation is the rendered conversation up to its last
    /// assistant turn. Assistant content (with its end-of-turn text) is trained when its turn is.
    pub fn segments(&self, example: &Example) -> Result<Vec<(String, bool)>, ModelDirError> {
        let tools = example.tools.as_ref();
        let mut out = Vec::new();
        let mut done = String::new();
        for (i, turn) in example.turns.iter().enumerate() {
            if turn.role != Role::Assistant {
                continue;
            }
            let parallel = example.parallel_tool_calls;
            let prompt = self.render_offering(&example.turns[..i], true, tools, parallel)?;
            let full = self.render_offering(&example.turns[..=i], false, tools, parallel)?;
            let (Some(prompt_part), Some(answer)) = (
                prompt.strip_prefix(done.as_str()),
                full.strip_prefix(prompt.as_str()),
            ) else {
                return Err(ModelDirError::Unsupported(
                    "the chat template does not render conversations incrementally, so responses \
                     cannot be located; use a built-in template"
                        .to_owned(),
                ));
            };
            out.push((prompt_part.to_owned(), false));
            out.push((answer.to_owned(), turn.train));
            done = full;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::dataset::parse_record;

    #[test]
    fn chatml_without_a_tools_variable_is_not_a_tools_template() {
        assert!(!crate::domain::tools::template_handles_tools(
            CHATML_TEMPLATE
        ));
    }

    fn example() -> Example {
        parse_record(&serde_json::json!({"messages": [
            {"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
            {"role": "assistant", "content": "A1", "weight": 0}, {"role": "user", "content": "Q2"},
            {"role": "assistant", "content": "A2"}]}))
        .unwrap()
        .1
    }

    #[test]
    fn chatml_segments_train_only_on_answers() {
        let t = ChatTemplate::builtin("chatml", "", "<|im_end|>").unwrap();
        let segs = t.segments(&example()).unwrap();
        let trained: Vec<&str> = segs.iter().filter(|s| s.1).map(|s| s.0.as_str()).collect();
        assert_eq!(trained, vec!["A2<|im_end|>\n"]);
        let joined: String = segs.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(joined, t.render(&example().turns, false, None).unwrap());
        assert!(segs[0].0.ends_with("<|im_start|>assistant\n"));
    }

    #[test]
    fn tool_calls_are_trained_in_the_documented_format_without_template_tools() {
        let t = ChatTemplate::builtin("chatml", "", "<|im_end|>").unwrap();
        let (_, ex) = parse_record(&serde_json::json!({
            "messages": [
                {"role": "user", "content": "Weather in Oslo?"},
                {"role": "assistant", "tool_calls": [{"id": "call_1", "type": "function",
                    "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "-3 C"},
                {"role": "assistant", "content": "-3 C."}],
            "tools": [{"type": "function", "function": {"name": "get_weather"}}]}))
        .unwrap();
        let segs = t.segments(&ex).unwrap();
        assert!(
            segs[0]
                .0
                .starts_with("<|im_start|>system\nYou can call these functions:\n")
        );
        assert!(!segs[0].1 && segs[1].1);
        assert_eq!(
            segs[1].0,
            "{\"name\": \"get_weather\", \"arguments\": {\"city\":\"Oslo\"}}<|im_end|>\n"
        );
        assert!(
            segs[2].0.contains("<|im_start|>tool\n-3 C<|im_end|>"),
            "{segs:?}"
        );
    }

    #[test]
    fn every_builtin_renders_incrementally() {
        for name in BUILTIN {
            let t = ChatTemplate::builtin(name, "<s>", "</s>").unwrap();
            let segs = t.segments(&example()).unwrap();
            assert_eq!(segs.len(), 4, "{name}");
            assert!(segs[3].0.contains("A2"), "{name}: {segs:?}");
        }
    }

    /// Written in the style of Hugging Face templates (Qwen2's uses these constructs): a
    /// namespace, `loop.first`, `tools | tojson`, string methods and `raise_exception`.
    const HF_STYLE: &str = "{%- set ns = namespace(system=false) -%}\
        {%- if tools -%}<|im_start|>system\nTools: {{ tools | tojson }}<|im_end|>\n{%- endif -%}\
        {%- for message in messages -%}\
        {%- if message.role == 'system' -%}{%- set ns.system = true -%}{%- endif -%}\
        {%- if loop.first and message.role not in ['system', 'user'] -%}{{ raise_exception('bad first role') }}{%- endif -%}\
        <|im_start|>{{ message.role }}\n{{ message.content.strip() }}<|im_end|>\n\
        {%- endfor -%}\
        {%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}";

    #[test]
    fn hugging_face_style_templates_render_and_segment() {
        let t = ChatTemplate {
            source: HF_STYLE.into(),
            bos_token: String::new(),
            eos_token: "<|im_end|>".into(),
        };
        let mut ex = example();
        ex.tools = Some(serde_json::json!([{"type": "function", "function": {"name": "f"}}]));
        let segs = t.segments(&ex).unwrap();
        assert!(
            segs[0].0.starts_with(
                "<|im_start|>system\nTools: [{\"function\":{\"description\":null,\"name\":\"f\""
            ),
            "{segs:?}"
        );
        assert!(segs[3].1 && segs[3].0.trim() == "A2<|im_end|>", "{segs:?}");
        let bad = [Turn::new(Role::Assistant, "x")];
        let err = t.render(&bad, false, None).unwrap_err().to_string();
        assert!(err.contains("bad first role"), "{err}");
    }

    #[test]
    fn python_style_hf_templates_render() {
        let src = "{% for m in messages %}{% if m.content.startswith('Q') %}{{ m.content.strip() | upper }}{% endif %}{% endfor %}";
        let t = ChatTemplate {
            source: src.into(),
            bos_token: String::new(),
            eos_token: String::new(),
        };
        assert_eq!(t.render(&example().turns, false, None).unwrap(), "Q1Q2");
    }
}
