//! Causal-LM cross-entropy over labelled positions (Hugging Face's shifted mean), and the mean
//! token accuracy OpenAI reports: from full logits ([`causal_lm_loss`]), or — for training on the
//! CPU — straight from the last hidden states ([`chunked_lm_loss`]), which never holds the
//! `[tokens, vocab]` logits.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp1, D, DType, Device, Layout, Shape, Tensor, bail};
use rayon::prelude::*;

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

/// Next-token targets of a `[b, t]` batch: for each flattened position `i` that predicts a
/// labelled token, `(i, label of i + 1)`.
fn targets(labels: &[Vec<i64>], b: usize, t: usize) -> Result<Vec<(usize, u32)>, TrainError> {
    let mut out = Vec::new();
    for (bi, row) in labels.iter().enumerate().take(b) {
        for i in 0..t.saturating_sub(1) {
            let label = row.get(i + 1).copied().unwrap_or(IGNORE);
            if label != IGNORE {
                out.push((bi * t + i, label as u32));
            }
        }
    }
    if out.is_empty() {
        return Err(TrainError::Invalid("a batch has no labelled tokens".into()));
    }
    Ok(out)
}

/// Position `i` predicts label `i + 1`; positions labelled [`IGNORE`] do not count. `logits` may
/// be in any float dtype: log-probabilities are computed in f32 (keeping only them for the
/// backward pass, see [`log_softmax_last_dim`]).
pub fn causal_lm_loss(logits: &Tensor, labels: &[Vec<i64>]) -> Result<LossOutput, TrainError> {
    let (b, t, vocab) = logits.dims3().ctx("loss input")?;
    let picked = targets(labels, b, t)?;
    let count = picked.len();
    let mut target_ids = vec![0u32; b * t];
    let mut weights = vec![0f32; b * t];
    for (i, label) in &picked {
        target_ids[*i] = *label;
        weights[*i] = 1.0;
    }
    let device: &Device = logits.device();
    (|| {
        let log_probs = log_softmax_last_dim(&logits.reshape((b * t, vocab))?)?;
        let target = Tensor::from_vec(target_ids, (b * t, 1), device)?;
        let weight = Tensor::from_vec(weights, (b * t, 1), device)?;
        let chosen = log_probs.gather(&target, 1)?.mul(&weight)?;
        let loss = (chosen.sum_all()? / count as f64)?.neg()?;
        let predicted: Vec<u32> = log_probs.detach().argmax(D::Minus1)?.to_vec1()?;
        let correct = picked
            .iter()
            .filter(|(i, label)| predicted[*i] == *label)
            .count();
        Ok(LossOutput {
            loss,
            correct,
            count,
        })
    })()
    .ctx("computing the loss")
}

/// Rows of logits alive at a time in [`chunked_lm_loss`].
const CHUNK_ROWS: usize = 128;

/// [`causal_lm_loss`] of `hidden · lm_headᵀ` for `hidden` `[b, t, h]` (f32, on the CPU) and a
/// frozen `lm_head` `[vocab, h]`, computed without the full logits: only the labelled positions
/// get logits, [`CHUNK_ROWS`] at a time, and the gradient with respect to `hidden` is worked out
/// in the same pass (`(softmax − onehot) / count · lm_head`) and handed back by the backward pass.
/// Memory: one chunk of logits and one `hidden`-sized gradient instead of `[b·t, vocab]` logits,
/// their log-probabilities and their gradient.
pub fn chunked_lm_loss(
    hidden: &Tensor,
    lm_head: &Tensor,
    labels: &[Vec<i64>],
) -> Result<LossOutput, TrainError> {
    let (b, t, h) = hidden.dims3().ctx("loss input")?;
    let picked = targets(labels, b, t)?;
    let count = picked.len();
    (|| {
        let flat = hidden.detach().reshape((b * t, h))?;
        let rows: Vec<u32> = picked.iter().map(|(i, _)| *i as u32).collect();
        let rows = Tensor::from_vec(rows, count, hidden.device())?;
        let selected = flat.index_select(&rows, 0)?;
        let head_t = lm_head.t()?;
        let mut grads = Vec::with_capacity(count.div_ceil(CHUNK_ROWS));
        let (mut loss, mut correct) = (0f64, 0usize);
        for start in (0..count).step_by(CHUNK_ROWS) {
            let n = CHUNK_ROWS.min(count - start);
            let logits = selected.narrow(0, start, n)?.matmul(&head_t)?;
            let op = SoftmaxCrossEntropy {
                targets: picked[start..start + n].iter().map(|(_, l)| *l).collect(),
                scale: 1.0 / count as f32,
                stats: Mutex::new((0.0, 0)),
            };
            let dlogits = logits.apply_op1_no_bwd(&op)?;
            grads.push(dlogits.matmul(lm_head)?);
            let (l, c) = *op.stats.lock().unwrap_or_else(|e| e.into_inner());
            loss += l;
            correct += c;
        }
        let dselected = Tensor::cat(&grads, 0)?;
        let grad = flat
            .zeros_like()?
            .index_add(&rows, &dselected, 0)?
            .reshape((b, t, h))?;
        let loss = hidden.apply_op1(Precomputed {
            value: (loss / count as f64) as f32,
            grad,
        })?;
        Ok(LossOutput {
            loss,
            correct,
            count,
        })
    })()
    .ctx("computing the loss")
}

