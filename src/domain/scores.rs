//! Text-overlap scores of a generated answer against its reference, as LLaMA-Factory's `predict`
//! stage reports them: ROUGE-1, ROUGE-2 and ROUGE-L F1 (Lin, 2004) and sentence BLEU-4
//! (Papineni et al., 2002) with Chen & Cherry's smoothing 3 (the NIST geometric sequence),
//! all in `[0, 1]`.
//!
//! Text is split into lower-cased words (runs of letters and digits), with every other visible
//! character — punctuation, and each CJK character — a token of its own, so that languages
//! without spaces are scored too.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// The four scores of one answer (or their means over a set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Scores {
    /// Unigram-overlap F1.
    pub rouge1: f64,
    /// Bigram-overlap F1.
    pub rouge2: f64,
    /// Longest-common-subsequence F1.
    #[serde(rename = "rougeL")]
    pub rouge_l: f64,
    /// Sentence BLEU with up to 4-grams.
    pub bleu4: f64,
}

impl Scores {
    /// The scores of `candidate` against `reference`.
    pub fn of(candidate: &str, reference: &str) -> Self {
        let c = tokens(candidate);
        let r = tokens(reference);
        Self {
            rouge1: rouge_n(&c, &r, 1),
            rouge2: rouge_n(&c, &r, 2),
            rouge_l: rouge_l(&c, &r),
            bleu4: bleu4(&c, &r),
        }
    }

    /// The mean of each score over `all` (zeros when empty).
    pub fn mean(all: &[Scores]) -> Self {
        let n = all.len().max(1) as f64;
        let sum = |f: fn(&Scores) -> f64| all.iter().map(f).sum::<f64>() / n;
        Self {
            rouge1: sum(|s| s.rouge1),
            rouge2: sum(|s| s.rouge2),
            rouge_l: sum(|s| s.rouge_l),
            bleu4: sum(|s| s.bleu4),
        }
    }
}

fn is_cjk(c: char) -> bool {
    matches!(c as u32,
        0x3040..=0x30ff | 0x3400..=0x4dbf | 0x4e00..=0x9fff | 0xac00..=0xd7af | 0xf900..=0xfaff)
}

/// Lower-cased words, and every other visible character on its own.
pub fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut word = String::new();
    for c in text.chars() {
        if c.is_alphanumeric() && !is_cjk(c) {
            word.extend(c.to_lowercase());
            continue;
        }
        if !word.is_empty() {
            out.push(std::mem::take(&mut word));
        }
        if !c.is_whitespace() {
            out.push(c.to_lowercase().collect());
        }
    }
    if !word.is_empty() {
        out.push(word);
    }
    out
}

fn ngrams(tokens: &[String], n: usize) -> HashMap<&[String], usize> {
    let mut counts = HashMap::new();
    for g in tokens.windows(n) {
        *counts.entry(g).or_insert(0) += 1;
    }
    counts
}

/// Clipped n-gram matches of `c` against `r`, and the n-gram count of `c`.
fn matches(c: &[String], r: &[String], n: usize) -> (usize, usize) {
    let (cg, rg) = (ngrams(c, n), ngrams(r, n));
    let hits = cg
        .iter()
        .map(|(g, k)| (*k).min(rg.get(g).copied().unwrap_or(0)))
        .sum();
    (hits, c.len().saturating_sub(n - 1))
}

fn f1(hits: usize, candidate: usize, reference: usize) -> f64 {
    if hits == 0 {
        return 0.0;
    }
    let p = hits as f64 / candidate as f64;
    let r = hits as f64 / reference as f64;
    2.0 * p * r / (p + r)
}

fn rouge_n(c: &[String], r: &[String], n: usize) -> f64 {
    let (hits, c_count) = matches(c, r, n);
    f1(hits, c_count, r.len().saturating_sub(n - 1))
}

fn rouge_l(c: &[String], r: &[String]) -> f64 {
    // Longest common subsequence, one row of the table at a time.
    let mut prev = vec![0usize; r.len() + 1];
    for a in c {
        let mut row = vec![0usize; r.len() + 1];
        for (j, b) in r.iter().enumerate() {
            row[j + 1] = if a == b {
                prev[j] + 1
            } else {
                row[j].max(prev[j + 1])
            };
        }
        prev = row;
    }
    f1(prev[r.len()], c.len(), r.len())
}

