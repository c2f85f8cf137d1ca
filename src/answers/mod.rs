//! Use cases behind the chat endpoints that span the store and the serving engine: making the
//! caller's model resident, answering with an ensemble ([`ensemble`]) and calibrating a layered
//! ensemble's threshold ([`calibrate`]). The HTTP handlers parse, call these and render; nothing
//! here knows HTTP.

pub mod calibrate;
pub mod ensemble;

use crate::domain::organization::OrganizationId;
use crate::serve::{Engine, ServeError};
use crate::store::blobs::BlobStore;
use crate::store::{Store, StoreError};

/// What the use cases work with: the database, the file bytes and the engine.
#[derive(Clone, Copy)]
pub struct Models<'a> {
    /// Database.
    pub store: &'a Store,
    /// File and adapter bytes.
    pub blobs: &'a BlobStore,
    /// The serving engine.
    pub engine: &'a Engine,
}

/// Why an answer could not be given.
#[derive(Debug, thiserror::Error)]
pub enum AnswerError {
    /// The caller has no such model.
    #[error("The model `{0}` does not exist or you do not have access to it.")]
    ModelNotFound(String),
    /// An ensemble names a model that was deleted since.
    #[error("Ensemble '{ensemble}' names '{model}', which no longer exists")]
    MemberGone {
        /// The ensemble.
        ensemble: String,
        /// The missing member.
        model: String,
    },
    /// The request cannot be answered as asked.
    #[error("{message}")]
    Invalid {
        /// What is wrong.
        message: String,
        /// The request parameter at fault.
        param: &'static str,
    },
    /// The database or file store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The engine failed or refused.
    #[error(transparent)]
    Serve(#[from] ServeError),
    /// Something that should not happen (a stored value that does not parse).
    #[error("{0}")]
    Internal(String),
}

impl AnswerError {
    fn invalid(message: impl Into<String>, param: &'static str) -> Self {
        Self::Invalid {
            message: message.into(),
            param,
        }
    }
}

impl Models<'_> {
    /// Make `model` (the base, or a fine-tuned model of `org`) resident in the engine, loading
    /// it on first use; `None` when `org` has no such model.
    async fn load(&self, org: &OrganizationId, model: &str) -> Result<Option<()>, AnswerError> {
        if model == self.engine.base_name() {
            return Ok(Some(()));
        }
        let Some(row) = self.store.get_model(org, model).await? else {
            return Ok(None);
        };
        let dir = self.blobs.local_dir(&row.path).await?;
        self.engine.ensure_loaded(model, &dir).await?;
        Ok(Some(()))
    }

    /// Make `model` resident (see [`Self::load`]); a missing model is
    /// [`AnswerError::ModelNotFound`].
    pub async fn make_resident(
        &self,
        org: &OrganizationId,
        model: &str,
    ) -> Result<(), AnswerError> {
        self.load(org, model)
            .await?
            .ok_or_else(|| AnswerError::ModelNotFound(model.to_owned()))
    }
}
