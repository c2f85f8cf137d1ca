//! From examples to batches: read a run's files and split off validation ([`prepare`]), render
//! with the chat template, tokenize piece by piece, mask the labels of everything but trained
//! responses, truncate, pack, shuffle by seed.

use std::collections::HashSet;
use std::path::Path;

use candle_core::{Device, Tensor};
use rand::seq::SliceRandom;
use tokenizers::Tokenizer;

use super::auto::{self, Resolved};
use super::config::RunConfig;
use super::rng::{self, purpose};
use super::{TensorContext, TrainError};
use crate::domain::dataset::{EvalPrompt, Example};
use crate::domain::hyperparameters::AUTO_SPLIT_MIN;
use crate::model_dir::template::ChatTemplate;
use crate::model_dir::{Config, read_tokenizer_config};

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

/// What one training unit is: an example, or a preference pair (its chosen and its rejected
/// conversation, trained side by side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    /// One demonstration.
    Example,
    /// A chosen and a rejected answer to one prompt.
    Pair,
}

impl Unit {
    /// Samples per unit.
    pub fn width(self) -> usize {
        match self {
            Self::Example => 1,
            Self::Pair => 2,
        }
    }
}

/// Samples grouped in units: counted and indexed by unit, kept flat (a pair's chosen sample,
/// then its rejected one) for the passes that batch them.
#[derive(Debug, Clone)]
pub struct Units {
    unit: Unit,
    samples: Vec<Sample>,
}

impl Units {
    /// No units yet.
    pub fn new(unit: Unit) -> Self {
        Self {
            unit,
            samples: Vec::new(),
        }
    }

    /// Add one unit: [`Unit::width`] samples.
    pub fn push(&mut self, samples: Vec<Sample>) {
        debug_assert_eq!(samples.len(), self.unit.width());
        self.samples.extend(samples);
    }

