//! Finish reasons the engine did not report, inferred from what was generated.

/// The finish reason of a choice the engine ended without one (mistral.rs closes a stream whose
/// last token is an incomplete UTF-8 sequence without a final chunk): `tokens` generated
/// counting that swallowed last one, against the request's `max_tokens`.
pub fn unreported_finish_reason(tokens: usize, max_tokens: Option<usize>) -> &'static str {
    if max_tokens.is_some_and(|m| tokens >= m) {
        "length"
    } else {
        "stop"
    }
}
