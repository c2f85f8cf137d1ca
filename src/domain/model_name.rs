//! Fine-tuned model names: `ft:{base}:{org}:{suffix}:{8-char job id}` and checkpoint names.

use super::DomainError;
use super::ids::JobId;
use super::organization::OrganizationId;

/// A validated user suffix: 1–64 characters of `[A-Za-z0-9._-]` (no `:`, which separates parts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suffix(String);

impl Suffix {
    /// Parse the `suffix` request field.
    pub fn parse(raw: &str) -> Result<Self, DomainError> {
        let ok_chars = raw
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if raw.is_empty() || raw.chars().count() > 64 || !ok_chars {
            return Err(DomainError::invalid(
                "suffix",
                "suffix must be 1 to 64 characters of letters, digits, '.', '_' or '-'",
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// The suffix text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The name of the model a job produces; built only from its parts, so never malformed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FineTunedModelName(String);

impl FineTunedModelName {
    /// `ft:{base}:{org}:{suffix}:{first 8 chars of the job id body}`; no suffix leaves it empty.
    pub fn new(base: &str, org: &OrganizationId, suffix: Option<&Suffix>, job: &JobId) -> Self {
        let short: String = job.body().chars().take(8).collect();
        let suffix = suffix.map(Suffix::as_str).unwrap_or("");
        Self(format!("ft:{base}:{org}:{suffix}:{short}"))
    }

    /// The name of this model's checkpoint at `step`.
    pub fn checkpoint(&self, step: u64) -> String {
        format!("{}:ckpt-step-{step}", self.0)
    }

    /// The name of member `index` (1-based) of the ensemble this job trains.
    pub fn member(&self, index: usize) -> String {
        format!("{}:member-{index}", self.0)
    }

    /// The name as shown to clients.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_follow_the_openai_pattern() {
        let job = JobId::parse("ftjob-abcdefghijkl").unwrap();
        let org = OrganizationId::local();
        let named =
            FineTunedModelName::new("tiny", &org, Some(&Suffix::parse("med").unwrap()), &job);
        assert_eq!(named.as_str(), "ft:tiny:org-local:med:abcdefgh");
        let bare = FineTunedModelName::new("tiny", &org, None, &job);
        assert_eq!(bare.as_str(), "ft:tiny:org-local::abcdefgh");
        assert_eq!(
            bare.checkpoint(20),
            "ft:tiny:org-local::abcdefgh:ckpt-step-20"
        );
        assert_eq!(bare.member(2), "ft:tiny:org-local::abcdefgh:member-2");
    }

    #[test]
    fn suffixes_with_separators_or_too_long_are_rejected() {
        assert!(Suffix::parse("a:b").is_err());
        assert!(Suffix::parse("").is_err());
        assert!(Suffix::parse(&"x".repeat(65)).is_err());
        assert!(Suffix::parse(&"x".repeat(64)).is_ok());
    }
}
