//! Turning sampled token pieces into the text a client sees: bytes joined into whole UTF-8
//! characters, text that may begin a stop sequence held back until it is known not to, and the
//! answer read back as tool calls when tools were offered.

use serde_json::Value;

use crate::serve::events::ToolCallOut;

/// The text of one choice so far.
#[derive(Debug, Default)]
pub struct TextOut {
    /// Bytes of an unfinished UTF-8 character.
    partial: Vec<u8>,
    /// Text decoded but not yet released (it may be the start of a stop sequence).
    held: String,
    stops: Vec<String>,
    /// Everything released so far (for tool-call parsing at the end).
    released: String,
}

/// What a piece released.
#[derive(Debug, PartialEq, Eq)]
pub enum Piece {
    /// Text to send now (maybe empty).
    Text(String),
    /// A stop sequence was reached: the text before it, and the choice ends.
    Stopped(String),
}

impl TextOut {
    /// For a choice that ends at any of `stops`.
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ..Self::default()
        }
    }

    /// Take in a token's bytes.
    pub fn push(&mut self, bytes: &[u8]) -> Piece {
        self.partial.extend_from_slice(bytes);
        let valid = match std::str::from_utf8(&self.partial) {
            Ok(s) => s.len(),
            Err(e) if e.error_len().is_some() => {
                // Not UTF-8 and never will be: shown as the replacement character.
                let text = String::from_utf8_lossy(&self.partial).into_owned();
                self.partial.clear();
                return self.release(text);
            }
            Err(e) => e.valid_up_to(),
        };
        let rest = self.partial.split_off(valid);
        let text = String::from_utf8(std::mem::replace(&mut self.partial, rest))
            .expect("checked as UTF-8");
        self.release(text)
    }

    fn release(&mut self, text: String) -> Piece {
        self.held.push_str(&text);
        if let Some(at) = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min()
        {
            let out = self.held[..at].to_owned();
            self.released.push_str(&out);
            self.held.clear();
            return Piece::Stopped(out);
        }
        // Keep the longest tail that a stop sequence starts with.
        let keep = self
            .stops
            .iter()
            .map(|s| longest_prefix_tail(&self.held, s))
            .max()
            .unwrap_or(0);
        let cut = self.held.len() - keep;
        let out: String = self.held.drain(..cut).collect();
        self.released.push_str(&out);
        Piece::Text(out)
    }

    /// The generation ended: whatever is still held (an unfinished character shows as U+FFFD).
    pub fn finish(&mut self) -> String {
        let mut out = std::mem::take(&mut self.held);
        if !self.partial.is_empty() {
            out.push_str(&String::from_utf8_lossy(&std::mem::take(&mut self.partial)));
        }
        self.released.push_str(&out);
        out
    }

    /// All text released.
    pub fn all(&self) -> &str {
        &self.released
    }
}

/// The length of the longest tail of `text` that `stop` begins with (shorter than `stop`).
fn longest_prefix_tail(text: &str, stop: &str) -> usize {
    (1..stop.len().min(text.len() + 1))
        .rev()
        .filter(|&n| text.is_char_boundary(text.len() - n) && stop.is_char_boundary(n))
        .find(|&n| text.ends_with(&stop[..n]))
        .unwrap_or(0)
}

/// `text` read as tool calls in the documented format (`{"name", "arguments"}` or a list of
/// them), or wrapped in `<tool_call>…</tool_call>` as Hermes-style templates ask; `None` when it
/// is an ordinary answer. `ids` makes each call's id.
pub fn parse_tool_calls(text: &str, mut ids: impl FnMut() -> String) -> Option<Vec<ToolCallOut>> {
    let trimmed = text.trim();
    let values: Vec<Value> = if trimmed.contains("<tool_call>") {
        trimmed
            .split("<tool_call>")
            .skip(1)
            .map(|part| part.split("</tool_call>").next().unwrap_or(part).trim())
            .map(serde_json::from_str)
            .collect::<Result<_, _>>()
            .ok()?
    } else {
        match serde_json::from_str::<Value>(trimmed).ok()? {
            Value::Array(items) => items,
            one @ Value::Object(_) => vec![one],
            _ => return None,
        }
    };
    if values.is_empty() {
        return None;
    }
    values
        .into_iter()
        .map(|v| {
            let name = v.get("name")?.as_str()?.to_owned();
            let arguments = match v.get("arguments")? {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Some(ToolCallOut {
                id: ids(),
                name,
                arguments,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn characters_split_over_tokens_are_joined() {
        let mut t = TextOut::new(&[]);
        let e = "é".as_bytes();
        assert_eq!(t.push(&e[..1]), Piece::Text(String::new()));
        assert_eq!(t.push(&e[1..]), Piece::Text("é".into()));
        assert_eq!(t.push(&[0xff]), Piece::Text("\u{fffd}".into()));
    }

    #[test]
    fn a_stop_sequence_is_held_back_then_cut() {
        let mut t = TextOut::new(&["END".into()]);
        assert_eq!(t.push(b"abc E"), Piece::Text("abc ".into()));
        assert_eq!(t.push(b"N"), Piece::Text(String::new()));
        assert_eq!(t.push(b"Dx"), Piece::Stopped(String::new()));
        let mut t = TextOut::new(&["END".into()]);
        assert_eq!(t.push(b"E"), Piece::Text(String::new()));
        assert_eq!(t.push(b"x"), Piece::Text("Ex".into()));
        assert_eq!(t.push(b"E"), Piece::Text(String::new()));
        assert_eq!(t.finish(), "E");
        assert_eq!(t.all(), "ExE");
    }

    #[test]
    fn tool_calls_are_read_in_both_formats() {
        let mut n = 0;
        let mut ids = || {
            n += 1;
            format!("call_{n}")
        };
        let one = parse_tool_calls(r#"{"name": "f", "arguments": {"a": 1}}"#, &mut ids).unwrap();
        assert_eq!(one[0].name, "f");
        assert_eq!(one[0].arguments, r#"{"a":1}"#);
        let two = parse_tool_calls(
            "<tool_call>\n{\"name\": \"g\", \"arguments\": {}}\n</tool_call><tool_call>{\"name\": \"h\", \"arguments\": \"{}\"}</tool_call>",
            &mut ids,
        )
        .unwrap();
        assert_eq!((two[0].name.as_str(), two[1].name.as_str()), ("g", "h"));
        assert_eq!(two[1].arguments, "{}");
        assert!(parse_tool_calls("Paris is the capital.", &mut ids).is_none());
        assert!(parse_tool_calls(r#"{"city": "Paris"}"#, &mut ids).is_none());
    }
}
