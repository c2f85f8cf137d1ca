//! Scoring whole sequences with the language-model head: each packed sequence's summed
//! log-probability over its labelled (answer) tokens, and the gradient of any function of those
//! sums handed to the graph as a surrogate objective — a few hundred labelled rows at a time, so
//! the `[tokens, vocab]` logits never exist at once. Plain tensor ops: CPU and CUDA alike.

use candle_core::{D, DType, Tensor};

use super::loss::SeqLogp;
use crate::train::data::IGNORE;
use crate::train::{TensorContext, TrainError};

/// Labelled rows scored at a time.
const CHUNK_ROWS: usize = 256;

/// Each labelled position of a packed row: `(row predicting it, its token, its sequence)`.
pub fn targets(labels: &[i64], segments: &[(usize, usize)]) -> Vec<(u32, u32, usize)> {
    let mut out = Vec::new();
    for (seq, (start, len)) in segments.iter().enumerate() {
        for pos in start + 1..start + len {
            if let Some(&label) = labels.get(pos)
                && label != IGNORE
            {
                out.push(((pos - 1) as u32, label as u32, seq));
            }
        }
    }
    out
}

/// Per-sequence scores of a packed row.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    /// One per segment.
    pub seqs: Vec<SeqLogp>,
    /// Labelled tokens whose arg-max prediction was right.
    pub correct: usize,
    /// Labelled tokens.
    pub count: usize,
}

/// One chunk's logits in f32 and their log-softmax.
fn chunk_log_softmax(h: &Tensor, head_t: &Tensor, rows: &[u32]) -> candle_core::Result<Tensor> {
    let idx = Tensor::from_slice(rows, rows.len(), h.device())?;
    let logits = h
        .index_select(&idx, 0)?
        .matmul(head_t)?
        .to_dtype(DType::F32)?;
    candle_nn::ops::log_softmax(&logits, D::Minus1)
}

/// Summed log-probabilities of every segment of `normed` `[1, t, hidden]` (after the final norm)
/// under `lm_head` `[vocab, hidden]`, for `targets` over `n_seqs` segments.
pub fn score(
    normed: &Tensor,
    lm_head: &Tensor,
    targets: &[(u32, u32, usize)],
    n_seqs: usize,
) -> Result<Scores, TrainError> {
    let mut seqs = vec![
        SeqLogp {
            logp: 0.0,
            tokens: 0
        };
        n_seqs
    ];
    let mut correct = 0;
    (|| {
        let (_, t, hidden) = normed.dims3()?;
        let h = normed.detach().reshape((t, hidden))?;
        let head_t = lm_head.t()?;
        for chunk in targets.chunks(CHUNK_ROWS) {
            let rows: Vec<u32> = chunk.iter().map(|c| c.0).collect();
            let lsm = chunk_log_softmax(&h, &head_t, &rows)?;
            let ids: Vec<u32> = chunk.iter().map(|c| c.1).collect();
            let ids_t = Tensor::from_slice(&ids, (ids.len(), 1), h.device())?;
            let picked: Vec<f32> = lsm.gather(&ids_t, 1)?.flatten_all()?.to_vec1()?;
            let best: Vec<u32> = lsm.argmax(D::Minus1)?.to_vec1()?;
            for ((c, lp), b) in chunk.iter().zip(picked).zip(best) {
                seqs[c.2].logp += f64::from(lp);
                seqs[c.2].tokens += 1;
                correct += usize::from(b == c.1);
            }
        }
        Ok::<_, candle_core::Error>(())
    })()
    .ctx("scoring sequences")?;
    Ok(Scores {
        seqs,
        correct,
        count: targets.len(),
    })
}

