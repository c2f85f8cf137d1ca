//! Preference batches: pairs packed as `[chosen₀, rejected₀, chosen₁, rejected₁, …]`, scored by
//! the reference once and by the policy at every step.

use std::cell::Cell;

use candle_core::{Device, Tensor};

use super::head::{objective, score, targets};
use super::loss::{PairStats, SeqLogp, pair_loss};
use crate::domain::preference::PreferenceSettings;
use crate::train::data::{Batch, Sample};
use crate::train::lora::LoraSet;
use crate::train::model::{CausalLm, ForwardCtx};
use crate::train::step::{HeadResult, MicroOutput, Pass};
use crate::train::{TensorContext, TrainError};

/// What one micro-batch of pairs measured.
#[derive(Debug, Clone, Copy)]
pub struct PairBatchOutput {
    /// Token accuracy counts and the mean pair loss.
    pub micro: MicroOutput,
    /// Rewards and loss over its pairs.
    pub stats: PairStats,
}

/// Pair losses of a scored batch and each sequence's coefficient `∂(mean loss)/∂logp`.
fn pair_losses(
    settings: &PreferenceSettings,
    seqs: &[SeqLogp],
    refs: &[f64],
) -> Result<(PairStats, Vec<f64>), TrainError> {
    if !seqs.len().is_multiple_of(2) || seqs.len() != refs.len() {
        return Err(TrainError::Invalid(
            "a preference batch must hold whole pairs and their reference scores".into(),
        ));
    }
    let pairs = seqs.len() / 2;
    let mut stats = PairStats::default();
    let mut coeff = vec![0.0; seqs.len()];
    for k in 0..pairs {
        let (c, r) = (2 * k, 2 * k + 1);
        let p = pair_loss(settings, seqs[c], seqs[r], refs[c], refs[r]);
        coeff[c] = p.d_chosen / pairs as f64;
        coeff[r] = p.d_rejected / pairs as f64;
        stats.add(&p);
    }
    Ok((stats, coeff))
}

/// Forward and backward of a batch of pairs (`refs`: the reference's summed log-probability of
/// each of its sequences), adding `d(mean pair loss · scale)/d(adapter)` into `grads`.
pub fn pair_loss_and_grads(
    pass: &Pass<'_>,
    refs: &[f64],
    settings: &PreferenceSettings,
    checkpointing: bool,
    grads: &mut [Option<Tensor>],
) -> Result<PairBatchOutput, TrainError> {
    let batch = pass.batch;
    let stats = Cell::new(PairStats::default());
    let head = |x: &Tensor| -> HeadResult {
        let (normed, lm_head) = pass.model.norm_and_lm_head(x).ctx("final norm")?;
        let tg = targets(&batch.labels[0], &batch.segments);
        let scores = score(&normed, lm_head, &tg, batch.segments.len())?;
        let (s, coeff) = pair_losses(settings, &scores.seqs, refs)?;
        stats.set(s);
        let micro = MicroOutput {
            loss: s.loss as f32,
            correct: scores.correct,
            count: scores.count,
        };
        Ok((objective(&normed, lm_head, &tg, &coeff)?, micro))
    };
    let micro = pass.run(checkpointing, grads, &head)?;
    Ok(PairBatchOutput {
        micro,
        stats: stats.get(),
    })
}

/// Summed answer log-probabilities of `samples` (in order), `per_batch` at a time, without
/// dropout or gradients.
fn score_all(
    model: &CausalLm,
    samples: &[Sample],
    per_batch: usize,
    device: &Device,
) -> Result<Vec<SeqLogp>, TrainError> {
    let mut out = Vec::with_capacity(samples.len());
    for chunk in samples.chunks(per_batch.max(1)) {
        let refs: Vec<&Sample> = chunk.iter().collect();
        let batch = Batch::new(&refs, device)?;
        let x = model.hidden(&batch.input_ids, &batch.segments, ForwardCtx::default())?;
        let (normed, lm_head) = model.norm_and_lm_head(&x.detach()).ctx("final norm")?;
        let tg = targets(&batch.labels[0], &batch.segments);
        out.extend(score(&normed, lm_head, &tg, batch.segments.len())?.seqs);
    }
    Ok(out)
}

/// The reference's summed log-probability of each of `samples`: the base model with the adapter
/// switched off (its `B` matrices zeroed for the pass, then restored — no second copy of the
/// weights).
pub fn reference_scores(
    model: &CausalLm,
    lora: &LoraSet,
    samples: &[Sample],
    per_batch: usize,
    device: &Device,
) -> Result<Vec<f64>, TrainError> {
    let saved: Vec<Tensor> = lora
        .adapters
        .iter()
        .map(|a| a.b.as_tensor().copy())
        .collect::<candle_core::Result<_>>()
        .ctx("saving the adapter")?;
    let switch = |off: bool| -> Result<(), TrainError> {
        for (a, keep) in lora.adapters.iter().zip(&saved) {
            let value = if off {
                keep.zeros_like()
            } else {
                Ok(keep.clone())
            };
            value
                .and_then(|v| a.b.set(&v))
                .ctx("switching the adapter")?;
        }
        Ok(())
    };
    switch(true)?;
    let scored = score_all(model, samples, per_batch, device);
    switch(false)?;
    Ok(scored?.into_iter().map(|s| s.logp).collect())
}

/// Loss and rewards of `samples` (whole pairs, in order) under the current adapter, against the
/// reference scores `refs` (validation; no gradients).
pub fn score_pairs(
    model: &CausalLm,
    samples: &[Sample],
    refs: &[f64],
    settings: &PreferenceSettings,
    per_batch: usize,
    device: &Device,
) -> Result<PairStats, TrainError> {
    let seqs = score_all(model, samples, per_batch, device)?;
    Ok(pair_losses(settings, &seqs, refs)?.0)
}
