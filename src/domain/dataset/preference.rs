//! Preference records (DPO data): OpenAI's `input` / `preferred_output` / `non_preferred_output`,
//! and LLaMA-Factory's alpaca (`instruction`, `input`, `chosen`, `rejected` strings) and ShareGPT
//! (`conversations` with `chosen` / `rejected` messages) pairs. Each becomes an [`Example`] whose
//! prompt turns are not trained, whose last turn is the chosen answer and whose
//! [`Example::rejected`] is the other.

use serde_json::{Map, Value};

use super::records::{alpaca, chat, chat_message, kind, sharegpt};
use super::{DatasetFormat, Example, RecordError, Role, Turn};

type Parsed = Result<(DatasetFormat, Example), RecordError>;

/// The record as a preference pair, or `None` when it is not one (then it is read as SFT data).
pub fn parse(obj: &Map<String, Value>) -> Option<Parsed> {
    if obj.contains_key("preferred_output") || obj.contains_key("non_preferred_output") {
        return Some(openai(obj).map(|e| (DatasetFormat::Preference, e)));
    }
    if !(obj.contains_key("chosen") || obj.contains_key("rejected")) {
        return None;
    }
    if obj.contains_key("instruction") {
        return Some(llama_factory_alpaca(obj).map(|e| (DatasetFormat::AlpacaPreference, e)));
    }
    if obj.contains_key("conversations") {
        return Some(llama_factory_sharegpt(obj).map(|e| (DatasetFormat::SharegptPreference, e)));
    }
    Some(Err(
        "`chosen`/`rejected` need `instruction` (alpaca) or `conversations` (ShareGPT)".into(),
    ))
}

/// The prompt `turns` (none trained) followed by `chosen`, with `rejected` beside them.
fn pair(mut turns: Vec<Turn>, chosen: Turn, rejected: Turn) -> Result<Vec<Turn>, RecordError> {
    match turns.last() {
        Some(t) if t.role == Role::User || t.role == Role::Tool => {}
        Some(_) => return Err("the prompt must end with a user (or tool) message".into()),
        None => return Err("the prompt has no messages".into()),
    }
    for t in &mut turns {
        t.train = false;
    }
    if chosen.role != Role::Assistant || rejected.role != Role::Assistant {
        return Err("the preferred and non-preferred outputs must be assistant messages".into());
    }
    if chosen.content == rejected.content && chosen.tool_calls == rejected.tool_calls {
        return Err("the preferred and non-preferred outputs are identical".into());
    }
    turns.push(chosen);
    turns.push(rejected);
    Ok(turns)
}

/// Split the turns [`pair`] built into the example and its rejected answer.
fn example(mut turns: Vec<Turn>, template: Example) -> Result<Example, RecordError> {
    let rejected = turns.pop().ok_or("no rejected answer")?;
    Ok(Example {
        turns,
        rejected: Some(Turn {
            train: true,
            ..rejected
        }),
        ..template
    })
}

/// The one assistant message of `preferred_output` / `non_preferred_output`.
fn single_output(obj: &Map<String, Value>, key: &str) -> Result<Turn, RecordError> {
    match obj.get(key) {
        Some(Value::Array(items)) if items.len() == 1 => {
            chat_message(&items[0]).map_err(|e| bad!("{key}[0]: {e}"))
        }
        Some(Value::Array(items)) => Err(bad!(
            "`{key}` must hold exactly one assistant message, found {}",
            items.len()
        )),
        Some(other) => Err(bad!("`{key}` must be a list, found {}", kind(other))),
        None => Err(bad!("missing `{key}`")),
    }
}

fn openai(obj: &Map<String, Value>) -> Result<Example, RecordError> {
    let Some(Value::Object(input)) = obj.get("input") else {
        return Err("`input` must be an object with `messages`".into());
    };
    let chosen = single_output(obj, "preferred_output")?;
    let rejected = single_output(obj, "non_preferred_output")?;
    // The input's checks (tools, parallel calls) also cover both answers' calls.
    let mut both = input.clone();
    let mut messages = match input.get("messages") {
        Some(Value::Array(m)) => m.clone(),
        _ => return Err("input: `messages` must be a list".into()),
    };
    for key in ["preferred_output", "non_preferred_output"] {
        if let Some(Value::Array(items)) = obj.get(key) {
            messages.extend(items.iter().cloned());
        }
    }
    both.insert("messages".into(), Value::Array(messages));
    let checked = chat(&both).map_err(|e| bad!("input: {e}"))?;
    let prompt = checked.turns[..checked.turns.len() - 2].to_vec();
    let turns = pair(prompt, chosen, rejected)?;
    example(turns, checked)
}

fn llama_factory_alpaca(obj: &Map<String, Value>) -> Result<Example, RecordError> {
    let answer = |key: &str| match obj.get(key) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(bad!("`{key}` must be a string, found {}", kind(other))),
        None => Err(bad!("missing `{key}`")),
    };
    let (chosen, rejected) = (answer("chosen")?, answer("rejected")?);
    let mut prompt_only = obj.clone();
    prompt_only.insert("output".into(), Value::String(chosen.clone()));
    let parsed = alpaca(&prompt_only)?;
    let prompt = parsed.turns[..parsed.turns.len() - 1].to_vec();
    let turns = pair(
        prompt,
        Turn::new(Role::Assistant, chosen),
        Turn::new(Role::Assistant, rejected),
    )?;
    example(turns, parsed)
}

