//! Batch input files (`purpose=batch`): one request per line, `{custom_id, method: "POST", url,
//! body}`, as OpenAI's Batch API takes them. Checked at upload, line by line.

use std::collections::HashSet;
use std::io::BufRead;

use serde_json::Value;

use super::dataset::ScanError;

/// The endpoints a batch may call.
pub const ENDPOINTS: [&str; 3] = ["/v1/chat/completions", "/v1/responses", "/v1/completions"];

/// The most requests one batch file may hold (OpenAI's limit).
pub const MAX_REQUESTS: usize = 50_000;

/// One request of a batch file.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchRequest {
    /// 1-based line number in the file.
    pub line: usize,
    /// The caller's id for it, unique in the file.
    pub custom_id: String,
    /// The endpoint (one of [`ENDPOINTS`]).
    pub url: String,
    /// The request body.
    pub body: Value,
}

impl BatchRequest {
    /// The `model` its body names (empty when none).
    pub fn model(&self) -> &str {
        self.body
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }
}

fn invalid(line: usize, message: impl Into<String>) -> ScanError {
    ScanError::Invalid {
        line,
        message: message.into(),
    }
}

/// One line's request.
fn parse_line(line: usize, text: &str) -> Result<BatchRequest, ScanError> {
    let value: Value = serde_json::from_str(text)
        .map_err(|e| invalid(line, format!("the line is not JSON: {e}")))?;
    let Value::Object(o) = value else {
        return Err(invalid(line, "each line must be a JSON object"));
    };
    let custom_id = match o.get("custom_id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 512 && !s.contains('\0') => s.clone(),
        _ => {
            return Err(invalid(
                line,
                "custom_id must be a non-empty string (up to 512 bytes)",
            ));
        }
    };
    if o.get("method").and_then(Value::as_str) != Some("POST") {
        return Err(invalid(line, "method must be \"POST\""));
    }
    let url = match o.get("url").and_then(Value::as_str) {
        Some(u) if ENDPOINTS.contains(&u) => u.to_owned(),
        other => {
            return Err(invalid(
                line,
                format!(
                    "url {} is not served in a batch: one of {}",
                    other.map_or("(missing)".to_owned(), |u| format!("'{u}'")),
                    ENDPOINTS.join(", ")
                ),
            ));
        }
    };
    let body = match o.get("body") {
        Some(b @ Value::Object(_)) => b.clone(),
        _ => {
            return Err(invalid(
                line,
                "body must be a JSON object (the request's body)",
            ));
        }
    };
    if super::text::storable_json("body", &body).is_err() {
        return Err(invalid(line, "body holds a NUL character"));
    }
    Ok(BatchRequest {
        line,
        custom_id,
        url,
        body,
    })
}

/// Every request of a batch file, checked: well-formed lines, known endpoints, unique
/// `custom_id`s, at least one and at most [`MAX_REQUESTS`] requests.
pub fn read_requests<R: BufRead>(reader: R) -> Result<Vec<BatchRequest>, ScanError> {
    let mut requests = Vec::new();
    let mut seen = HashSet::new();
    for (i, text) in reader.lines().enumerate() {
        let line = i + 1;
        let text = text.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidData => invalid(line, "the line is not valid UTF-8"),
            _ => ScanError::Io(e.to_string()),
        })?;
        let text = text.trim_start_matches('\u{feff}').trim();
        if text.is_empty() {
            continue;
        }
        let request = parse_line(line, text)?;
        if !seen.insert(request.custom_id.clone()) {
            return Err(invalid(
                line,
                format!("custom_id '{}' is used twice", request.custom_id),
            ));
        }
        requests.push(request);
        if requests.len() > MAX_REQUESTS {
            return Err(invalid(
                line,
                format!("a batch holds at most {MAX_REQUESTS} requests"),
            ));
        }
    }
    if requests.is_empty() {
        return Err(invalid(1, "the file holds no requests"));
    }
    Ok(requests)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<Vec<BatchRequest>, String> {
        read_requests(text.as_bytes()).map_err(|e| e.to_string())
    }

    const OK: &str = r#"{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}"#;

    #[test]
    fn good_lines_are_read_in_order_with_their_numbers() {
        let two = OK.replace("\"a\"", "\"b\"");
        let requests = read(&format!("{OK}\n\n{two}\n")).unwrap();
        assert_eq!(requests.len(), 2);
        assert_eq!((requests[1].line, requests[1].custom_id.as_str()), (3, "b"));
        assert_eq!(requests[0].model(), "m");
    }

    #[test]
    fn each_bad_line_is_named() {
        for (text, needle) in [
            (format!("{OK}\n{OK}"), "line 2: custom_id 'a' is used twice"),
            (
                OK.replace("/v1/chat/completions", "/v1/embeddings"),
                "line 1: url '/v1/embeddings'",
            ),
            (OK.replace("POST", "GET"), "line 1: method"),
            (OK.replace(r#"{"model": "m"}"#, "[]"), "line 1: body"),
            (OK.replace(r#""a""#, r#""""#), "line 1: custom_id"),
            (format!("{OK}\nnot json"), "line 2: the line is not JSON"),
            (String::new(), "holds no requests"),
        ] {
            let err = read(&text).unwrap_err();
            assert!(err.contains(needle), "{err} lacks {needle}");
        }
    }
}
