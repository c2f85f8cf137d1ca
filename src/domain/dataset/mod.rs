//! Training examples: the dataset formats we accept and their normal form, a list of chat turns.
//!
//! Accepted formats: OpenAI chat (`messages`), legacy `prompt`/`completion`, alpaca
//! (`instruction`, `input`, `output`, optional `system` and `history`) and ShareGPT
//! (`conversations` of `from`/`value`). All become [`Example`]s. Preference pairs (for DPO) come
//! in OpenAI's format (`input`, `preferred_output`, `non_preferred_output`) and LLaMA-Factory's
//! alpaca and ShareGPT ones (`chosen`/`rejected`); they become an [`Example`] whose last turn is
//! the chosen answer, with the rejected one beside it ([`Example::rejected`]).

mod preference;
mod records;
mod scan;

pub use records::parse_record;
pub use scan::{DatasetSummary, ScanError, scan};

use serde::{Deserialize, Serialize};

use crate::domain::tools::ToolCall;

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