fn bleu4(c: &[String], r: &[String]) -> f64 {
    if c.is_empty() || r.is_empty() {
        return 0.0;
    }
    // Smoothing 3: the k-th precision without any match counts as 1 / (2^k · its n-gram count).
    let mut k = 0;
    let mut log_sum = 0.0;
    for n in 1..=4 {
        let (hits, total) = matches(c, r, n);
        if total == 0 {
            // Shorter than n tokens: no evidence either way at this order (NLTK drops it too).
            return 0.0;
        }
        if hits == 0 && n == 1 {
            // Nothing in common at all (NLTK returns 0 here too, smoothing or not).
            return 0.0;
        }
        let p = if hits == 0 {
            k += 1;
            1.0 / (2f64.powi(k) * total as f64)
        } else {
            hits as f64 / total as f64
        };
        log_sum += p.ln() / 4.0;
    }
    let brevity = if c.len() >= r.len() {
        1.0
    } else {
        (1.0 - r.len() as f64 / c.len() as f64).exp()
    };
    brevity * log_sum.exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn identical_texts_score_one_and_disjoint_ones_zero() {
        let s = Scores::of("Drink water, and rest.", "drink water, and REST.");
        assert_eq!(
            s,
            Scores {
                rouge1: 1.0,
                rouge2: 1.0,
                rouge_l: 1.0,
                bleu4: 1.0
            }
        );
        let z = Scores::of("alpha beta gamma delta", "one two three four");
        assert_eq!(z, Scores::default());
        assert_eq!(Scores::of("", "something"), Scores::default());
    }

    #[test]
    fn rouge_counts_overlap_and_order() {
        // 4 of 6 candidate words, 4 of 5 reference words: F1 = 2·(2/3)(4/5)/(2/3+4/5) = 8/11.
        let s = Scores::of("the cat sat on a mat", "the cat was on mat");
        assert!(close(s.rouge1, 8.0 / 11.0), "{s:?}");
        // Bigrams: "the cat" only; 1 of 5 and 1 of 4.
        assert!(close(s.rouge2, 2.0 * 0.2 * 0.25 / 0.45), "{s:?}");
        // LCS "the cat on mat" = 4, as for unigrams here.
        assert!(close(s.rouge_l, 8.0 / 11.0), "{s:?}");
        // Order matters for ROUGE-L, not for ROUGE-1.
        let r = Scores::of("mat on cat the", "the cat on mat");
        assert!(close(r.rouge1, 1.0) && r.rouge_l < 0.5, "{r:?}");
    }

    #[test]
    fn bleu_matches_a_hand_computed_value() {
        // c = a b c d e (5), r = a b c d f g (6): p1 = 4/5, p2 = 3/4, p3 = 2/3, p4 = 1/2,
        // brevity exp(1 - 6/5).
        let b = Scores::of("a b c d e", "a b c d f g").bleu4;
        let expected = (1.0f64 - 6.0 / 5.0).exp() * (0.8f64 * 0.75 * (2.0 / 3.0) * 0.5).powf(0.25);
        assert!(close(b, expected), "{b} vs {expected}");
        // No 4-gram match: smoothed to 1/(2·2), not zero.
        let s = Scores::of("a b c x e", "a b c d e").bleu4;
        let expected = (0.8f64 * 0.5 * (1.0 / 3.0) * (1.0 / 4.0)).powf(0.25);
        assert!(close(s, expected), "{s} vs {expected}");
    }

    #[test]
    fn cjk_characters_and_punctuation_are_tokens_of_their_own() {
        assert_eq!(tokens("喝水。Rest!"), ["喝", "水", "。", "rest", "!"]);
        assert!(Scores::of("多喝水", "多喝热水").rouge1 > 0.8);
    }

    #[test]
    fn means_average_each_score() {
        let m = Scores::mean(&[Scores::of("a", "a"), Scores::default()]);
        assert!(close(m.rouge1, 0.5) && close(m.rouge_l, 0.5));
        assert_eq!(Scores::mean(&[]), Scores::default());
    }
}
