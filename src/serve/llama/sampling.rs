//! Sampling for one sequence as llama.cpp chains it: logit bias, repetition penalties, the
//! output grammar (llguidance, from a JSON schema), then greedy or top-p / temperature /
//! seeded draw. Log-probabilities are read from the raw logits (the model's distribution).

use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use llama_cpp_2::token::data::LlamaTokenData;
use llama_cpp_2::token::data_array::LlamaTokenDataArray;
use llama_cpp_2::token::logit_bias::LlamaLogitBias;
use toktrie::TokEnv;

use crate::serve::events::{TokenLogprob, TopLogprob};
use crate::serve::{ChatParams, ServeError};

/// The sampler chain for a sequence of `params`; `seed` seeds its draws (unused when greedy).
pub fn chain(
    params: &ChatParams,
    model: &LlamaModel,
    tok_env: Option<&TokEnv>,
    seed: u32,
) -> Result<LlamaSampler, ServeError> {
    let n_vocab = model.n_vocab();
    let mut samplers = Vec::new();
    if let Some(bias) = &params.logit_bias {
        let biases: Vec<LlamaLogitBias> = bias
            .iter()
            .filter(|(id, _)| (**id as i64) < i64::from(n_vocab))
            .map(|(id, b)| LlamaLogitBias::new(LlamaToken(*id as i32), *b))
            .collect();
        samplers.push(LlamaSampler::logit_bias(n_vocab, &biases));
    }
    let (freq, present) = (
        params.frequency_penalty.unwrap_or(0.0),
        params.presence_penalty.unwrap_or(0.0),
    );
    if freq != 0.0 || present != 0.0 {
        samplers.push(LlamaSampler::penalties(n_vocab, -1, 1.0, freq, present));
    }
    if let Some(schema) = params.output_schema() {
        let env = tok_env.ok_or_else(|| {
            ServeError::Invalid("constrained output is not available for this model".to_owned())
        })?;
        samplers.push(grammar(env, schema)?);
    }
    if params.greedy() {
        samplers.push(LlamaSampler::greedy());
    } else {
        if let Some(p) = params.top_p.filter(|p| *p < 1.0) {
            samplers.push(LlamaSampler::top_p(p as f32, 1));
        }
        samplers.push(LlamaSampler::temp(params.temperature.unwrap_or(1.0) as f32));
        samplers.push(LlamaSampler::dist(seed));
    }
    Ok(LlamaSampler::chain_simple(samplers))
}

/// A sampler that keeps the output inside `schema` (llguidance, as mistral.rs constrains).
fn grammar(env: &TokEnv, schema: serde_json::Value) -> Result<LlamaSampler, ServeError> {
    let invalid = |e: String| ServeError::Invalid(format!("the output schema cannot be used: {e}"));
    let factory = llguidance::ParserFactory::new_simple(env).map_err(|e| invalid(e.to_string()))?;
    let grammar = llguidance::api::TopLevelGrammar::from_json_schema(schema);
    let parser = factory
        .create_parser(grammar)
        .map_err(|e| invalid(e.to_string()))?;
    Ok(LlamaSampler::from(llguidance::Matcher::new(Ok(parser))))
}

/// Draw the next token from one row's `logits` with `sampler` (which then accepts it), as
/// llama.cpp's `llama_sampler_sample` does; the most likely token if the chain selects none.
pub fn sample(sampler: &mut LlamaSampler, logits: &[f32]) -> LlamaToken {
    let mut candidates = LlamaTokenDataArray::from_iter(
        logits
            .iter()
            .enumerate()
            .map(|(id, l)| LlamaTokenData::new(LlamaToken(id as i32), *l, 0.0)),
        false,
    );
    candidates.apply_sampler(sampler);
    let token = candidates.selected_token().unwrap_or_else(|| {
        let best = (0..logits.len()).max_by(|a, b| logits[*a].total_cmp(&logits[*b]));
        LlamaToken(best.unwrap_or(0) as i32)
    });
    sampler.accept(token);
    token
}

/// The log-probability of `token` under one row's `logits` and the `top` most likely tokens.
pub fn logprobs(
    logits: &[f32],
    token: LlamaToken,
    top: usize,
    piece: &dyn Fn(LlamaToken) -> Vec<u8>,
) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|l| (l - max).exp()).sum::<f32>().ln() + max;
    let lp = |id: usize| logits.get(id).map_or(f32::NEG_INFINITY, |l| l - log_sum);
    let mut best: Vec<usize> = Vec::new();
    if top > 0 {
        let mut ids: Vec<usize> = (0..logits.len()).collect();
        let k = top.min(ids.len());
        ids.select_nth_unstable_by(k.saturating_sub(1), |a, b| {
            logits[*b].total_cmp(&logits[*a])
        });
        ids.truncate(k);
        ids.sort_by(|a, b| logits[*b].total_cmp(&logits[*a]));
        best = ids;
    }
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    let bytes = piece(token);
    TokenLogprob {
        token: text(&bytes),
        logprob: lp(token.0 as usize),
        top: best
            .into_iter()
            .map(|id| {
                let b = piece(LlamaToken(id as i32));
                TopLogprob {
                    token: text(&b),
                    bytes: b,
                    logprob: lp(id),
                }
            })
            .collect(),
        bytes,
    }
}
