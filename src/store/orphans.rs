//! Stored bytes that no row owns any more, swept now and then by workers
//! ([`crate::worker::Worker::sweep_orphans`]) and by API nodes without one (file bytes only): a
//! file's bytes whose removal failed when its row went (the object store was down then) or that
//! another node deleted, and the shared outputs of a job cancelled while no worker had it on its
//! disk (paused, its worker gone).

use std::collections::BTreeSet;
use std::time::Duration;

use super::FILES;
use super::blobs::BlobStore;
use super::job_dirs::JOBS;
use super::{Context, Store, StoreError};
use crate::domain::ids::{FileId, JobId};

impl BlobStore {
    /// Ids of the files stored here or in the object store written `age` or longer ago.
    pub async fn files_older_than(&self, age: Duration) -> Result<Vec<FileId>, StoreError> {
        let mut names = BTreeSet::new();
        let mut dir = tokio::fs::read_dir(self.files_dir())
            .await
            .ctx("listing stored files")?;
        while let Some(entry) = dir.next_entry().await.ctx("listing stored files")? {
            let written = entry.metadata().await.and_then(|m| m.modified());
            if written.is_ok_and(|t| t.elapsed().is_ok_and(|a| a >= age)) {
                names.insert(entry.file_name().to_string_lossy().into_owned());
            }
        }
        if let Some(remote) = self.remote() {
            names.extend(remote.names_older_than(FILES, age).await?);
        }
        Ok(names.iter().filter_map(|n| FileId::parse(n)).collect())
    }

    /// Ids of the jobs with outputs in the object store (none without one).
    pub async fn shared_jobs(&self) -> Result<Vec<JobId>, StoreError> {
        let Some(remote) = self.remote() else {
            return Ok(Vec::new());
        };
        let folders = remote.folders(JOBS).await?;
        Ok(folders.iter().filter_map(|n| JobId::parse(n)).collect())
    }
}

/// Remove the bytes of files without a row written `age` or longer ago, here and in the object
/// store (their removal failed when the row went, or another node deleted the file). Returns
/// how many files' bytes went.
pub async fn sweep_orphan_files(
    store: &Store,
    blobs: &BlobStore,
    age: Duration,
) -> Result<usize, StoreError> {
    let files = blobs.files_older_than(age).await?;
    let gone = store.unknown_files(&files).await?;
    for id in &gone {
        blobs.remove(id).await?;
    }
    Ok(gone.len())
}

impl Store {
    /// The ids among `ids` that no file has (in any organization).
    pub async fn unknown_files(&self, ids: &[FileId]) -> Result<Vec<FileId>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        sqlx::query_scalar(
            "select id from unnest($1::text[]) as given(id) \
             where not exists (select 1 from file where file.id = given.id)",
        )
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .ctx("finding files without a row")
    }
}