    /// How many units.
    pub fn len(&self) -> usize {
        self.samples.len() / self.unit.width()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The samples of unit `i`.
    pub fn get(&self, i: usize) -> &[Sample] {
        let w = self.unit.width();
        &self.samples[i * w..(i + 1) * w]
    }

    /// Every sample, unit after unit.
    pub fn samples(&self) -> &[Sample] {
        &self.samples
    }

    /// Move the units at `held` out, keeping both sets in order.
    pub fn take(&mut self, held: &HashSet<usize>) -> Units {
        let w = self.unit.width();
        let (out, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut self.samples)
            .into_iter()
            .enumerate()
            .partition(|(i, _)| held.contains(&(i / w)));
        self.samples = kept.into_iter().map(|(_, s)| s).collect();
        Units {
            unit: self.unit,
            samples: out.into_iter().map(|(_, s)| s).collect(),
        }
    }
}

/// A run's data, encoded and split.
pub struct Prepared {
    /// Training units.
    pub train: Units,
    /// Validation units (a validation file's, or those held out of the training set).
    pub valid: Units,
    /// The prompts of `valid` for the generation evaluation (empty when it is off).
    pub eval_prompts: Vec<EvalPrompt>,
    /// The model's tokenizer.
    pub tokenizer: Tokenizer,
    /// The chat template the samples were rendered with.
    pub template: ChatTemplate,
    /// The `auto` hyperparameters, resolved for this many training units.
    pub resolved: Resolved,
    /// Examples left without response tokens by truncation (skipped), out of the file's count.
    pub skipped: Option<(usize, usize)>,
    /// Examples held out for validation because the set was large enough and no validation
    /// data was given or refused (`validation_split` unset).
    pub auto_split: Option<usize>,
}

/// Read, render, tokenize and split the run's data: training units (examples, or preference pairs
/// for a DPO run), validation units (the validation file's, or `validation_split` of the
/// training set), the validation prompts and the resolved `auto` values.
pub fn prepare(cfg: &RunConfig) -> Result<Prepared, TrainError> {
    let hp = &cfg.hyperparameters;
    let tokenizer = load_tokenizer(&cfg.model_dir)?;
    let template = match &cfg.template {
        Some(name) => {
            let tc = read_tokenizer_config(&cfg.model_dir)?;
            let tok = |k: &str| tc.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
            ChatTemplate::builtin(name, &tok("bos_token"), &tok("eos_token"))?
        }
        None => ChatTemplate::from_model_dir(&cfg.model_dir)?,
    };
    let limits = Limits {
        max_length: hp.max_length as usize,
        max_source_length: hp.max_source_length.map(|v| v as usize),
        max_target_length: hp.max_target_length.map(|v| v as usize),
    };
    // No turn is tokenized beyond what truncation could keep.
    let longest = [
        hp.max_length,
        hp.max_source_length.unwrap_or(0),
        hp.max_target_length.unwrap_or(0),
    ];
    let max_turn_bytes =
        *longest.iter().max().unwrap_or(&hp.max_length) as usize * longest_token_bytes(&tokenizer);
    let unit = if hp.preference.is_some() {
        Unit::Pair
    } else {
        Unit::Example
    };
    let encode = |e: &Example| -> Result<Option<Sample>, TrainError> {
        let bounded = bound_turns(e, max_turn_bytes);
        encode(&bounded, &template, &tokenizer, limits)
    };
    // An example's samples (a preference pair's chosen and rejected conversations) and the
    // example its prompt and reference come from (the chosen one); a pair is kept only when
    // both its answers keep tokens.
    let encode_unit = |e: Example| -> Result<Option<(Vec<Sample>, Example)>, TrainError> {
        let parts = match (unit, e.preference_pair()) {
            (Unit::Example, None) => vec![e],
            (Unit::Example, Some(_)) => {
                return Err(TrainError::Invalid(
                    "the data holds preference pairs (chosen/rejected); train on them with DPO \
                     (method type dpo, or stage: dpo)"
                        .into(),
                ));
            }
            (Unit::Pair, Some((chosen, rejected))) => vec![chosen, rejected],
            (Unit::Pair, None) => {
                return Err(TrainError::Invalid(
                    "a preference job got an example without a rejected answer".into(),
                ));
            }
        };
        let mut out = Vec::with_capacity(parts.len());
        for part in &parts {
            match encode(part)? {
                Some(sample) => out.push(sample),
                None => return Ok(None),
            }
        }
        Ok(parts.into_iter().next().map(|first| (out, first)))
    };
    // A file's units, the examples they came from (the ones that kept a response), and the
    // file's count.
    let encode_all = |path: &Path| -> Result<(Units, Vec<Example>, usize), TrainError> {
        let examples = read_examples(path)?;
        let total = examples.len();
        let mut out = Units::new(unit);
        let mut kept = Vec::with_capacity(total);
        for e in examples {
            if let Some((samples, example)) = encode_unit(e)? {
                out.push(samples);
                kept.push(example);
            }
        }
        Ok((out, kept, total))
    };
    let (mut train, mut train_examples, total) = encode_all(&cfg.train_file)?;
    if train.is_empty() {
        return Err(TrainError::Invalid(format!(
            "none of the {total} training examples has a response left to learn after truncation to {} tokens",
            hp.max_length
        )));
    }
    let skipped = (train.len() < total).then(|| (total - train.len(), total));
    let mut auto_split = None;
    let (valid, valid_examples) = match (&cfg.valid_file, hp.evaluation.validation_split) {
        (Some(f), _) => {
            let (samples, examples, _) = encode_all(f)?;
            (samples, examples)
        }
        (None, Some(split)) if split > 0.0 => {
            let held = hold_out(train.len(), split, cfg.seed)?;
            (train.take(&held), take(&mut train_examples, &held))
        }
        (None, None) if train.len() >= AUTO_SPLIT_MIN => {
            let k = auto_split_size(train.len());
            auto_split = Some(k);
            let held = hold_out(train.len(), k as f64, cfg.seed)?;
            (train.take(&held), take(&mut train_examples, &held))
        }
        (None, _) => (Units::new(unit), Vec::new()),
    };
    let eval_prompts = if hp.evaluation.predict_with_generate {
        valid_examples.iter().filter_map(EvalPrompt::of).collect()
    } else {
        Vec::new()
    };
    let parameters = auto::parameter_count(&Config::load(&cfg.model_dir)?);
    let resolved = auto::resolve(hp, train.len(), parameters);
    Ok(Prepared {
        train,
        valid,
        eval_prompts,
        tokenizer,
        template,
        resolved,
        skipped,
        auto_split,
    })
}

/// How many examples an automatic validation split holds out of `n`: 10 %, at most 50.
fn auto_split_size(n: usize) -> usize {
    (n / 10).clamp(1, 50)
}

/// The indices of a seeded random `split` (fraction or count) of `n` training examples.
fn hold_out(n: usize, split: f64, seed: u64) -> Result<HashSet<usize>, TrainError> {
    let k = if split < 1.0 {
        (split * n as f64).round() as usize
    } else {
        split as usize
    };
    if k == 0 || k >= n {
        return Err(TrainError::Invalid(format!(
            "val_size {split} leaves no training or no validation examples out of {n}"
        )));
    }
    let order = epoch_order(n, seed ^ 0x5eed, 0);
    Ok(order[..k].iter().copied().collect())
}

/// Move the items at `held` out of `items`, keeping both in order.
fn take<T>(items: &mut Vec<T>, held: &HashSet<usize>) -> Vec<T> {
    let (out, kept): (Vec<_>, Vec<_>) = std::mem::take(items)
        .into_iter()
        .enumerate()
        .partition(|(i, _)| held.contains(i));
    *items = kept.into_iter().map(|(_, x)| x).collect();
    out.into_iter().map(|(_, x)| x).collect()
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
