//! Comparing tensors in the trainer tests.

use candle_core::Tensor;

/// The largest absolute value of `t`.
pub fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest absolute difference relative to the largest magnitude of `want`.
pub fn rel_err(got: &Tensor, want: &Tensor) -> f32 {
    max_abs(&(got - want).unwrap()) / max_abs(want).max(1e-12)
}
