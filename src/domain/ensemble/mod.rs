//! Ensembles: several fine-tuned models of one base answering under one model name, and layered
//! inference (a domain model that hands low-confidence questions to a fallback).
//!
//! [`EnsembleSpec::parse`] checks a `POST /v1/ensembles` body's shape; whether the members exist
//! (and share a base) is the API's check against the store. [`choose`] picks the answer.

use crate::domain::DomainError;

pub mod choose;

/// Most members an ensemble may have (and most adapters a job may train as one).
pub const MAX_MEMBERS: usize = 8;

/// How an ensemble turns its members' answers into one.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// The majority of normalised answers; ties go to the highest mean token log-probability.
    Vote,
    /// The answer with the highest mean token log-probability.
    BestLogprob,
    /// The answer with the highest mean ROUGE-L F1 against the other answers.
    Consensus,
    /// The one member answers unless its mean token log-probability is below the threshold;
    /// then the fallback answers.
    Layered,
}

impl Strategy {
    /// The name stored and shown.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Vote => "vote",
            Self::BestLogprob => "best_logprob",
            Self::Consensus => "consensus",
            Self::Layered => "layered",
        }
    }

    /// The strategy of a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Vote,
            Self::BestLogprob,
            Self::Consensus,
            Self::Layered,
        ]
        .into_iter()
        .find(|k| k.as_str() == s)
    }
}

/// A checked ensemble definition.
#[derive(Debug, Clone, PartialEq)]
pub struct EnsembleSpec {
    /// The model name clients will use.
    pub name: String,
    /// Model ids (the base, fine-tuned models or checkpoints), in order.
    pub members: Vec<String>,
    /// How the answer is chosen.
    pub strategy: Strategy,
    /// With `layered`: the model that answers when the member is unsure.
    pub fallback: Option<String>,
    /// With `layered`: the lowest mean token log-probability (≤ 0) the member's answer may have.
    pub threshold: Option<f64>,
}

fn bad(param: impl Into<String>, message: impl Into<String>) -> DomainError {
    DomainError::invalid(param, message)
}

/// Whether `name` may name an ensemble: 1–128 letters, digits, `.`, `_`, `-`, `/`, `:`, not
/// starting with `ft:` (fine-tuned models' names).
pub fn valid_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/:".contains(c))
        && !name.starts_with("ft:")
}