fn llama_factory_sharegpt(obj: &Map<String, Value>) -> Result<Example, RecordError> {
    let answer = |key: &str| -> Result<Turn, RecordError> {
        let wrapped = Value::Array(vec![obj.get(key).cloned().unwrap_or(Value::Null)]);
        let mut one = Map::new();
        one.insert("conversations".into(), wrapped);
        let t = sharegpt(&one).map_err(|e| bad!("`{key}`: {e}"))?;
        Ok(t.turns
            .into_iter()
            .next()
            .unwrap_or_else(|| Turn::new(Role::User, "")))
    };
    let (chosen, rejected) = (answer("chosen")?, answer("rejected")?);
    let parsed = sharegpt(obj)?;
    let turns = pair(parsed.turns.clone(), chosen, rejected)?;
    example(turns, parsed)
}

#[cfg(test)]
mod tests {
    use super::super::parse_record;
    use super::*;
    use serde_json::json;

    fn roles_and_text(e: &Example) -> Vec<(Role, &str, bool)> {
        e.turns
            .iter()
            .map(|t| (t.role, t.content.as_str(), t.train))
            .collect()
    }

    #[test]
    fn openai_pairs_keep_the_prompt_untrained_and_the_rejected_answer_aside() {
        let (format, e) = parse_record(&json!({
            "input": {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
                                   {"role": "assistant", "content": "earlier"}, {"role": "user", "content": "Q2"}]},
            "preferred_output": [{"role": "assistant", "content": "short"}],
            "non_preferred_output": [{"role": "assistant", "content": "long long"}]
        }))
        .unwrap();
        assert_eq!(format, DatasetFormat::Preference);
        assert_eq!(
            roles_and_text(&e),
            vec![
                (Role::System, "S", false),
                (Role::User, "Q", false),
                (Role::Assistant, "earlier", false),
                (Role::User, "Q2", false),
                (Role::Assistant, "short", true)
            ]
        );
        assert_eq!(e.rejected.as_ref().unwrap().content, "long long");
        let (c, r) = e.preference_pair().unwrap();
        assert_eq!(c.turns.last().unwrap().content, "short");
        assert_eq!(r.turns.last().unwrap().content, "long long");
        assert!(r.turns[..4].iter().all(|t| !t.train));
    }

    #[test]
    fn llama_factory_pairs_in_both_layouts() {
        let (format, e) = parse_record(&json!({
            "instruction": "Q", "input": "ctx", "chosen": "yes", "rejected": "no"
        }))
        .unwrap();
        assert_eq!(format, DatasetFormat::AlpacaPreference);
        assert_eq!(
            roles_and_text(&e),
            vec![
                (Role::User, "Q\nctx", false),
                (Role::Assistant, "yes", true)
            ]
        );
        assert_eq!(e.rejected.unwrap().content, "no");
        let (format, e) = parse_record(&json!({
            "conversations": [{"from": "human", "value": "Q"}],
            "chosen": {"from": "gpt", "value": "yes"}, "rejected": {"from": "gpt", "value": "no"}
        }))
        .unwrap();
        assert_eq!(format, DatasetFormat::SharegptPreference);
        assert_eq!(e.turns.last().unwrap().content, "yes");
        assert_eq!(e.rejected.unwrap().content, "no");
    }

    #[test]
    fn malformed_pairs_say_what_is_wrong() {
        let cases = [
            (
                json!({"input": {"messages": [{"role": "user", "content": "Q"}]},
                    "preferred_output": [{"role": "assistant", "content": "a"}]}),
                "non_preferred_output",
            ),
            (
                json!({"input": {"messages": [{"role": "user", "content": "Q"}]},
                    "preferred_output": [], "non_preferred_output": [{"role": "assistant", "content": "b"}]}),
                "exactly one",
            ),
            (
                json!({"input": {"messages": [{"role": "user", "content": "Q"}]},
                    "preferred_output": [{"role": "user", "content": "a"}],
                    "non_preferred_output": [{"role": "assistant", "content": "b"}]}),
                "assistant",
            ),
            (
                json!({"input": {"messages": [{"role": "user", "content": "Q"}]},
                    "preferred_output": [{"role": "assistant", "content": "a"}],
                    "non_preferred_output": [{"role": "assistant", "content": "a"}]}),
                "identical",
            ),
            (
                json!({"input": {"messages": []},
                    "preferred_output": [{"role": "assistant", "content": "a"}],
                    "non_preferred_output": [{"role": "assistant", "content": "b"}]}),
                "messages",
            ),
            (json!({"instruction": "Q", "chosen": "a"}), "rejected"),
            (
                json!({"instruction": "Q", "chosen": 3, "rejected": "b"}),
                "chosen",
            ),
            (json!({"chosen": "a", "rejected": "b"}), "instruction"),
            (
                json!({"conversations": [{"from": "human", "value": "Q"}], "chosen": {"from": "gpt", "value": "a"},
                    "rejected": {"from": "gpt"}}),
                "rejected",
            ),
        ];
        for (record, needle) in cases {
            let err = parse_record(&record).unwrap_err();
            assert!(err.to_string().contains(needle), "{record}: {err}");
        }
    }
}
