//! Preference tuning (DPO and its IPO / SimPO variants) on LoRA: each pair's chosen and rejected
//! conversations are packed into one forward batch; the reference is the same base with the
//! adapter switched off, scored once before training ([`reference_scores`]); the loss is a
//! function of per-sequence log-probabilities ([`loss`]) whose gradient reaches the adapter
//! through a surrogate objective on the head ([`head`]).

pub mod head;
pub mod loss;
mod step;

pub use step::{PairBatchOutput, pair_loss_and_grads, reference_scores, score_pairs};

use candle_core::{Device, Tensor};

use crate::domain::preference::PreferenceSettings;
use crate::train::TrainError;
use crate::train::data::Sample;
use crate::train::lora::LoraSet;
use crate::train::metrics::Rewards;
use crate::train::model::CausalLm;
use crate::train::step::Pass;
use loss::PairStats;

/// A preference run's settings and the reference scores of its training and validation
/// samples (computed once: the reference never changes).
pub struct PreferenceRun {
    settings: PreferenceSettings,
    train_refs: Vec<f64>,
    valid_refs: Vec<f64>,
}

impl PreferenceRun {
    /// Score every training and validation sample with the reference (`per_batch` pairs at a
    /// time). SimPO needs no reference and skips the pass.
    pub fn new(
        settings: PreferenceSettings,
        model: &CausalLm,
        lora: &LoraSet,
        (train, valid): (&[Sample], &[Sample]),
        per_batch: usize,
        device: &Device,
    ) -> Result<Self, TrainError> {
        let refs = |samples: &[Sample]| match settings.pref_loss {
            crate::domain::preference::PrefLoss::Simpo => Ok(vec![0.0; samples.len()]),
            _ => reference_scores(model, lora, samples, per_batch * 2, device),
        };
        Ok(Self {
            settings,
            train_refs: refs(train)?,
            valid_refs: refs(valid)?,
        })
    }

    /// Forward and backward of the pairs `units` (indices of training pairs) packed in `pass`.
    pub fn micro(
        &self,
        pass: &Pass<'_>,
        units: &[usize],
        checkpointing: bool,
        grads: &mut [Option<Tensor>],
    ) -> Result<PairBatchOutput, TrainError> {
        let refs: Vec<f64> = units
            .iter()
            .flat_map(|u| [self.train_refs[2 * u], self.train_refs[2 * u + 1]])
            .collect();
        pair_loss_and_grads(pass, &refs, &self.settings, checkpointing, grads)
    }

    /// Loss and rewards over the validation pairs.
    pub fn validate(
        &self,
        model: &CausalLm,
        valid: &[Sample],
        per_batch: usize,
        device: &Device,
    ) -> Result<PairStats, TrainError> {
        score_pairs(
            model,
            valid,
            &self.valid_refs,
            &self.settings,
            per_batch * 2,
            device,
        )
    }
}

impl Rewards {
    /// A step's rewards, with the validation pairs' when they were evaluated.
    pub fn of(train: &PairStats, valid: Option<&PairStats>) -> Self {
        Self {
            chosen: train.chosen as f32,
            rejected: train.rejected as f32,
            accuracies: train.accuracy as f32,
            margins: train.margin as f32,
            eval_chosen: valid.map(|v| v.chosen as f32),
            eval_rejected: valid.map(|v| v.rejected as f32),
            eval_accuracies: valid.map(|v| v.accuracy as f32),
            eval_margins: valid.map(|v| v.margin as f32),
        }
    }
}