/// Per row of logits: the gradient `(softmax − onehot(target)) · scale` as output, and the summed
/// negative log-likelihood and arg-max hits in `stats`.
struct SoftmaxCrossEntropy {
    targets: Vec<u32>,
    scale: f32,
    stats: Mutex<(f64, usize)>,
}

impl CustomOp1 for SoftmaxCrossEntropy {
    fn name(&self) -> &'static str {
        "ferrotune-softmax-cross-entropy"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let (Some((start, end)), CpuStorage::F32(data)) = (l.contiguous_offsets(), s) else {
            bail!("softmax cross-entropy: contiguous f32 logits only")
        };
        let (n, vocab) = l.shape().dims2()?;
        let logits = &data[start..end];
        let mut out = vec![0f32; n * vocab];
        // Per-row results collected in order and summed on one thread: the same loss bit for bit
        // however the rows were split between threads.
        let rows: Vec<(f64, usize)> = out
            .par_chunks_mut(vocab)
            .zip(logits.par_chunks(vocab))
            .zip(self.targets.par_iter())
            .map(|((g, row), &target)| {
                let (mut best, mut max) = (0, f32::NEG_INFINITY);
                for (j, v) in row.iter().enumerate() {
                    if *v > max {
                        (best, max) = (j, *v);
                    }
                }
                let mut sum = 0f32;
                for (g, v) in g.iter_mut().zip(row) {
                    *g = (v - max).exp();
                    sum += *g;
                }
                let norm = self.scale / sum;
                g.iter_mut().for_each(|g| *g *= norm);
                let target = target as usize;
                g[target] -= self.scale;
                let nll = f64::from(max + sum.ln() - row[target]);
                (nll, usize::from(best == target))
            })
            .collect();
        let loss = rows.iter().map(|r| r.0).sum();
        let correct = rows.iter().map(|r| r.1).sum();
        *self.stats.lock().unwrap_or_else(|e| e.into_inner()) = (loss, correct);
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// A scalar whose value and gradient were computed up front: the backward pass scales `grad`.
struct Precomputed {
    value: f32,
    grad: Tensor,
}

impl CustomOp1 for Precomputed {
    fn name(&self) -> &'static str {
        "ferrotune-precomputed-loss"
    }

    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        Ok((CpuStorage::F32(vec![self.value]), Shape::from(())))
    }

    fn bwd(
        &self,
        _arg: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<Option<Tensor>> {
        Ok(Some(
            self.grad.broadcast_mul(&grad_res.to_dtype(DType::F32)?)?,
        ))
    }
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

    #[test]
    fn the_chunked_loss_equals_the_full_one_in_value_accuracy_and_gradient() {
        use candle_core::Var;
        // More labelled rows than one chunk; padding and prompt rows are left out.
        let (b, t, h, vocab) = (2, 90, 16, 300);
        let hidden =
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, t, h), &Device::Cpu).unwrap()).unwrap();
        let head = Tensor::randn(0f32, 1.0, (vocab, h), &Device::Cpu).unwrap();
        let labels: Vec<Vec<i64>> = (0..b)
            .map(|r| {
                (0..t)
                    .map(|i| {
                        if i < 5 + r * 20 {
                            IGNORE
                        } else {
                            ((i * 7 + r) % vocab) as i64
                        }
                    })
                    .collect()
            })
            .collect();
        let full = causal_lm_loss(
            &hidden
                .as_tensor()
                .broadcast_matmul(&head.t().unwrap())
                .unwrap(),
            &labels,
        )
        .unwrap();
        let chunked = chunked_lm_loss(hidden.as_tensor(), &head, &labels).unwrap();
        assert_eq!((chunked.count, chunked.correct), (full.count, full.correct));
        let value = |l: &Tensor| l.to_scalar::<f32>().unwrap();
        assert!((value(&chunked.loss) - value(&full.loss)).abs() < 1e-4);
        let grad = |l: &Tensor| {
            (l * 3.0)
                .unwrap()
                .backward()
                .unwrap()
                .get(hidden.as_tensor())
                .unwrap()
                .clone()
        };
        let gap = crate::train::ops::testing::diff(&grad(&chunked.loss), &grad(&full.loss));
        assert!(gap < 1e-5, "gradients differ by {gap}");
    }
}
