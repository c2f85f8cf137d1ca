//! Parsed types and their rules: ids, statuses, hyperparameters, datasets, model names.
//!
//! Nothing here performs I/O (the dataset scanner reads from any `BufRead` it is handed). A value
//! of a domain type has been parsed, so it is valid by construction.

pub mod batch;
pub mod dataset;
pub mod ensemble;
pub mod finish;
pub mod hyperparameters;
pub mod ids;
pub mod job;
pub mod job_request;
pub mod model_name;
pub mod organization;
pub mod pagination;
pub mod preference;
pub mod scores;
pub mod text;
pub mod tools;

/// A rejected input: what was wrong and which request parameter it came from.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct DomainError {
    /// Human-readable reason, shown to the client as is.
    pub message: String,
    /// The request parameter at fault (`hyperparameters.n_epochs`), when there is one.
    pub param: Option<String>,
    /// A machine-readable code (`invalid_value`), when there is one.
    pub code: Option<&'static str>,
}

impl DomainError {
    /// An invalid value for `param`.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            param: Some(param.into()),
            code: None,
        }
    }

    /// Attach a machine-readable code.
    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }
}