/// A scalar whose gradient with respect to `normed` is that of `Σ_s coeff[s] · logp_s` (the
/// chain rule through the head: `coeff[s] · (onehot − softmax) · lm_head` on each labelled row of
/// segment `s`). Its value is meaningless; only its backward pass is used.
pub fn objective(
    normed: &Tensor,
    lm_head: &Tensor,
    targets: &[(u32, u32, usize)],
    coeff: &[f64],
) -> Result<Tensor, TrainError> {
    (|| {
        let (_, t, hidden) = normed.dims3()?;
        let h = normed.detach().reshape((t, hidden))?;
        let head_t = lm_head.t()?;
        let device = h.device();
        let mut grad = Tensor::zeros((t, hidden), DType::F32, device)?;
        for chunk in targets.chunks(CHUNK_ROWS) {
            let rows: Vec<u32> = chunk.iter().map(|c| c.0).collect();
            let n = rows.len();
            let probs = chunk_log_softmax(&h, &head_t, &rows)?.exp()?;
            let ids: Vec<u32> = chunk.iter().map(|c| c.1).collect();
            let ids_t = Tensor::from_slice(&ids, (n, 1), device)?;
            let ones = Tensor::ones((n, 1), DType::F32, device)?;
            let onehot = probs.zeros_like()?.scatter_add(&ids_t, &ones, 1)?;
            let w: Vec<f32> = chunk.iter().map(|c| coeff[c.2] as f32).collect();
            let w = Tensor::from_slice(&w, (n, 1), device)?;
            let dlogits = (onehot - probs)?.broadcast_mul(&w)?;
            let dh = dlogits.to_dtype(lm_head.dtype())?.matmul(lm_head)?;
            let idx = Tensor::from_slice(&rows, n, device)?;
            grad = grad.index_add(&idx, &dh.to_dtype(DType::F32)?, 0)?;
        }
        let grad = grad.reshape((1, t, hidden))?.to_dtype(normed.dtype())?;
        (normed * grad)?.sum_all()
    })()
    .ctx("the preference objective")
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    /// The surrogate's gradient equals autograd's through the full log-softmax.
    #[test]
    fn the_objective_has_the_gradient_of_the_weighted_log_probabilities() {
        let dev = Device::Cpu;
        let (t, hidden, vocab) = (9, 8, 40);
        let h = Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, t, hidden), &dev).unwrap()).unwrap();
        let head = Tensor::randn(0f32, 0.5, (vocab, hidden), &dev).unwrap();
        let labels: Vec<i64> = vec![IGNORE, 3, 5, IGNORE, IGNORE, 7, 9, 11, IGNORE];
        let segments = [(0, 4), (4, 5)];
        let tg = targets(&labels, &segments);
        assert_eq!(
            tg.iter().map(|c| c.2).collect::<Vec<_>>(),
            vec![0, 0, 1, 1, 1]
        );
        let coeff = [0.7, -1.3];
        let s = score(h.as_tensor(), &head, &tg, 2).unwrap();
        assert_eq!((s.seqs[0].tokens, s.seqs[1].tokens), (2, 3));

        // Reference: autograd of Σ coeff[s] log p over the full logits.
        let logits = h
            .as_tensor()
            .reshape((t, hidden))
            .unwrap()
            .matmul(&head.t().unwrap())
            .unwrap();
        let lsm = candle_nn::ops::log_softmax(&logits, D::Minus1).unwrap();
        let mut total = Tensor::new(0f32, &dev).unwrap();
        let mut sums = [0f64; 2];
        for (row, label, seq) in &tg {
            let v = lsm
                .get(*row as usize)
                .unwrap()
                .get(*label as usize)
                .unwrap();
            sums[*seq] += f64::from(v.to_scalar::<f32>().unwrap());
            total = (total + (v * coeff[*seq]).unwrap()).unwrap();
        }
        for (a, b) in s.seqs.iter().zip(sums) {
            assert!((a.logp - b).abs() < 1e-4, "{} vs {b}", a.logp);
        }
        let want = total
            .backward()
            .unwrap()
            .get(h.as_tensor())
            .unwrap()
            .clone();
        let got = objective(h.as_tensor(), &head, &tg, &coeff)
            .unwrap()
            .backward()
            .unwrap()
            .get(h.as_tensor())
            .unwrap()
            .clone();
        let diff = crate::train::ops::testing::diff(&want, &got);
        assert!(diff < 1e-5, "gradients differ by {diff}");
    }
}
