//! The pair losses of preference tuning on sequence log-probabilities, with their derivatives:
//! DPO's sigmoid loss, IPO and SimPO (TRL's and LLaMA-Factory's definitions), plus the optional
//! SFT term on the chosen answer (`pref_ftx`).

use crate::domain::preference::{PrefLoss, PreferenceSettings};

/// A sequence's summed log-probability over its answer tokens, and how many there are.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeqLogp {
    /// Σ log p(token) over the answer.
    pub logp: f64,
    /// Answer tokens.
    pub tokens: usize,
}

impl SeqLogp {
    fn mean(self) -> f64 {
        self.logp / self.tokens.max(1) as f64
    }
}

/// One pair's loss, the loss's derivatives with respect to the policy's two summed
/// log-probabilities, and the implicit rewards TRL reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PairLoss {
    /// The loss.
    pub loss: f64,
    /// ∂loss/∂(chosen Σ log p).
    pub d_chosen: f64,
    /// ∂loss/∂(rejected Σ log p).
    pub d_rejected: f64,
    /// `rewards/chosen`.
    pub reward_chosen: f64,
    /// `rewards/rejected`.
    pub reward_rejected: f64,
}

fn sigmoid(x: f64) -> f64 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

/// `-log σ(z)`, stable for large |z|.
fn neg_log_sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        (-z).exp().ln_1p()
    } else {
        -z + z.exp().ln_1p()
    }
}

/// The loss of one pair: policy log-probabilities `chosen` / `rejected`, the reference's
/// `ref_chosen` / `ref_rejected` (summed the same way; unused by SimPO).
pub fn pair_loss(
    s: &PreferenceSettings,
    chosen: SeqLogp,
    rejected: SeqLogp,
    ref_chosen: f64,
    ref_rejected: f64,
) -> PairLoss {
    let beta = s.beta;
    let (nc, nr) = (chosen.tokens.max(1) as f64, rejected.tokens.max(1) as f64);
    let mut out = match s.pref_loss {
        PrefLoss::Sigmoid => {
            let (rc, rr) = (
                beta * (chosen.logp - ref_chosen),
                beta * (rejected.logp - ref_rejected),
            );
            let z = rc - rr;
            let dz = -sigmoid(-z);
            PairLoss {
                loss: neg_log_sigmoid(z),
                d_chosen: beta * dz,
                d_rejected: -beta * dz,
                reward_chosen: rc,
                reward_rejected: rr,
            }
        }
        PrefLoss::Ipo => {
            // TRL's IPO averages log-probabilities over the answer's tokens.
            let (c, r) = (
                chosen.mean() - ref_chosen / nc,
                rejected.mean() - ref_rejected / nr,
            );
            let h = c - r - 1.0 / (2.0 * beta);
            PairLoss {
                loss: h * h,
                d_chosen: 2.0 * h / nc,
                d_rejected: -2.0 * h / nr,
                reward_chosen: beta * c,
                reward_rejected: beta * r,
            }
        }
        PrefLoss::Simpo => {
            let (c, r) = (beta * chosen.mean(), beta * rejected.mean());
            let z = c - r - s.simpo_gamma;
            let dz = -sigmoid(-z);
            PairLoss {
                loss: neg_log_sigmoid(z),
                d_chosen: beta * dz / nc,
                d_rejected: -beta * dz / nr,
                reward_chosen: c,
                reward_rejected: r,
            }
        }
    };
    if s.pref_ftx > 0.0 {
        // LLaMA-Factory's `pref_ftx`: the chosen answer's mean negative log-likelihood.
        out.loss += s.pref_ftx * -chosen.mean();
        out.d_chosen += -s.pref_ftx / nc;
    }
    out
}

/// Means over the pairs of a step or of the validation set, under TRL's names.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct PairStats {
    /// Mean loss.
    pub loss: f64,
    /// `rewards/chosen`.
    pub chosen: f64,
    /// `rewards/rejected`.
    pub rejected: f64,
    /// `rewards/accuracies`: pairs whose chosen reward is higher.
    pub accuracy: f64,
    /// `rewards/margins`.
    pub margin: f64,
    /// Pairs counted.
    pub pairs: usize,
}

