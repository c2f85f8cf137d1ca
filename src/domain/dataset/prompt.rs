//! A validation example as a prompt and its reference answer: what evaluation, ensemble
//! calibration and benchmarks ask a model and score its answer against.

use serde_json::Value;

use super::{Example, Role, Turn};

/// A validation conversation cut before its last assistant turn, which is the reference.
#[derive(Debug, Clone)]
pub struct EvalPrompt {
    /// The turns before the reference answer.
    pub turns: Vec<Turn>,
    /// Tool definitions of the example.
    pub tools: Option<Value>,
    /// The reference answer.
    pub reference: String,
}

impl EvalPrompt {
    /// The prompt of `example`: `None` without an assistant turn.
    pub fn of(example: &Example) -> Option<Self> {
        let last = example
            .turns
            .iter()
            .rposition(|t| t.role == Role::Assistant)?;
        Some(Self {
            turns: example.turns[..last].to_vec(),
            tools: example.tools.clone(),
            reference: example.turns[last].content.clone(),
        })
    }

    /// The last user turn (what the answer responds to), for reports.
    pub fn question(&self) -> &str {
        self.turns
            .iter()
            .rev()
            .find(|t| t.role == Role::User)
            .map_or("", |t| t.content.as_str())
    }
}
