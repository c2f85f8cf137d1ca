//! Greedy decoding with the training model (no KV cache): for checking what a run learned, in
//! tests and on the command line. Serving uses mistral.rs.

use candle_core::{D, Tensor};
use tokenizers::Tokenizer;

use super::model::{CausalLm, ForwardCtx};
use super::template::ChatTemplate;
use super::{TensorContext, TrainError};
use crate::domain::dataset::Turn;

/// Continue the conversation `turns` with up to `max_tokens` greedy tokens, stopping at the
/// template's end-of-sequence token.
pub fn greedy(
    model: &CausalLm,
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    turns: &[Turn],
    max_tokens: usize,
) -> Result<String, TrainError> {
    let prompt = template.render(turns, true, None)?;
    let enc = tokenizer
        .encode(prompt.as_str(), false)
        .map_err(|e| TrainError::Invalid(format!("tokenizing failed: {e}")))?;
    let mut ids = enc.get_ids().to_vec();
    let start = ids.len();
    let eos = tokenizer.token_to_id(template.eos_token());
    for _ in 0..max_tokens {
        let input = Tensor::new(ids.as_slice(), model.device())
            .and_then(|t| t.unsqueeze(0))
            .ctx("building the prompt")?;
        let mask = vec![vec![1u8; ids.len()]];
        let logits = model.forward(&input, &mask, ForwardCtx::default())?;
        let next = logits
            .get(0)
            .and_then(|l| l.get(ids.len() - 1))
            .and_then(|l| l.argmax(D::Minus1))
            .and_then(|t| t.to_scalar::<u32>())
            .ctx("picking the next token")?;
        if Some(next) == eos {
            break;
        }
        ids.push(next);
    }
    tokenizer
        .decode(&ids[start..], true)
        .map_err(|e| TrainError::Invalid(format!("decoding failed: {e}")))
}
