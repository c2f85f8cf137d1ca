//! The learning-rate range test (`learning_rate: "find"`, Smith 2017 as fastai runs it): up to
//! [`STEPS`] optimizer steps on the training data with the rate rising exponentially from
//! [`LOWEST`] to [`HIGHEST`], the loss smoothed (exponential average, bias-corrected), stopped once
//! it climbs past four times its lowest value; the rate chosen is a tenth of the one at the lowest
//! smoothed loss. The adapter is restored afterwards, so the real run starts from the same
//! initialisation as it would without the test.

use candle_core::Tensor;

use super::TrainError;
use super::data::{Batch, Sample, Units, epoch_order};
use super::lora::LoraSet;
use super::model::{CausalLm, ForwardCtx};
use super::optim::{AdamW, clip_grad_norm};
use super::step::loss_and_grads;

/// The most steps the test takes.
pub const STEPS: usize = 200;
/// The first rate tried.
pub const LOWEST: f64 = 1e-6;
/// The last rate tried.
pub const HIGHEST: f64 = 1e-1;

/// What the test found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Found {
    /// The rate to train with.
    pub learning_rate: f64,
    /// The rate at the lowest smoothed loss.
    pub at_lowest_loss: f64,
    /// That loss.
    pub lowest_loss: f32,
    /// Steps taken.
    pub steps: usize,
}

/// What the test trains on and how.
pub struct Probe<'a> {
    /// The model the adapter is in.
    pub model: &'a CausalLm,
    /// The adapter (restored before returning).
    pub lora: &'a LoraSet,
    /// Training examples.
    pub train: &'a Units,
    /// Examples per step.
    pub batch: usize,
    /// Seed for the order of examples.
    pub seed: u64,
    /// AdamW weight decay of the run.
    pub weight_decay: f64,
    /// Gradient clipping of the run.
    pub max_grad_norm: f64,
    /// Gradient checkpointing of the run.
    pub checkpointing: bool,
}

/// The rate of step `i` of [`STEPS`].
fn rate(i: usize) -> f64 {
    LOWEST * (HIGHEST / LOWEST).powf(i as f64 / (STEPS - 1) as f64)
}

impl Probe<'_> {
    /// Run the test; `None` when the loss never fell (no rate to recommend).
    pub fn run(&self) -> Result<Option<Found>, TrainError> {
        let vars = self.lora.vars();
        let saved: Vec<Tensor> = vars
            .iter()
            .map(|v| v.as_tensor().copy())
            .collect::<candle_core::Result<_>>()
            .map_err(|e| TrainError::Invalid(format!("copying the adapter: {e}")))?;
        let found = self.sweep();
        for (var, value) in vars.iter().zip(&saved) {
            var.set(value)
                .map_err(|e| TrainError::Invalid(format!("restoring the adapter: {e}")))?;
        }
        found
    }

    fn sweep(&self) -> Result<Option<Found>, TrainError> {
        let mut opt = AdamW::new(self.lora.vars(), self.weight_decay)?;
        let n = self.train.len();
        let batch = self.batch.clamp(1, n.max(1));
        let (mut average, mut lowest): (f64, Option<(usize, f32)>) = (0.0, None);
        let mut steps = 0;
        let (device, slots) = (self.model.device(), self.lora.vars().len());
        for i in 0..STEPS {
            let epoch = i * batch / n.max(1);
            let order = epoch_order(n, self.seed ^ 0x1f1d, epoch);
            let start = (i * batch) % n.max(1);
            let picked: Vec<&Sample> = (start..start + batch)
                .flat_map(|k| self.train.get(order[k % n]))
                .collect();
            let micro = Batch::new(&picked, device)?;
            let mut grads: Vec<Option<Tensor>> = vec![None; slots];
            let out = loss_and_grads(
                self.model,
                self.lora,
                &micro,
                ForwardCtx::default(),
                1.0,
                self.checkpointing,
                &mut grads,
            )?;
            steps = i + 1;
            if !out.loss.is_finite() {
                break;
            }
            average = 0.98 * average + 0.02 * f64::from(out.loss);
            let smoothed = (average / (1.0 - 0.98f64.powi(i as i32 + 1))) as f32;
            match lowest {
                Some((_, low)) if smoothed > 4.0 * low => break,
                Some((_, low)) if smoothed >= low => {}
                _ => lowest = Some((i, smoothed)),
            }
            clip_grad_norm(&mut grads, self.max_grad_norm)?;
            opt.step(&grads, rate(i))?;
        }
        Ok(lowest
            .filter(|(i, _)| *i > 0)
            .map(|(i, lowest_loss)| Found {
                learning_rate: rate(i) / 10.0,
                at_lowest_loss: rate(i),
                lowest_loss,
                steps,
            }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rates_rise_exponentially_from_the_lowest_to_the_highest() {
        assert!((rate(0) - LOWEST).abs() < 1e-18);
        assert!((rate(STEPS - 1) / HIGHEST - 1.0).abs() < 1e-9);
        let ratio = rate(1) / rate(0);
        assert!((rate(101) / rate(100) - ratio).abs() < 1e-9);
    }
}
