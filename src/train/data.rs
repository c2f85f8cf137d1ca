//! From examples to batches: render with the chat template, tokenize piece by piece, mask the
//! labels of everything but trained responses, truncate, pack, shuffle by seed.

use std::path::Path;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use tokenizers::Tokenizer;

use super::rng::{self, purpose};
use super::{TensorContext, TrainError};
use crate::domain::dataset::Example;
use crate::model_dir::template::ChatTemplate;

/// Label value the loss ignores.
pub const IGNORE: i64 = -100;

/// One tokenized example.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Token ids.
    pub input_ids: Vec<u32>,
    /// Per-token labels: the token itself where trained, else [`IGNORE`].
    pub labels: Vec<i64>,
}

impl Sample {
    /// Number of trained tokens.
    pub fn trained_tokens(&self) -> usize {
        self.labels.iter().filter(|l| **l != IGNORE).count()
    }
}

/// Length limits (LLaMA-Factory's `cutoff_len`, `max_source_length`, `max_target_length`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Whole sequence.
    pub max_length: usize,
    /// Each prompt piece, when set.
    pub max_source_length: Option<usize>,
    /// Each response piece, when set.
    pub max_target_length: Option<usize>,
}

/// Read every example of a dataset file.
pub fn read_examples(path: &Path) -> Result<Vec<Example>, TrainError> {
    let file = std::fs::File::open(path).map_err(super::io_err(path))?;
    crate::domain::dataset::read_examples(std::io::BufReader::new(file))
        .map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))
}

/// Load `tokenizer.json` from a model directory.
pub fn load_tokenizer(dir: &Path) -> Result<Tokenizer, TrainError> {
    let path = dir.join(crate::model_dir::TOKENIZER);
    Tokenizer::from_file(&path).map_err(|e| TrainError::Invalid(format!("{}: {e}", path.display())))
}

/// The ids of the tokenizer's special tokens (end of turn, padding, …): benchmarks ban them so
/// every generation runs to its token limit.
pub fn special_token_ids(model_dir: &Path) -> Result<Vec<u32>, TrainError> {
    Ok(load_tokenizer(model_dir)?
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| id)
        .collect())
}

/// The longest text, in bytes, one token of `tokenizer` stands for (an upper bound: the
/// vocabulary's longest entry).
pub fn longest_token_bytes(tokenizer: &Tokenizer) -> usize {
    tokenizer
        .get_vocab(true)
        .keys()
        .map(String::len)
        .max()
        .unwrap_or(1)
        .max(1)
}

/// `example` with every turn cut to `max_bytes` (at a character boundary). With `max_bytes` at
/// least the token limit times [`longest_token_bytes`], each cut turn still yields more tokens
/// than truncation keeps, so the encoded sample is the same, but a 50 MB turn is never
/// tokenized whole.
pub fn bound_turns(example: &Example, max_bytes: usize) -> std::borrow::Cow<'_, Example> {
    if example.turns.iter().all(|t| t.content.len() <= max_bytes) {
        return std::borrow::Cow::Borrowed(example);
    }
    let mut bounded = example.clone();
    for turn in &mut bounded.turns {
        if turn.content.len() > max_bytes {
            let mut cut = max_bytes;
            while !turn.content.is_char_boundary(cut) {
                cut -= 1;
            }
            turn.content.truncate(cut);
        }
    }
    std::borrow::Cow::Owned(bounded)
}

/// Tokenize one example; `None` when truncation leaves nothing to learn.
pub fn encode(
    example: &Example,
    template: &ChatTemplate,
    tokenizer: &Tokenizer,
    limits: Limits,
) -> Result<Option<Sample>, TrainError> {
    let mut input_ids = Vec::new();
    let mut labels = Vec::new();
    for (text, trained) in template.segments(example)? {
        let enc = tokenizer
            .encode(text.as_str(), false)
            .map_err(|e| TrainError::Invalid(format!("tokenizing failed: {e}")))?;
        let mut ids = enc.get_ids().to_vec();
        let cap = if trained {
            limits.max_target_length
        } else {
            limits.max_source_length
        };
        if let Some(cap) = cap {
            ids.truncate(cap);
        }
        labels.extend(
            ids.iter()
                .map(|&id| if trained { i64::from(id) } else { IGNORE }),
        );
        input_ids.extend(ids);
    }
    input_ids.truncate(limits.max_length);
    labels.truncate(limits.max_length);
    let sample = Sample { input_ids, labels };
    Ok((sample.trained_tokens() > 0).then_some(sample))
}

/// A micro-batch packed into one row, without padding: its examples' tokens back to back, each
/// attending only to its own tokens, with positions counted from its own start — the same loss
/// and gradients as the examples padded side by side, for the tokens alone.
pub struct Batch {
    /// `[1, tokens]` u32.
    pub input_ids: Tensor,
    /// Each example's `(start, len)` in the row.
    pub segments: Vec<(usize, usize)>,
    /// `[1][tokens]` labels. Each example's first label is [`IGNORE`] (nothing predicts it when
    /// the example is alone), so no example learns to predict the next one's first token.
    pub labels: Vec<Vec<i64>>,
}

