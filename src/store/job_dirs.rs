//! Job outputs (checkpoints, adapters, ensemble members, the state a run resumes from) shared
//! through the object store, so that any API node serves a model trained elsewhere and any
//! worker resumes a job another one started.
//!
//! With an object store, directories are recorded in the database relative to the data
//! directory (`jobs/<id>/adapter`) and kept under the same key in the bucket; each node
//! resolves them under its own data directory, fetching what it lacks. A training state is written whole under a fresh name
//! (`…/state-v<n>/`) and then published by one atomic put of a pointer (`…/state.pointer`), so a
//! worker killed mid-upload never leaves a half-written state for the next one.

use std::path::{Path, PathBuf};

use super::blobs::BlobStore;
use super::remote::Remote;
use super::{Context, StoreError};

/// The folder of job outputs, in the data dir and in the object store.
pub const JOBS: &str = "jobs";

/// Suffix of the object naming the current copy of a state directory.
const POINTER: &str = ".pointer";

impl BlobStore {
    /// How a directory is recorded: with an object store, relative to the data dir when under
    /// it, so that every node resolves it under its own; otherwise (one machine) as it is.
    pub fn stored_path(&self, dir: &Path) -> String {
        match self.remote() {
            Some(_) => dir.strip_prefix(self.data_dir()).unwrap_or(dir),
            None => dir,
        }
        .to_string_lossy()
        .into_owned()
    }

    /// A local directory for the recorded `stored` path: relative ones under this node's data
    /// dir, fetched from the object store on first use (absolute ones, from before, as they are).
    pub async fn local_dir(&self, stored: &str) -> Result<PathBuf, StoreError> {
        let path = self.data_dir().join(stored);
        let Some(remote) = self.remote() else {
            return Ok(path);
        };
        if Path::new(stored).is_absolute() || tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path);
        }
        remote.download_dir(stored, &path).await?;
        Ok(path)
    }

    /// The object store and the key of `dir` (under the data dir) in it; `None` without an
    /// object store or for a `dir` elsewhere.
    fn shared(&self, dir: &Path) -> Option<(&Remote, String)> {
        let rel = dir.strip_prefix(self.data_dir()).ok()?;
        Some((self.remote()?, rel.to_string_lossy().into_owned()))
    }

    /// Upload `dir` (under the data dir) for the other nodes; nothing without an object store.
    pub async fn share_dir(&self, dir: &Path) -> Result<(), StoreError> {
        match self.shared(dir) {
            Some((remote, key)) => remote.upload_dir(&key, dir).await,
            None => Ok(()),
        }
    }

    /// Upload the file `path` (under the data dir) for the other nodes; nothing without an
    /// object store.
    pub async fn share_file(&self, path: &Path) -> Result<(), StoreError> {
        match self.shared(path) {
            Some((remote, key)) => remote.upload(&key, path).await,
            None => Ok(()),
        }
    }

    /// The shared copy of the small text file `path` (under the data dir), if there is one.
    pub async fn read_shared(&self, path: &Path) -> Result<Option<String>, StoreError> {
        match self.shared(path) {
            Some((remote, key)) => remote.read_text(&key).await,
            None => Ok(None),
        }
    }

    /// Fetch the shared copy of the file `path` (under the data dir) unless it is here already;
    /// `Ok(false)` when it is in neither place.
    pub async fn fetch_file(&self, path: &Path) -> Result<bool, StoreError> {
        if tokio::fs::try_exists(path).await.unwrap_or(false) {
            return Ok(true);
        }
        match self.shared(path) {
            Some((remote, key)) => remote.download(&key, path).await,
            None => Ok(false),
        }
    }

    /// Remove a shared directory from the object store (a pruned checkpoint, a cancelled job).
    pub async fn unshare_dir(&self, dir: &Path) -> Result<(), StoreError> {
        match self.shared(dir) {
            Some((remote, key)) => remote.delete_dir(&key).await,
            None => Ok(()),
        }
    }

    /// Upload the training state in `state_dir` under a fresh name, point at it, then drop the
    /// copy it replaces.
    pub async fn share_state(&self, state_dir: &Path) -> Result<(), StoreError> {
        let Some((remote, key)) = self.shared(state_dir) else {
            return Ok(());
        };
        let pointer = format!("{key}{POINTER}");
        let before = remote.read_text(&pointer).await?;
        let name = format!(
            "{key}-v{}",
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0)
        );
        remote.upload_dir(&name, state_dir).await?;
        remote.write_text(&pointer, &name).await?;
        if let Some(old) = before.filter(|old| *old != name) {
            remote.delete_dir(&old).await?;
        }
        Ok(())
    }

    /// Replace the local `state_dir` with the shared one, if a state was shared. `Ok(false)`
    /// when none was (or there is no object store): the local one, if any, stays.
    pub async fn fetch_state(&self, state_dir: &Path) -> Result<bool, StoreError> {
        let Some((remote, key)) = self.shared(state_dir) else {
            return Ok(false);
        };
        let Some(name) = remote.read_text(&format!("{key}{POINTER}")).await? else {
            return Ok(false);
        };
        if !remote.download_dir(name.trim(), state_dir).await? {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("the shared training state {name} is missing"),
            ))
            .ctx("fetching a training state");
        }
        Ok(true)
    }
}
