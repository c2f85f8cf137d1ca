//! File bytes: `<data dir>/files/<id>` on disk, written through a temporary file that is removed
//! unless the upload is committed, so a rejected upload never leaves a half-written file. With an
//! object store ([`Remote`]) the committed bytes go to its `files/<id>` first (a commit that
//! cannot upload fails, and the caller registers nothing), and the disk holds a cache that any
//! node fills on first use.

use std::path::{Path, PathBuf};

use super::remote::Remote;
use super::{Context, FILES, StoreError};
use crate::domain::ids::FileId;

/// Where file contents live.
#[derive(Debug, Clone)]
pub struct BlobStore {
    data_dir: PathBuf,
    root: PathBuf,
    remote: Option<Remote>,
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
        let root = data_dir.join(FILES);
        std::fs::create_dir_all(root.join(".tmp")).ctx("creating the files directory")?;
        Ok(Self {
            data_dir: data_dir.to_path_buf(),
            root,
            remote: None,
        })
    }

    /// The data directory the files folder is in.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// Keep committed files in `remote` too, the local folder being a cache.
    pub fn with_remote(mut self, remote: Option<Remote>) -> Self {
        self.remote = remote;
        self
    }

    /// The object store, when files live in one.
    pub fn remote(&self) -> Option<&Remote> {
        self.remote.as_ref()
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

    /// The folder holding this node's copies of stored files.
    pub(super) fn files_dir(&self) -> &Path {
        &self.root
    }

    /// Where a stored file's bytes are on this node's disk (or will be, once [`Self::local`]
    /// fetched them).
    fn path_of(&self, id: &FileId) -> PathBuf {
        self.root.join(id.as_str())
    }

    /// A local path holding the stored file `id`: fetched from the object store into the cache
    /// on first use. A file missing everywhere is an I/O `NotFound`.
    pub async fn local(&self, id: &FileId) -> Result<PathBuf, StoreError> {
        let path = self.path_of(id);
        let Some(remote) = &self.remote else {
            return Ok(path);
        };
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(path);
        }
        if remote.download(&key(id), &path).await? {
            return Ok(path);
        }
        Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("{id} is not in the object store"),
        ))
        .ctx("fetching a file")
    }

    /// Move a finished upload to its final place: uploaded to the object store first when
    /// there is one (an upload that fails leaves nothing behind).
    pub async fn commit(&self, mut temp: TempBlob, id: &FileId) -> Result<PathBuf, StoreError> {
        if let Some(remote) = &self.remote {
            remote.upload(&key(id), &temp.path).await?;
        }
        let dest = self.path_of(id);
        tokio::fs::rename(&temp.path, &dest)
            .await
            .ctx("moving an upload into place")?;
        temp.committed = true;
        Ok(dest)
    }

    /// Remove a file's bytes (missing is fine): this node's copy, then the object store's.
    pub async fn remove(&self, id: &FileId) -> Result<(), StoreError> {
        match tokio::fs::remove_file(self.path_of(id)).await {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).ctx("removing a file's bytes");
            }
            _ => {}
        }
        match &self.remote {
            Some(remote) => remote.delete(&key(id)).await,
            None => Ok(()),
        }
    }
}

/// The object key of file `id`.
fn key(id: &FileId) -> String {
    format!("{FILES}/{id}")
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
