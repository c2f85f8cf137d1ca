//! Greedy decoding with the training model and a KV cache: the answers of the end-of-run
//! evaluation, and checks of what a run learned in tests and on the command line. Serving uses
//! mistral.rs.

use std::path::Path;

use candle_core::D;
use serde_json::Value;
use tokenizers::Tokenizer;

use super::model::{CausalLm, KvCache};
use super::{TensorContext, TrainError};
use crate::domain::dataset::Turn;
use crate::model_dir::template::ChatTemplate;

/// What turns a conversation into prompt tokens and decides where an answer ends.
pub struct Prompter<'a> {
    tokenizer: &'a Tokenizer,
    template: &'a ChatTemplate,
    stop: Vec<u32>,
}

impl<'a> Prompter<'a> {
    /// Stops at the template's end-of-sequence token.
    pub fn new(tokenizer: &'a Tokenizer, template: &'a ChatTemplate) -> Self {
        let stop = tokenizer
            .token_to_id(template.eos_token())
            .into_iter()
            .collect();
        Self {
            tokenizer,
            template,
            stop,
        }
    }

    /// Also stops at the `eos_token_id`s of the model directory's `generation_config.json`.
    pub fn with_generation_config(mut self, model_dir: &Path) -> Self {
        let path = model_dir.join(crate::model_dir::GENERATION_CONFIG);
        let config: Value = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null);
        let ids = match &config["eos_token_id"] {
            Value::Array(list) => list.iter().filter_map(Value::as_u64).collect(),
            v => v.as_u64().into_iter().collect::<Vec<_>>(),
        };
        for id in ids.into_iter().filter_map(|i| u32::try_from(i).ok()) {
            if !self.stop.contains(&id) {
                self.stop.push(id);
            }
        }
        self
    }

    /// The prompt tokens of `turns` with the assistant's generation prompt, keeping the last
    /// `max_tokens` when longer (the question and the generation prompt are at the end).
    pub fn prompt_ids(
        &self,
        turns: &[Turn],
        tools: Option<&Value>,
        max_tokens: usize,
    ) -> Result<Vec<u32>, TrainError> {
        let prompt = self.template.render(turns, true, tools)?;
        let enc = self
            .tokenizer
            .encode(prompt.as_str(), false)
            .map_err(|e| TrainError::Invalid(format!("tokenizing failed: {e}")))?;
        let ids = enc.get_ids();
        Ok(ids[ids.len().saturating_sub(max_tokens.max(1))..].to_vec())
    }

    /// Up to `max_new` greedy tokens after `prompt`, without the stop token.
    pub fn continue_ids(
        &self,
        model: &CausalLm,
        prompt: &[u32],
        max_new: usize,
    ) -> Result<Vec<u32>, TrainError> {
        let mut out = self.continue_batch(model, &[prompt.to_vec()], max_new)?;
        Ok(out.pop().unwrap_or_default())
    }

    /// [`Self::continue_ids`] for several prompts decoded together (left-padded, one KV cache).
    pub fn continue_batch(
        &self,
        model: &CausalLm,
        prompts: &[Vec<u32>],
        max_new: usize,
    ) -> Result<Vec<Vec<u32>>, TrainError> {
        let mut out = vec![Vec::new(); prompts.len()];
        if prompts.is_empty() || max_new == 0 {
            return Ok(out);
        }
        let mut done = vec![false; prompts.len()];
        let mut cache = KvCache::default();
        let mut logits = model.prefill(prompts, &mut cache)?;
        loop {
            let next = logits
                .argmax(D::Minus1)
                .and_then(|t| t.to_vec1::<u32>())
                .ctx("picking the next tokens")?;
            for (row, id) in next.iter().enumerate() {
                if done[row] {
                    continue;
                }
                if self.stop.contains(id) {
                    done[row] = true;
                } else {
                    out[row].push(*id);
                    done[row] = out[row].len() >= max_new;
                }
            }
            if done.iter().all(|d| *d) {
                return Ok(out);
            }
            logits = model.decode_step(&next, &mut cache)?;
        }
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TrainError> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| TrainError::Invalid(format!("decoding failed: {e}")))
    }

    /// The greedy answer to `turns`: at most `max_new` tokens after a prompt of at most
    /// `max_prompt` tokens.
    pub fn answer(
        &self,
        model: &CausalLm,
        turns: &[Turn],
        tools: Option<&Value>,
        max_prompt: usize,
        max_new: usize,
    ) -> Result<String, TrainError> {
        let prompt = self.prompt_ids(turns, tools, max_prompt)?;
        self.decode(&self.continue_ids(model, &prompt, max_new)?)
    }
}

/// Continue the conversation `turns` with up to `max_tokens` greedy tokens, stopping at the
/// template's end-of-sequence token.
pub fn greedy(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    turns: &[Turn],
    max_tokens: usize,
) -> Result<String, TrainError> {
    let context = model
        .config()
        .max_position_embeddings
        .saturating_sub(max_tokens);
    Prompter::new(tokenizer, template).answer(model, turns, None, context, max_tokens)
}
