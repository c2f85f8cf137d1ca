//! Organizations: each API key is its own tenant; an open server has one local organization.

use sha2::{Digest, Sha256};

/// The tenant a request acts for. Files, jobs and models are visible only within it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, sqlx::Type)]
#[serde(transparent)]
#[sqlx(transparent)]
pub struct OrganizationId(String);

impl OrganizationId {
    /// The organization of a server that runs without API keys.
    pub fn local() -> Self {
        Self("org-local".to_owned())
    }

    /// The organization owned by an API key: a stable digest, so the key itself is never stored.
    pub fn for_api_key(key: &str) -> Self {
        let digest = Sha256::digest(key.as_bytes());
        let hex: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();
        Self(format!("org-{hex}"))
    }

    /// The organization a fine-tuned model's name carries (`ft:base:{org}:…`): `org-` and
    /// lower-case letters, digits or dashes.
    pub fn from_model_name_part(raw: &str) -> Option<Self> {
        let body = raw.strip_prefix("org-")?;
        let ok = !body.is_empty()
            && body
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        ok.then(|| Self(raw.to_owned()))
    }

    /// The id as an owned string.
    pub fn into_string(self) -> String {
        self.0
    }

    /// The id as stored and shown.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for OrganizationId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_maps_to_its_own_stable_organization() {
        let a = OrganizationId::for_api_key("sk-a");
        assert_eq!(a, OrganizationId::for_api_key("sk-a"));
        assert_ne!(a, OrganizationId::for_api_key("sk-b"));
        assert!(!a.as_str().contains("sk-a"));
    }
}
