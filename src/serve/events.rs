//! What every engine reports about a generation, in ferrotune's own types: text pieces with
//! their log-probabilities, tool calls, a finish reason per choice, then usage. The API, the
//! ensembles and the metrics read these and nothing engine-specific.

use super::ServeError;

/// Why a choice ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-turn token or a stop sequence.
    Stop,
    /// The token limit.
    Length,
    /// The model called tools.
    ToolCalls,
}

impl FinishReason {
    /// OpenAI's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Length => "length",
            Self::ToolCalls => "tool_calls",
        }
    }

    /// An engine's finish-reason string (anything unknown is a stop).
    pub fn from_engine(raw: &str) -> Self {
        match raw {
            "length" => Self::Length,
            "tool_calls" => Self::ToolCalls,
            _ => Self::Stop,
        }
    }
}

/// One alternative at a position.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLogprob {
    /// The token's text.
    pub token: String,
    /// Its bytes (a piece of a UTF-8 character when the token is one).
    pub bytes: Vec<u8>,
    /// Natural-log probability.
    pub logprob: f32,
}

/// The sampled token at a position and its alternatives.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Natural-log probability.
    pub logprob: f32,
    /// The most likely tokens at this position, most likely first.
    pub top: Vec<TopLogprob>,
}

/// A function call the model made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolCallOut {
    /// `call_…`.
    pub id: String,
    /// The function.
    pub name: String,
    /// Its arguments, a JSON text.
    pub arguments: String,
}

/// Tokens a generation read and wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Usage {
    /// Prompt tokens (counted once however many choices).
    pub prompt_tokens: usize,
    /// Generated tokens over all choices.
    pub completion_tokens: usize,
    /// Seconds spent generating after the first token, when the engine measured it.
    pub decode_seconds: Option<f64>,
}

/// One report from an engine. A generation ends with [`Event::Done`] or [`Event::Failed`].
#[derive(Debug)]
pub enum Event {
    /// Text of choice `choice`: one token's piece when streamed (its log-probability with it when
    /// asked), or the whole text.
    Text {
        /// Choice index.
        choice: usize,
        /// The text.
        text: String,
        /// Log-probabilities of the tokens in `text` (empty unless asked).
        logprobs: Vec<TokenLogprob>,
    },
    /// Choice `choice` called tools.
    ToolCalls {
        /// Choice index.
        choice: usize,
        /// The calls.
        calls: Vec<ToolCallOut>,
    },
    /// Choice `choice` ended.
    Finished {
        /// Choice index.
        choice: usize,
        /// Why.
        reason: FinishReason,
    },
    /// Every choice ended.
    Done(Usage),
    /// The generation failed.
    Failed(ServeError),
}

/// One choice of a finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// The text (empty when the model called tools).
    pub text: String,
    /// The calls, if any.
    pub tool_calls: Vec<ToolCallOut>,
    /// Per-token log-probabilities, when asked.
    pub logprobs: Option<Vec<TokenLogprob>>,
    /// Why it ended.
    pub finish_reason: FinishReason,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The choices, by index.
    pub choices: Vec<Choice>,
    /// Tokens read and written.
    pub usage: Usage,
}

impl Answer {
    /// The first choice's text and its mean token log-probability (when logprobs were asked).
    pub fn first_text_and_mean_logprob(&self) -> (String, Option<f64>) {
        let Some(choice) = self.choices.first() else {
            return (String::new(), None);
        };
        let lps: Vec<f64> = choice
            .logprobs
            .iter()
            .flatten()
            .map(|t| f64::from(t.logprob))
            .collect();
        let mean = (!lps.is_empty()).then(|| lps.iter().sum::<f64>() / lps.len() as f64);
        (choice.text.clone(), mean)
    }
}

/// Builds an [`Answer`] from events.
#[derive(Debug)]
pub(super) struct Assembler {
    choices: Vec<Choice>,
    logprobs: bool,
}

impl Assembler {
    /// For `n` choices; `logprobs`: the request asked for them.
    pub(super) fn new(n: usize, logprobs: bool) -> Self {
        let empty = Choice {
            text: String::new(),
            tool_calls: Vec::new(),
            logprobs: logprobs.then(Vec::new),
            finish_reason: FinishReason::Stop,
        };
        Self {
            choices: vec![empty; n.max(1)],
            logprobs,
        }
    }

    /// Take in one event; the answer once it is [`Event::Done`].
    pub(super) fn take(&mut self, event: Event) -> Result<Option<Answer>, ServeError> {
        match event {
            Event::Text {
                choice,
                text,
                logprobs,
            } => {
                if let Some(c) = self.choices.get_mut(choice) {
                    c.text.push_str(&text);
                    if self.logprobs {
                        c.logprobs.get_or_insert_with(Vec::new).extend(logprobs);
                    }
                }
            }
            Event::ToolCalls { choice, calls } => {
                if let Some(c) = self.choices.get_mut(choice) {
                    c.tool_calls.extend(calls);
                }
            }
            Event::Finished { choice, reason } => {
                if let Some(c) = self.choices.get_mut(choice) {
                    c.finish_reason = reason;
                }
            }
            Event::Done(usage) => {
                return Ok(Some(Answer {
                    choices: std::mem::take(&mut self.choices),
                    usage,
                }));
            }
            Event::Failed(e) => return Err(e),
        }
        Ok(None)
    }
}
