//! Full validation of a job's files before it is queued.

use std::path::Path;

use crate::domain::dataset::{ScanError, scan};
use crate::domain::job::JobError;

/// The fewest examples a training file may have.
pub const MIN_EXAMPLES: usize = 10;

/// Check a dataset file in full: readable, one format — preference pairs for a DPO job
/// (`preference`), demonstrations otherwise — enough examples, each with an assistant turn to
/// learn from. Runs on a blocking thread (it reads the whole file).
pub fn validate_dataset(
    path: &Path,
    param: &'static str,
    min: usize,
    preference: bool,
) -> Result<usize, JobError> {
    let problem = |code: &str, message: String| JobError::new(code, message).with_param(param);
    let file = std::fs::File::open(path)
        .map_err(|e| problem("invalid_file", format!("{param} could not be read: {e}")))?;
    let summary = scan(std::io::BufReader::new(file), |_, _| {}).map_err(|e| match e {
        ScanError::Invalid { .. } => {
            problem("invalid_file_format", format!("{param} is invalid: {e}"))
        }
        ScanError::Io(_) => problem("invalid_file", format!("{param} could not be read: {e}")),
    })?;
    if summary.format.is_preference() != preference {
        let message = if preference {
            format!(
                "{} is in the {} format, but a dpo job needs preference pairs (OpenAI's \
                 `input`/`preferred_output`/`non_preferred_output`, or `chosen`/`rejected`)",
                title(param),
                summary.format.as_str()
            )
        } else {
            format!(
                "{} holds preference pairs ({}); train on them with method type dpo",
                title(param),
                summary.format.as_str()
            )
        };
        return Err(problem("invalid_file_format", message));
    }
    if summary.examples < min {
        return Err(problem(
            "invalid_n_examples",
            format!(
                "{} has {} example(s), but must have at least {min} examples",
                title(param),
                summary.examples
            ),
        ));
    }
    if let Some(line) = summary.lines_without_assistant.first() {
        return Err(problem(
            "invalid_file_format",
            format!(
                "{} has {} example(s) with no assistant message to learn from (first on line {line})",
                title(param),
                summary.lines_without_assistant.len()
            ),
        ));
    }
    Ok(summary.examples)
}

fn title(param: &str) -> &'static str {
    if param == "validation_file" {
        "Validation file"
    } else {
        "Training file"
    }
}
