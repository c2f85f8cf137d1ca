//! Choosing one answer among the members' answers.

use super::Strategy;
use crate::domain::scores::Scores;

/// One member's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// The text (content, or the tool calls as JSON).
    pub text: String,
    /// Mean log-probability of its tokens (`None` for an answer of no tokens).
    pub mean_logprob: Option<f64>,
}

/// The answer chosen and each answer's score under the strategy.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Index of the winning answer.
    pub winner: usize,
    /// Per answer: its votes (`vote`), mean log-probability (`best_logprob`) or mean ROUGE-L F1
    /// to the others (`consensus`).
    pub scores: Vec<f64>,
}

/// The form answers are compared in: lower case, punctuation dropped, whitespace collapsed.
pub fn normalise(text: &str) -> String {
    let kept: String = text
        .chars()
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .flat_map(char::to_lowercase)
        .collect();
    kept.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn confidence(a: &Answer) -> f64 {
    a.mean_logprob.unwrap_or(f64::NEG_INFINITY)
}

/// The index of the highest `key` among `candidates`; the earliest on equal keys.
fn best_by(candidates: impl Iterator<Item = usize>, key: impl Fn(usize) -> f64) -> usize {
    let mut best: Option<(usize, f64)> = None;
    for i in candidates {
        let k = key(i);
        if best.is_none_or(|(_, b)| k > b) {
            best = Some((i, k));
        }
    }
    best.map(|(i, _)| i).unwrap_or(0)
}

/// Majority of normalised answers; among tied majorities (and within the winning group) the
/// answer of the highest mean log-probability wins.
pub fn vote(answers: &[Answer]) -> Choice {
    let keys: Vec<String> = answers.iter().map(|a| normalise(&a.text)).collect();
    let votes: Vec<f64> = keys
        .iter()
        .map(|k| keys.iter().filter(|o| *o == k).count() as f64)
        .collect();
    let most = votes.iter().copied().fold(0.0, f64::max);
    let winner = best_by((0..answers.len()).filter(|&i| votes[i] == most), |i| {
        confidence(&answers[i])
    });
    Choice {
        winner,
        scores: votes,
    }
}

/// The answer of the highest mean log-probability.
pub fn best_logprob(answers: &[Answer]) -> Choice {
    let scores: Vec<f64> = answers.iter().map(confidence).collect();
    Choice {
        winner: best_by(0..answers.len(), |i| scores[i]),
        scores,
    }
}

/// The answer of the highest mean ROUGE-L F1 against the others (the most central one); ties go
/// to the highest mean log-probability.
pub fn consensus(answers: &[Answer]) -> Choice {
    let n = answers.len();
    let scores: Vec<f64> = (0..n)
        .map(|i| {
            let others = (0..n).filter(|&j| j != i);
            let total: f64 = others
                .map(|j| Scores::of(&answers[i].text, &answers[j].text).rouge_l)
                .sum();
            total / (n.saturating_sub(1).max(1)) as f64
        })
        .collect();
    let most = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    Choice {
        winner: best_by((0..n).filter(|&i| scores[i] >= most - 1e-12), |i| {
            confidence(&answers[i])
        }),
        scores,
    }
}

/// Choose by `strategy` (`layered` is decided by its threshold, not here: it falls to `vote`).
pub fn choose(strategy: Strategy, answers: &[Answer]) -> Choice {
    match strategy {
        Strategy::BestLogprob => best_logprob(answers),
        Strategy::Consensus => consensus(answers),
        Strategy::Vote | Strategy::Layered => vote(answers),
    }
}

/// Whether a layered ensemble's member is sure enough to answer.
pub fn confident(answer: &Answer, threshold: f64) -> bool {
    answer.mean_logprob.is_some_and(|m| m >= threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(text: &str, lp: f64) -> Answer {
        Answer {
            text: text.to_owned(),
            mean_logprob: Some(lp),
        }
    }

    #[test]
    fn normalising_ignores_case_punctuation_and_spacing() {
        assert_eq!(normalise("  Drink WATER,\n often!  "), "drink water often");
        assert_eq!(normalise("Ça va?"), "ça va");
        assert_eq!(normalise("..."), "");
    }

    #[test]
    fn the_majority_wins_even_against_a_surer_minority() {
        let answers = [
            a("Paris.", -0.9),
            a("Lyon", -0.1),
            a("paris", -0.5),
            a(" PARIS ", -0.7),
        ];
        let c = vote(&answers);
        assert_eq!(c.scores, vec![3.0, 1.0, 3.0, 3.0]);
        // Within the winning group the surest answer is returned.
        assert_eq!(c.winner, 2);
    }

    #[test]
    fn a_tied_vote_goes_to_the_highest_mean_logprob() {
        let answers = [
            a("yes", -0.8),
            a("no", -0.2),
            a("Yes!", -0.6),
            a("No", -0.9),
        ];
        let c = vote(&answers);
        assert_eq!(c.scores, vec![2.0, 2.0, 2.0, 2.0]);
        assert_eq!(c.winner, 1);
        // No agreement at all: the surest answer.
        let c = vote(&[a("x", -2.0), a("y", -1.0), a("z", -3.0)]);
        assert_eq!(c.winner, 1);
    }

    #[test]
    fn an_empty_answer_is_the_least_confident() {
        let empty = Answer {
            text: String::new(),
            mean_logprob: None,
        };
        let c = best_logprob(&[empty.clone(), a("something", -4.0)]);
        assert_eq!(c.winner, 1);
        assert!(!confident(&empty, -100.0));
        assert!(confident(&a("x", -0.5), -0.5));
        assert!(!confident(&a("x", -0.51), -0.5));
    }

    #[test]
    fn consensus_picks_the_most_central_answer() {
        let answers = [
            a("drink water and rest in the shade", -1.0),
            a("drink water and rest", -1.5),
            a("see a mechanic about the brakes", -0.1),
            a("rest and drink water in the shade", -1.2),
        ];
        let c = consensus(&answers);
        assert_eq!(c.winner, 0, "{:?}", c.scores);
        assert!(c.scores[2] < 0.2, "{:?}", c.scores);
        assert_eq!(choose(Strategy::Consensus, &answers), c);
    }

    #[test]
    fn choose_dispatches_by_strategy() {
        let answers = [a("a", -0.1), a("b", -0.5), a("b", -0.6)];
        assert_eq!(choose(Strategy::Vote, &answers).winner, 1);
        assert_eq!(choose(Strategy::BestLogprob, &answers).winner, 0);
    }
}