impl Batch {
    /// Pack `samples` (none empty) into one row.
    pub fn new(samples: &[&Sample], device: &Device) -> Result<Self, TrainError> {
        if samples.is_empty() || samples.iter().any(|s| s.input_ids.is_empty()) {
            return Err(TrainError::Invalid(
                "a batch needs non-empty examples".into(),
            ));
        }
        let total = samples.iter().map(|s| s.input_ids.len()).sum();
        let mut ids = Vec::with_capacity(total);
        let mut labels = Vec::with_capacity(total);
        let mut segments = Vec::with_capacity(samples.len());
        for s in samples {
            segments.push((ids.len(), s.input_ids.len()));
            ids.extend_from_slice(&s.input_ids);
            labels.push(IGNORE);
            labels.extend_from_slice(&s.labels[1..]);
        }
        let input_ids = Tensor::from_vec(ids, (1, total), device).ctx("building a batch")?;
        Ok(Self {
            input_ids,
            segments,
            labels: vec![labels],
        })
    }

    /// Tokens in the batch (there is no padding).
    pub fn tokens(&self) -> usize {
        self.segments.iter().map(|(_, len)| len).sum()
    }
}

/// The example order of `epoch`: a seeded shuffle, the same on every run.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rng::stream(seed, purpose::SHUFFLE, epoch as u64));
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_pack_examples_without_padding() {
        let a = Sample {
            input_ids: vec![1, 2, 3],
            labels: vec![IGNORE, 2, 3],
        };
        let b = Sample {
            input_ids: vec![4, 5],
            labels: vec![4, 5],
        };
        let batch = Batch::new(&[&a, &b], &Device::Cpu).unwrap();
        assert_eq!(
            batch.input_ids.to_vec2::<u32>().unwrap(),
            vec![vec![1, 2, 3, 4, 5]]
        );
        assert_eq!(batch.segments, vec![(0, 3), (3, 2)]);
        // b's first label is never predicted alone, so not across the boundary either.
        assert_eq!(batch.labels, vec![vec![IGNORE, 2, 3, IGNORE, 5]]);
        assert_eq!(batch.tokens(), 5);
        let empty = Sample {
            input_ids: vec![],
            labels: vec![],
        };
        assert!(Batch::new(&[&a, &empty], &Device::Cpu).is_err());
        assert!(Batch::new(&[], &Device::Cpu).is_err());
    }

    #[test]
    fn truncation_honours_source_target_and_total_limits() {
        let dir = tempfile::tempdir().unwrap();
        crate::train::tiny::init_tiny(dir.path(), crate::train::tiny::TinyArch::Llama, 0).unwrap();
        let tok = load_tokenizer(dir.path()).unwrap();
        let template = ChatTemplate::from_model_dir(dir.path()).unwrap();
        let (_, ex) = crate::domain::dataset::parse_record(
            &serde_json::json!({"prompt": "a long question here", "completion": "a long answer here"}),
        )
        .unwrap();
        let full = |limits| encode(&ex, &template, &tok, limits).unwrap();
        let none = Limits {
            max_length: 1024,
            max_source_length: None,
            max_target_length: None,
        };
        let whole = full(none).unwrap();
        // Byte-level: the prompt is "<|im_start|>user\n…<|im_end|>\n<|im_start|>assistant\n".
        let split = full(Limits {
            max_source_length: Some(5),
            max_target_length: Some(3),
            ..none
        })
        .unwrap();
        assert_eq!(split.input_ids.len(), 8);
        assert_eq!(split.trained_tokens(), 3);
        let cut = full(Limits {
            max_length: whole.input_ids.len() - 2,
            ..none
        })
        .unwrap();
        assert_eq!(cut.trained_tokens(), whole.trained_tokens() - 2);
        assert!(
            full(Limits {
                max_length: 16,
                ..none
            })
            .is_none(),
            "nothing left to learn"
        );
    }

    #[test]
    fn over_long_turns_are_cut_before_tokenizing_without_changing_the_sample() {
        let dir = tempfile::tempdir().unwrap();
        crate::train::tiny::init_tiny(dir.path(), crate::train::tiny::TinyArch::Llama, 0).unwrap();
        let tok = load_tokenizer(dir.path()).unwrap();
        let template = ChatTemplate::from_model_dir(dir.path()).unwrap();
        let long = "é ".repeat(2_000_000); // 6 MB, multi-byte characters
        let (_, ex) = crate::domain::dataset::parse_record(
            &serde_json::json!({"prompt": "short question", "completion": long}),
        )
        .unwrap();
        let limits = Limits {
            max_length: 64,
            max_source_length: None,
            max_target_length: None,
        };
        let max_bytes = 64 * longest_token_bytes(&tok);
        let bounded = bound_turns(&ex, max_bytes);
        assert!(bounded.turns.iter().all(|t| t.content.len() <= max_bytes));
        assert!(matches!(
            bound_turns(&bounded, max_bytes),
            std::borrow::Cow::Borrowed(_)
        ));
        let cut = encode(&bounded, &template, &tok, limits).unwrap().unwrap();
        let whole = encode(&ex, &template, &tok, limits).unwrap().unwrap();
        assert_eq!(cut, whole);
    }

    #[test]
    fn shuffles_depend_only_on_seed_and_epoch() {
        assert_eq!(epoch_order(20, 7, 1), epoch_order(20, 7, 1));
        assert_ne!(epoch_order(20, 7, 1), epoch_order(20, 7, 2));
        let mut sorted = epoch_order(20, 7, 3);
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
    }
}
