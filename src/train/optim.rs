//! AdamW (Loshchilov & Hutter, arXiv:1711.05101) with decoupled weight decay, global-norm
//! gradient clipping, and learning-rate schedules with linear warm-up. Our own implementation so
//! the moments can be saved and restored when a job is paused.

use candle_core::{Tensor, Var};

use super::{TensorContext, TrainError};
use crate::domain::hyperparameters::LrScheduler;

/// AdamW over a fixed list of variables.
pub struct AdamW {
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    step: usize,
    /// β₁.
    pub beta1: f64,
    /// β₂.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl AdamW {
    /// Zero moments for `vars`.
    pub fn new(vars: Vec<Var>, weight_decay: f64) -> Result<Self, TrainError> {
        let zeros = |v: &Var| v.as_tensor().zeros_like();
        let m = vars
            .iter()
            .map(zeros)
            .collect::<candle_core::Result<Vec<_>>>()
            .ctx("optimizer init")?;
        let v = m.clone();
        Ok(Self {
            vars,
            m,
            v,
            step: 0,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        })
    }

    /// First and second moments, in variable order.
    pub fn moments(&self) -> Vec<(Tensor, Tensor)> {
        self.m.iter().cloned().zip(self.v.iter().cloned()).collect()
    }

    /// Put back saved moments and the step count.
    pub fn restore(
        &mut self,
        moments: Vec<(Tensor, Tensor)>,
        step: usize,
    ) -> Result<(), TrainError> {
        if moments.len() != self.vars.len() {
            return Err(TrainError::Invalid(
                "optimizer state does not match the adapter".into(),
            ));
        }
        (self.m, self.v) = moments.into_iter().unzip();
        self.step = step;
        Ok(())
    }

    /// One update with `grads` (one per variable, `None` = no gradient) at learning rate `lr`.
    pub fn step(&mut self, grads: &[Option<Tensor>], lr: f64) -> Result<(), TrainError> {
        self.step += 1;
        let t = self.step as i32;
        let (b1, b2) = (self.beta1, self.beta2);
        let bias1 = 1.0 - b1.powi(t);
        let bias2 = 1.0 - b2.powi(t);
        for (i, var) in self.vars.iter().enumerate() {
            let Some(g) = &grads[i] else { continue };
            let update = (|| {
                let m = ((&self.m[i] * b1)? + (g * (1.0 - b1))?)?;
                let v = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
                let m_hat = (&m / bias1)?;
                let v_hat = (&v / bias2)?;
                let theta = (var.as_tensor() * (1.0 - lr * self.weight_decay))?;
                let delta = (m_hat / (v_hat.sqrt()? + self.eps)?)?;
                let next = (theta - (delta * lr)?)?;
                Ok::<_, candle_core::Error>((m, v, next))
            })()
            .ctx("optimizer step")?;
            self.m[i] = update.0;
            self.v[i] = update.1;
            var.set(&update.2).ctx("updating a parameter")?;
        }
        Ok(())
    }
}

/// Scale gradients so their global L2 norm is at most `max_norm` (0 = no clipping). Returns the
/// norm before clipping.
pub fn clip_grad_norm(grads: &mut [Option<Tensor>], max_norm: f64) -> Result<f64, TrainError> {
    // One read back from the device for all tensors (each read waits for the device).
    let squares = grads
        .iter()
        .flatten()
        .map(|g| g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F32))
        .collect::<candle_core::Result<Vec<_>>>()
        .ctx("gradient norm")?;
    if squares.is_empty() {
        return Ok(0.0);
    }
    let total = Tensor::stack(&squares, 0)
        .and_then(|s| s.sum_all())
        .and_then(|s| s.to_scalar::<f32>())
        .ctx("gradient norm")?;
    let norm = f64::from(total).sqrt();
    if max_norm > 0.0 && norm > max_norm {
        let factor = max_norm / (norm + 1e-6);
        for g in grads.iter_mut().flatten() {
            *g = (&*g * factor).ctx("clipping gradients")?;
        }
    }
    Ok(norm)
}

/// The learning rate at optimizer step `step` (0-based) of `total`.
pub fn learning_rate(
    base: f64,
    kind: LrScheduler,
    warmup: usize,
    step: usize,
    total: usize,
) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).min(1.0);
    match kind {
        LrScheduler::Constant => base,
        LrScheduler::Linear => base * (1.0 - progress),
        LrScheduler::Cosine => base * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules_warm_up_then_decay() {
        let lr = |k, s| learning_rate(1.0, k, 2, s, 10);
        assert_eq!(lr(LrScheduler::Cosine, 0), 0.5);
        assert_eq!(lr(LrScheduler::Cosine, 2), 1.0);
        assert!(lr(LrScheduler::Cosine, 9) < 0.05);
        assert_eq!(lr(LrScheduler::Linear, 6), 0.5);
        assert_eq!(lr(LrScheduler::Constant, 9), 1.0);
    }

    #[test]
    fn clipping_bounds_the_global_norm() {
        let dev = candle_core::Device::Cpu;
        let mut grads = vec![Some(Tensor::new(&[3f32, 4.0], &dev).unwrap()), None];
        let norm = clip_grad_norm(&mut grads, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let after: Vec<f32> = grads[0].as_ref().unwrap().to_vec1().unwrap();
        assert!((after[0] - 0.6).abs() < 1e-4 && (after[1] - 0.8).abs() < 1e-4);
    }
}
