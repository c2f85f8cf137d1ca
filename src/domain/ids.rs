//! Object ids: a fixed prefix and a random URL-safe body (`file-…`, `ftjob-…`).
//!
//! Rows decode straight into these types (`#[sqlx(transparent)]`): an id read from the database
//! was parsed when it was written, so it is not parsed again.

use rand::Rng;
use rand::distributions::Alphanumeric;

const BODY_LEN: usize = 24;

macro_rules! prefixed_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, sqlx::Type)]
        #[serde(transparent)]
        #[sqlx(transparent)]
        pub struct $name(String);

        impl $name {
            /// The prefix every id of this kind starts with.
            pub const PREFIX: &'static str = $prefix;

            /// A fresh random id.
            pub fn generate() -> Self {
                Self(format!("{}{}", $prefix, random_body()))
            }

            /// Accept an id that carries the right prefix and a non-empty URL-safe body.
            pub fn parse(raw: &str) -> Option<Self> {
                let body = raw.strip_prefix($prefix)?;
                let ok = !body.is_empty()
                    && body.len() <= 64
                    && body.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                ok.then(|| Self(raw.to_owned()))
            }

            /// The id as sent to clients.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// The id as an owned string.
            pub fn into_string(self) -> String {
                self.0
            }

            /// The random part, without the prefix.
            pub fn body(&self) -> &str {
                &self.0[$prefix.len()..]
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

prefixed_id!(
    /// A file id, `file-…`.
    FileId,
    "file-"
);
prefixed_id!(
    /// A fine-tuning job id, `ftjob-…`.
    JobId,
    "ftjob-"
);
prefixed_id!(
    /// A job event id, `ftevent-…`.
    EventId,
    "ftevent-"
);
prefixed_id!(
    /// A checkpoint id, `ftckpt-…`.
    CheckpointId,
    "ftckpt-"
);

fn random_body() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(BODY_LEN)
        .map(char::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_carry_their_prefix_and_parse_back() {
        let id = JobId::generate();
        assert!(id.as_str().starts_with("ftjob-"));
        assert_eq!(id.body().len(), BODY_LEN);
        assert_eq!(JobId::parse(id.as_str()), Some(id));
    }

    #[test]
    fn ids_with_a_wrong_prefix_or_odd_characters_are_rejected() {
        assert_eq!(FileId::parse("ftjob-abc"), None);
        assert_eq!(FileId::parse("file-"), None);
        assert_eq!(FileId::parse("file-a/b"), None);
        assert!(FileId::parse("file-abc_1-2").is_some());
    }
}
