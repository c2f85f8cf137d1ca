//! Causal-LM cross-entropy over labelled positions (Hugging Face's shifted mean), and the mean
//! token accuracy OpenAI reports.

use candle_core::{D, Device, Tensor};

use super::data::IGNORE;
use super::ops::log_softmax_last_dim;
use super::{TensorContext, TrainError};

/// Loss (a scalar tensor in the graph) and accuracy counts of one batch.
pub struct LossOutput {
    /// Mean negative log-likelihood of the labelled next tokens.
    pub loss: Tensor,
    /// Labelled positions whose arg-max prediction was right.
    pub correct: usize,
    /// Labelled positions.
    pub count: usize,
}

/// Position `i` predicts label `i + 1`; positions labelled [`IGNORE`] do not count. `logits` may
/// be in any float dtype: log-probabilities are computed in f32 (keeping only them for the
/// backward pass, see [`log_softmax_last_dim`]).
pub fn causal_lm_loss(logits: &Tensor, labels: &[Vec<i64>]) -> Result<LossOutput, TrainError> {
    let (b, t, vocab) = logits.dims3().ctx("loss input")?;
    let mut targets = vec![0u32; b * t];
    let mut weights = vec![0f32; b * t];
    let mut count = 0usize;
    for (bi, row) in labels.iter().enumerate().take(b) {
        for i in 0..t.saturating_sub(1) {
            let label = row.get(i + 1).copied().unwrap_or(IGNORE);
            if label != IGNORE {
                targets[bi * t + i] = label as u32;
                weights[bi * t + i] = 1.0;
                count += 1;
            }
        }
    }
    if count == 0 {
        return Err(TrainError::Invalid("a batch has no labelled tokens".into()));
    }
    let device: &Device = logits.device();
    (|| {
        let log_probs = log_softmax_last_dim(&logits.reshape((b * t, vocab))?)?;
        let target = Tensor::from_vec(targets.clone(), (b * t, 1), device)?;
        let weight = Tensor::from_vec(weights.clone(), (b * t, 1), device)?;
        let picked = log_probs.gather(&target, 1)?.mul(&weight)?;
        let loss = (picked.sum_all()? / count as f64)?.neg()?;
        let predicted: Vec<u32> = log_probs.detach().argmax(D::Minus1)?.to_vec1()?;
        let correct = predicted
            .iter()
            .zip(targets.iter().zip(&weights))
            .filter(|(p, (t, w))| **w > 0.0 && p == t)
            .count();
        Ok(LossOutput {
            loss,
            correct,
            count,
        })
    })()
    .ctx("computing the loss")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_give_log_vocab_loss_and_padding_is_ignored() {
        let logits = Tensor::zeros((2, 3, 5), candle_core::DType::F32, &Device::Cpu).unwrap();
        let labels = vec![vec![IGNORE, 1, 2], vec![IGNORE, 3, IGNORE]];
        let out = causal_lm_loss(&logits, &labels).unwrap();
        assert_eq!(out.count, 3);
        let loss = out.loss.to_scalar::<f32>().unwrap();
        assert!((loss - 5f32.ln()).abs() < 1e-6);
    }
}