impl EnsembleSpec {
    /// Check a definition's shape; `base` is the served base model's name.
    pub fn parse(
        name: String,
        members: Vec<String>,
        strategy: Option<Strategy>,
        fallback: Option<String>,
        threshold: Option<f64>,
        base: &str,
    ) -> Result<Self, DomainError> {
        if !valid_name(&name) || name == base {
            return Err(bad(
                "name",
                "name must be 1–128 characters of letters, digits, '.', '_', '-', '/', ':', not \
                 start with 'ft:' and not be the base model's name",
            ));
        }
        let strategy = strategy.unwrap_or(Strategy::Vote);
        for (i, m) in members.iter().enumerate() {
            if m.is_empty() || m.contains('\0') {
                return Err(bad(format!("members[{i}]"), "a member must name a model"));
            }
            if members[..i].contains(m) {
                return Err(bad(
                    format!("members[{i}]"),
                    format!("'{m}' is listed twice"),
                ));
            }
        }
        let (least, most) = match strategy {
            Strategy::Layered => (1, 1),
            _ => (2, MAX_MEMBERS),
        };
        if !(least..=most).contains(&members.len()) {
            let want = if least == most {
                format!("exactly {least} member (the domain model)")
            } else {
                format!("{least} to {most} members")
            };
            return Err(bad(
                "members",
                format!("strategy '{}' takes {want}", strategy.as_str()),
            ));
        }
        if strategy == Strategy::Layered {
            let fallback = fallback.as_deref().unwrap_or("");
            if fallback.is_empty() || fallback.contains('\0') {
                return Err(bad(
                    "fallback",
                    "strategy 'layered' needs a fallback model (the base, or another model)",
                ));
            }
            if members.iter().any(|m| m == fallback) {
                return Err(bad("fallback", "the fallback must differ from the member"));
            }
            match threshold {
                Some(t) if t.is_finite() && (-100.0..=0.0).contains(&t) => {}
                _ => {
                    return Err(bad(
                        "threshold",
                        "strategy 'layered' needs a threshold: the lowest mean token \
                         log-probability (between -100 and 0) at which the member still answers",
                    ));
                }
            }
        } else if fallback.is_some() || threshold.is_some() {
            let param = if fallback.is_some() {
                "fallback"
            } else {
                "threshold"
            };
            return Err(bad(
                param,
                format!("{param} applies to strategy 'layered' only"),
            ));
        }
        Ok(Self {
            name,
            members,
            strategy,
            fallback,
            threshold,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        members: &[&str],
        strategy: Option<Strategy>,
        fallback: Option<&str>,
        threshold: Option<f64>,
    ) -> Result<EnsembleSpec, DomainError> {
        EnsembleSpec::parse(
            "team".into(),
            members.iter().map(|m| (*m).to_owned()).collect(),
            strategy,
            fallback.map(str::to_owned),
            threshold,
            "base",
        )
    }

    fn param(r: Result<EnsembleSpec, DomainError>) -> String {
        r.unwrap_err().param.unwrap()
    }

    #[test]
    fn a_vote_of_two_or_more_distinct_members_is_the_default() {
        let s = spec(&["a", "b", "c"], None, None, None).unwrap();
        assert_eq!(s.strategy, Strategy::Vote);
        assert_eq!(param(spec(&["a"], None, None, None)), "members");
        assert_eq!(param(spec(&["a", "a"], None, None, None)), "members[1]");
        let nine: Vec<String> = (0..9).map(|i| i.to_string()).collect();
        let nine: Vec<&str> = nine.iter().map(String::as_str).collect();
        assert_eq!(param(spec(&nine, None, None, None)), "members");
        assert_eq!(
            param(spec(&["a", "b"], None, Some("base"), None)),
            "fallback"
        );
        assert_eq!(
            param(spec(&["a", "b"], None, None, Some(-1.0))),
            "threshold"
        );
    }

    #[test]
    fn layered_takes_one_member_a_fallback_and_a_threshold() {
        let s = spec(&["a"], Some(Strategy::Layered), Some("base"), Some(-0.5)).unwrap();
        assert_eq!(s.fallback.as_deref(), Some("base"));
        let layered = Some(Strategy::Layered);
        assert_eq!(
            param(spec(&["a", "b"], layered, Some("base"), Some(-0.5))),
            "members"
        );
        assert_eq!(param(spec(&["a"], layered, None, Some(-0.5))), "fallback");
        assert_eq!(
            param(spec(&["a"], layered, Some("a"), Some(-0.5))),
            "fallback"
        );
        assert_eq!(
            param(spec(&["a"], layered, Some("base"), None)),
            "threshold"
        );
        assert_eq!(
            param(spec(&["a"], layered, Some("base"), Some(0.5))),
            "threshold"
        );
        assert_eq!(
            param(spec(&["a"], layered, Some("base"), Some(f64::NAN))),
            "threshold"
        );
    }

    #[test]
    fn names_are_checked() {
        for name in ["", "ft:x", "base", "a b", &"x".repeat(129)] {
            let r = EnsembleSpec::parse(
                name.to_owned(),
                vec!["a".into(), "b".into()],
                None,
                None,
                None,
                "base",
            );
            assert_eq!(param(r), "name", "{name:?}");
        }
        assert!(valid_name("org/health-vote:v2"));
    }

    #[test]
    fn strategies_round_trip_their_names() {
        for s in ["vote", "best_logprob", "consensus", "layered"] {
            assert_eq!(Strategy::parse(s).unwrap().as_str(), s);
        }
        assert!(Strategy::parse("majority").is_none());
    }
}
