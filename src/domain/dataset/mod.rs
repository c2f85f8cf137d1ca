//! Training examples: the dataset formats we accept and their normal form, a list of chat turns.
//!
//! Accepted formats: OpenAI chat (`messages`), legacy `prompt`/`completion`, alpaca
//! (`instruction`, `input`, `output`, optional `system` and `history`) and ShareGPT
//! (`conversations` of `from`/`value`). All become [`Example`]s. Preference pairs (for DPO) come
//! in OpenAI's format (`input`, `preferred_output`, `non_preferred_output`) and LLaMA-Factory's
//! alpaca and ShareGPT ones (`chosen`/`rejected`); they become an [`Example`] whose last turn is
//! the chosen answer, with the rejected one beside it ([`Example::rejected`]).

/// A [`RecordError`] from `format!` arguments.
macro_rules! bad {
    ($($arg:tt)*) => {
        $crate::domain::dataset::RecordError::from(format!($($arg)*))
    };
}

mod preference;
mod prompt;
mod records;
mod scan;

pub use prompt::EvalPrompt;
pub use scan::{DatasetSummary, ScanError, read_examples, scan};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::tools::ToolCall;

/// Why one record of a dataset is not an example: the reason, shown to the user with the
/// record's line number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct RecordError(String);

impl From<String> for RecordError {
    fn from(reason: String) -> Self {
        Self(reason)
    }
}

impl From<&str> for RecordError {
    fn from(reason: &str) -> Self {
        Self(reason.to_owned())
    }
}

impl From<RecordError> for String {
    fn from(e: RecordError) -> Self {
        e.0
    }
}

/// The format of a dataset file, detected from its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatasetFormat {
    /// OpenAI chat: `{"messages": [...]}`.
    Chat,
    /// Legacy OpenAI: `{"prompt": ..., "completion": ...}`.
    Completion,
    /// Alpaca: `{"instruction", "input", "output", "system"?, "history"?}`.
    Alpaca,
    /// ShareGPT: `{"conversations": [{"from", "value"}]}`.
    Sharegpt,
    /// OpenAI preference pairs: `{"input": {"messages"}, "preferred_output", "non_preferred_output"}`.
    Preference,
    /// LLaMA-Factory alpaca pairs: `{"instruction", "input"?, "chosen", "rejected"}`.
    AlpacaPreference,
    /// LLaMA-Factory ShareGPT pairs: `{"conversations", "chosen": {..}, "rejected": {..}}`.
    SharegptPreference,
}

impl DatasetFormat {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Completion => "completion",
            Self::Alpaca => "alpaca",
            Self::Sharegpt => "sharegpt",
            Self::Preference => "preference",
            Self::AlpacaPreference => "alpaca_preference",
            Self::SharegptPreference => "sharegpt_preference",
        }
    }

    /// Whether records are preference pairs (DPO data), not demonstrations (SFT data).
    pub fn is_preference(self) -> bool {
        matches!(
            self,
            Self::Preference | Self::AlpacaPreference | Self::SharegptPreference
        )
    }

    /// The format of a stored name.
    pub fn parse(name: &str) -> Option<Self> {
        [
            Self::Chat,
            Self::Completion,
            Self::Alpaca,
            Self::Sharegpt,
            Self::Preference,
            Self::AlpacaPreference,
            Self::SharegptPreference,
        ]
        .into_iter()
        .find(|f| f.as_str() == name)
    }
}

/// Detect the record's format and convert it; the error says what is wrong with the record.
pub fn parse_record(value: &Value) -> Result<(DatasetFormat, Example), RecordError> {
    let Value::Object(obj) = value else {
        return Err(bad!(
            "expected a JSON object, found {}",
            records::kind(value)
        ));
    };
    if let Some(pair) = preference::parse(obj) {
        return pair;
    }
    if obj.contains_key("messages") {
        records::chat(obj).map(|e| (DatasetFormat::Chat, e))
    } else if obj.contains_key("prompt") && obj.contains_key("completion") {
        records::completion(obj).map(|e| (DatasetFormat::Completion, e))
    } else if obj.contains_key("instruction") && obj.contains_key("output") {
        records::alpaca(obj).map(|e| (DatasetFormat::Alpaca, e))
    } else if obj.contains_key("conversations") {
        records::sharegpt(obj).map(|e| (DatasetFormat::Sharegpt, e))
    } else {
        Err(
            "unrecognised example format: expected `messages` (chat), `prompt`/`completion`, \
             `instruction`/`input`/`output` (alpaca) or `conversations` (ShareGPT)"
                .into(),
        )
    }
}

/// Who speaks a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// System prompt (`developer` maps here too).
    System,
    /// The user.
    User,
    /// The model: the only role trained on.
    Assistant,
    /// A tool result.
    Tool,
}

impl Role {
    /// The chat role's name (`system`, `user`, `assistant`, `tool`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::System => "system",
            Self::User => "user",
            Self::Assistant => "assistant",
            Self::Tool => "tool",
        }
    }
}

/// One turn of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    /// Speaker.
    pub role: Role,
    /// Text content (text parts joined).
    pub content: String,
    /// Whether the loss covers this turn (assistant turns with `weight` != 0).
    pub train: bool,
    /// The assistant's tool calls (trained with the turn).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// The call a tool result answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl Turn {
    /// A text turn, trained when it is the assistant's.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            train: role == Role::Assistant,
            role,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: None,
        }
    }
}

/// One training example in normal form.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// The conversation, in order.
    pub turns: Vec<Turn>,
    /// Tool definitions offered in this example, if any (kept for the chat template).
    pub tools: Option<serde_json::Value>,
    /// `parallel_tool_calls` of the example (default true): how the tools are offered.
    #[serde(default = "yes")]
    pub parallel_tool_calls: bool,
    /// A preference pair's rejected answer (the chosen one is the last turn); `None` for SFT data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected: Option<Turn>,
}

fn yes() -> bool {
    true
}

impl Example {
    /// True when at least one assistant turn is trained on.
    pub fn has_trained_assistant_turn(&self) -> bool {
        self.turns
            .iter()
            .any(|t| t.role == Role::Assistant && t.train)
    }

    /// A preference pair as two examples, each trained on its last turn only: the chosen and
    /// the rejected conversation. `None` for SFT data.
    pub fn preference_pair(&self) -> Option<(Example, Example)> {
        let rejected = self.rejected.clone()?;
        let mut chosen = Example {
            rejected: None,
            ..self.clone()
        };
        let last = chosen.turns.len().checked_sub(1)?;
        for (i, t) in chosen.turns.iter_mut().enumerate() {
            t.train = i == last;
        }
        let mut other = chosen.clone();
        other.turns[last] = Turn {
            train: true,
            ..rejected
        };
        Some((chosen, other))
    }
}
