//! Reading a whole dataset file (JSONL, or one JSON array) record by record, with line numbers.

use std::io::BufRead;

use serde_json::Value;
use serde_json::value::RawValue;

use super::{DatasetFormat, Example, parse_record};

/// What a successful scan found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatasetSummary {
    /// The single format every record uses.
    pub format: DatasetFormat,
    /// Number of examples.
    pub examples: usize,
    /// Line numbers (1-based) of examples with no trained assistant turn.
    pub lines_without_assistant: Vec<usize>,
}

/// Why a file is not a dataset, and on which line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    /// A record or line is malformed.
    #[error("line {line}: {message}")]
    Invalid {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Reading failed.
    #[error("could not read the file: {0}")]
    Io(String),
}

fn invalid(line: usize, message: impl Into<String>) -> ScanError {
    ScanError::Invalid {
        line,
        message: message.into(),
    }
}

struct Collector<F> {
    format: Option<DatasetFormat>,
    summary_lines: Vec<usize>,
    examples: usize,
    on_example: F,
}

impl<F: FnMut(usize, Example)> Collector<F> {
    fn record(&mut self, line: usize, value: &Value) -> Result<(), ScanError> {
        let (format, example) = parse_record(value).map_err(|m| invalid(line, m))?;
        match self.format {
            None => self.format = Some(format),
            Some(f) if f != format => {
                return Err(invalid(
                    line,
                    format!(
                        "record is in the {} format but earlier records are {}; use one format per file",
                        format.as_str(),
                        f.as_str()
                    ),
                ));
            }
            Some(_) => {}
        }
        if !example.has_trained_assistant_turn() {
            self.summary_lines.push(line);
        }
        self.examples += 1;
        (self.on_example)(line, example);
        Ok(())
    }
}

/// Every example of a dataset, in order (see [`scan`]).
pub fn read_examples<R: BufRead>(reader: R) -> Result<Vec<Example>, ScanError> {
    let mut out = Vec::new();
    scan(reader, |_, e| out.push(e))?;
    Ok(out)
}

/// Scan a dataset, calling `on_example` for each example in order.
///
/// A file whose first non-blank character is `[` is one JSON array (read whole); anything else is
/// JSON Lines, read one line at a time. Blank lines are skipped.
pub fn scan<R: BufRead>(
    mut reader: R,
    on_example: impl FnMut(usize, Example),
) -> Result<DatasetSummary, ScanError> {
    let mut c = Collector {
        format: None,
        summary_lines: Vec::new(),
        examples: 0,
        on_example,
    };
    let mut line_no = 0;
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let n = reader
            .read_until(b'\n', &mut buf)
            .map_err(|e| ScanError::Io(e.to_string()))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        let text = std::str::from_utf8(&buf)
            .map_err(|_| invalid(line_no, "the line is not valid UTF-8"))?;
        let text = if line_no == 1 {
            text.trim_start_matches('\u{feff}')
        } else {
            text
        };
        let trimmed = text.trim();
        if trimmed.is_empty() {
            continue;
        }
        if c.examples == 0 && trimmed.starts_with('[') {
            let mut rest = text.as_bytes().to_vec();
            reader
                .read_to_end(&mut rest)
                .map_err(|e| ScanError::Io(e.to_string()))?;
            scan_array(&rest, line_no, &mut c)?;
            break;
        }
        let value: Value = serde_json::from_str(trimmed)
            .map_err(|e| invalid(line_no, format!("the line is not valid JSON ({e})")))?;
        c.record(line_no, &value)?;
    }
    finish(c)
}

fn scan_array<F: FnMut(usize, Example)>(
    bytes: &[u8],
    first_line: usize,
    c: &mut Collector<F>,
) -> Result<(), ScanError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = first_line
            + bytes[..e.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count();
        invalid(line, "the line is not valid UTF-8")
    })?;
    let items: Vec<&RawValue> = serde_json::from_str(text).map_err(|e| {
        invalid(
            first_line + e.line() - 1,
            format!("not a valid JSON array ({e})"),
        )
    })?;
    let base = text.as_ptr() as usize;
    let (mut counted_to, mut line) = (0, first_line);
    for item in items {
        let offset = item.get().as_ptr() as usize - base;
        line += text[counted_to..offset].matches('\n').count();
        counted_to = offset;
        let value: Value = serde_json::from_str(item.get())
            .map_err(|e| invalid(line, format!("invalid JSON ({e})")))?;
        c.record(line, &value)?;
    }
    Ok(())
}

fn finish<F>(c: Collector<F>) -> Result<DatasetSummary, ScanError> {
    let Some(format) = c.format else {
        return Err(invalid(1, "the file contains no examples"));
    };
    Ok(DatasetSummary {
        format,
        examples: c.examples,
        lines_without_assistant: c.summary_lines,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[u8]) -> Result<DatasetSummary, ScanError> {
        scan(input, |_, _| {})
    }

    fn line_of(err: ScanError) -> usize {
        match err {
            ScanError::Invalid { line, .. } => line,
            ScanError::Io(e) => panic!("{e}"),
        }
    }

    #[test]
    fn jsonl_counts_examples_and_skips_blank_lines() {
        let s = run(
            b"{\"prompt\":\"a\",\"completion\":\"b\"}\n\n{\"prompt\":\"c\",\"completion\":\"d\"}\n",
        )
        .unwrap();
        assert_eq!((s.format, s.examples), (DatasetFormat::Completion, 2));
    }

    #[test]
    fn a_json_array_reports_the_line_of_the_bad_element() {
        let input = b"[\n {\"instruction\":\"a\",\"input\":\"\",\"output\":\"b\"},\n {\"instruction\":\"a\"}\n]";
        assert_eq!(line_of(run(input).unwrap_err()), 3);
        let ok = run(b"[{\"instruction\":\"a\",\"input\":\"\",\"output\":\"b\"}]").unwrap();
        assert_eq!((ok.format, ok.examples), (DatasetFormat::Alpaca, 1));
    }

    #[test]
    fn bad_lines_are_reported_by_number() {
        assert_eq!(
            line_of(run(b"{\"prompt\":\"a\",\"completion\":\"b\"}\nnot json\n").unwrap_err()),
            2
        );
        assert_eq!(
            line_of(run(b"{\"prompt\":\"a\",\"completion\":\"b\"}\n\xff\xfe\n").unwrap_err()),
            2
        );
        assert_eq!(line_of(run(b"[1]\n").unwrap_err()), 1);
        let mixed = b"{\"prompt\":\"a\",\"completion\":\"b\"}\n{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}\n";
        assert_eq!(line_of(run(mixed).unwrap_err()), 2);
        assert_eq!(line_of(run(b"\n\n").unwrap_err()), 1);
    }

    #[test]
    fn examples_without_an_assistant_turn_are_listed() {
        let s = run(b"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}\n").unwrap();
        assert_eq!(s.lines_without_assistant, vec![1]);
    }
}
