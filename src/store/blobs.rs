//! File bytes on disk: `<data dir>/files/<id>`, written through a temporary file that is removed
//! unless the upload is committed, so a rejected upload never leaves a half-written file.

use std::path::{Path, PathBuf};

use super::{Context, StoreError};
use crate::domain::ids::FileId;

/// Where file contents live.
#[derive(Debug, Clone)]
pub struct BlobStore {
    root: PathBuf,
}

/// A file being written; deleted on drop unless [`BlobStore::commit`] took it.
#[derive(Debug)]
pub struct TempBlob {
    path: PathBuf,
    committed: bool,
}

impl TempBlob {
    /// Where the bytes are being written.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempBlob {
    fn drop(&mut self) {
        if !self.committed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl BlobStore {
    /// Use `<data_dir>/files`, creating it (and its `.tmp` staging folder).
    pub fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let root = data_dir.join("files");
        std::fs::create_dir_all(root.join(".tmp")).ctx("creating the files directory")?;
        Ok(Self { root })
    }

    /// Remove staged uploads untouched for `idle` or longer: left by a crash (an upload in
    /// progress writes more often than that, or is aborted by the body timeout). Returns how
    /// many were removed.
    pub fn sweep_temp(&self, idle: std::time::Duration) -> Result<usize, StoreError> {
        let mut removed = 0;
        for entry in std::fs::read_dir(self.root.join(".tmp")).ctx("listing staged uploads")? {
            let entry = entry.ctx("listing staged uploads")?;
            let age = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok());
            if age.is_some_and(|a| a >= idle) && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// A fresh temporary path in the staging folder.
    pub fn temp(&self) -> TempBlob {
        let name = format!("upload-{}", FileId::generate().body());
        TempBlob {
            path: self.root.join(".tmp").join(name),
            committed: false,
        }
    }

    /// Where a stored file's bytes are.
    pub fn path_of(&self, id: &FileId) -> PathBuf {
        self.root.join(id.as_str())
    }

    /// Move a finished upload to its final place.
    pub async fn commit(&self, mut temp: TempBlob, id: &FileId) -> Result<PathBuf, StoreError> {
        let dest = self.path_of(id);
        tokio::fs::rename(&temp.path, &dest)
            .await
            .ctx("moving an upload into place")?;
        temp.committed = true;
        Ok(dest)
    }

    /// Remove a file's bytes (missing is fine).
    pub async fn remove(&self, id: &FileId) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.path_of(id)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).ctx("removing a file's bytes")
            }
            _ => Ok(()),
        }
    }
}

impl BlobStore {
    /// Copy a file produced elsewhere (a job's result) in as `id`; returns its size.
    pub async fn import(&self, src: &Path, id: &FileId) -> Result<u64, StoreError> {
        let temp = self.temp();
        let bytes = tokio::fs::copy(src, temp.path())
            .await
            .ctx("copying a result file")?;
        self.commit(temp, id).await?;
        Ok(bytes)
    }
}
