//! Deterministic randomness: every random draw derives from the job seed and a position in
//! training (epoch, step, layer), so a resumed run draws exactly what an uninterrupted one would
//! and no RNG state has to be saved.

use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A generator for one purpose at one point of training.
pub fn stream(seed: u64, purpose: u64, position: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ purpose.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    rng.set_stream(position);
    rng
}

/// `n` uniform samples in `[lo, hi)`.
pub fn uniform(rng: &mut ChaCha8Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.gen_range(lo..hi)).collect()
}

/// `n` dropout keep flags: 1 with probability `keep`, else 0 (integer comparison, the cheapest
/// draw).
pub fn keep_flags(rng: &mut ChaCha8Rng, n: usize, keep: f32) -> Vec<u8> {
    let threshold = (f64::from(keep) * f64::from(u32::MAX)) as u32;
    (0..n)
        .map(|_| u8::from(rng.next_u32() < threshold))
        .collect()
}

/// `n` standard-normal samples (Box–Muller).
pub fn normal(rng: &mut ChaCha8Rng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let u1: f32 = rng.gen_range(f32::EPSILON..1.0);
            let u2: f32 = rng.r#gen();
            std * (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
        })
        .collect()
}

/// Purposes, so streams never collide.
pub mod purpose {
    /// LoRA A initialisation.
    pub const LORA_INIT: u64 = 1;
    /// Dataset shuffling per epoch.
    pub const SHUFFLE: u64 = 2;
    /// Dropout masks per micro-batch.
    pub const DROPOUT: u64 = 3;
    /// Tiny-model weights.
    pub const TINY_WEIGHTS: u64 = 4;
    /// Train/validation split.
    pub const SPLIT: u64 = 5;
    /// Adapter values of the `model grad-step` diagnostic.
    pub const DIAGNOSTIC: u64 = 6;
    /// Bootstrap samples of an ensemble's members.
    pub const BOOTSTRAP: u64 = 7;
    /// NEFTune embedding noise per micro-batch.
    pub const NEFTUNE: u64 = 8;
}