impl PairStats {
    /// Add one pair.
    pub fn add(&mut self, p: &PairLoss) {
        let n = self.pairs as f64;
        let mix = |old: f64, new: f64| (old * n + new) / (n + 1.0);
        self.loss = mix(self.loss, p.loss);
        self.chosen = mix(self.chosen, p.reward_chosen);
        self.rejected = mix(self.rejected, p.reward_rejected);
        let won = if p.reward_chosen > p.reward_rejected {
            1.0
        } else {
            0.0
        };
        self.accuracy = mix(self.accuracy, won);
        self.margin = mix(self.margin, p.reward_chosen - p.reward_rejected);
        self.pairs += 1;
    }

    /// Combine with another set of pairs.
    pub fn merge(&mut self, o: &PairStats) {
        let (a, b) = (self.pairs as f64, o.pairs as f64);
        if a + b == 0.0 {
            return;
        }
        let mix = |x: f64, y: f64| (x * a + y * b) / (a + b);
        *self = PairStats {
            loss: mix(self.loss, o.loss),
            chosen: mix(self.chosen, o.chosen),
            rejected: mix(self.rejected, o.rejected),
            accuracy: mix(self.accuracy, o.accuracy),
            margin: mix(self.margin, o.margin),
            pairs: self.pairs + o.pairs,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(pref_loss: PrefLoss) -> PreferenceSettings {
        PreferenceSettings {
            pref_loss,
            ..PreferenceSettings::default()
        }
    }

    /// Central differences of the loss against the analytic derivatives.
    #[test]
    fn derivatives_match_finite_differences_for_every_loss() {
        for kind in [PrefLoss::Sigmoid, PrefLoss::Ipo, PrefLoss::Simpo] {
            let mut s = settings(kind);
            s.pref_ftx = 0.3;
            let (c, r) = (
                SeqLogp {
                    logp: -12.0,
                    tokens: 6,
                },
                SeqLogp {
                    logp: -20.0,
                    tokens: 9,
                },
            );
            let p = pair_loss(&s, c, r, -14.0, -18.0);
            let eps = 1e-5;
            let f = |dc: f64, dr: f64| {
                pair_loss(
                    &s,
                    SeqLogp {
                        logp: c.logp + dc,
                        ..c
                    },
                    SeqLogp {
                        logp: r.logp + dr,
                        ..r
                    },
                    -14.0,
                    -18.0,
                )
                .loss
            };
            let num_c = (f(eps, 0.0) - f(-eps, 0.0)) / (2.0 * eps);
            let num_r = (f(0.0, eps) - f(0.0, -eps)) / (2.0 * eps);
            assert!(
                (num_c - p.d_chosen).abs() < 1e-6,
                "{kind:?}: {num_c} vs {}",
                p.d_chosen
            );
            assert!(
                (num_r - p.d_rejected).abs() < 1e-6,
                "{kind:?}: {num_r} vs {}",
                p.d_rejected
            );
        }
    }

    #[test]
    fn dpo_at_the_reference_is_log_two_and_rewards_are_zero() {
        let s = settings(PrefLoss::Sigmoid);
        let x = SeqLogp {
            logp: -5.0,
            tokens: 3,
        };
        let p = pair_loss(&s, x, x, -5.0, -5.0);
        assert!((p.loss - std::f64::consts::LN_2).abs() < 1e-12);
        assert_eq!((p.reward_chosen, p.reward_rejected), (0.0, 0.0));
        // Far apart, the loss stays finite.
        let far = pair_loss(
            &s,
            SeqLogp {
                logp: -1e4,
                tokens: 3,
            },
            x,
            0.0,
            -5.0,
        );
        assert!(far.loss.is_finite() && far.loss > 900.0);
    }

    #[test]
    fn stats_average_and_merge() {
        let s = settings(PrefLoss::Sigmoid);
        let a = pair_loss(
            &s,
            SeqLogp {
                logp: -1.0,
                tokens: 1,
            },
            SeqLogp {
                logp: -3.0,
                tokens: 1,
            },
            -2.0,
            -2.0,
        );
        let b = pair_loss(
            &s,
            SeqLogp {
                logp: -3.0,
                tokens: 1,
            },
            SeqLogp {
                logp: -1.0,
                tokens: 1,
            },
            -2.0,
            -2.0,
        );
        let (mut x, mut y) = (PairStats::default(), PairStats::default());
        x.add(&a);
        y.add(&b);
        x.merge(&y);
        assert_eq!(x.pairs, 2);
        assert!((x.accuracy - 0.5).abs() < 1e-12);
        assert!(x.margin.abs() < 1e-12);
    }
}
