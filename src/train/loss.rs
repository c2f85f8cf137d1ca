//! Causal-LM cross-entropy over labelled positions (Hugging Face's shifted mean), and the mean
//! token accuracy OpenAI reports.

use candle_core::{D, Device, Tensor};

use super::data::IGNORE;
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

/// Position `i` predicts label `i + 1`; positions labelled [`IGNORE`] do not count.
pub fn causal_lm_loss(logits: &Tensor, labels: &[Vec<i64>]) -> Result<LossOutput, TrainError> {
    let (b, t, vocab) = logits.dims3().ctx("loss input")?;
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (bi, row) in labels.iter().enumerate().take(b) {
        for i in 0..t.saturating_sub(1) {
            let label = row.get(i + 1).copied().unwrap_or(IGNORE);
            if label != IGNORE {
                rows.push((bi * t + i) as u32);
                targets.push(label as u32);
            }
        }
    }
    let count = rows.len();
    if count == 0 {
        return Err(TrainError::Invalid("a batch has no labelled tokens".into()));
    }
    let device: &Device = logits.device();
    (|| {
        let rows = Tensor::from_vec(rows, count, device)?;
        let picked = logits.reshape((b * t, vocab))?.index_select(&rows, 0)?;
        let log_probs = candle_nn::ops::log_softmax(&picked, D::Minus1)?;
        let target = Tensor::from_vec(targets.clone(), (count, 1), device)?;
        let nll = log_probs.gather(&target, 1)?.neg()?;
        let loss = nll.mean_all()?;
        let predicted: Vec<u32> = picked.detach().argmax(D::Minus1)?.to_vec1()?;
        let correct = predicted
            .iter()
            .zip(&targets)
            .filter(|(p, t)| p == t)
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
