//! The `file` table.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{Context, Store, StoreError};
use crate::domain::ids::FileId;
use crate::domain::organization::OrganizationId;
use crate::domain::pagination::{Page, PageRequest};

/// A stored file's metadata.
#[derive(Debug, Clone, FromRow)]
pub struct FileRow {
    /// `file-…`.
    pub id: FileId,
    /// Owner.
    pub organization_id: OrganizationId,
    /// Size in bytes.
    pub bytes: i64,
    /// Name given at upload.
    pub filename: String,
    /// Purpose given at upload.
    pub purpose: String,
    /// `processed` once validated.
    pub status: String,
    /// Validation details.
    pub status_details: Option<String>,
    /// Detected dataset format for `fine-tune` files.
    pub dataset_format: Option<String>,
    /// Number of examples for `fine-tune` files.
    pub example_count: Option<i32>,
    /// Upload time.
    pub created_at: DateTime<Utc>,
    /// When the file expires, if it does.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A file to record.
#[derive(Debug, Clone)]
pub struct NewFile {
    /// Its id (already used for the blob's path).
    pub id: FileId,
    /// Owner.
    pub organization_id: OrganizationId,
    /// Size in bytes.
    pub bytes: i64,
    /// Name given at upload.
    pub filename: String,
    /// Purpose.
    pub purpose: String,
    /// Detected dataset format.
    pub dataset_format: Option<String>,
    /// Number of examples.
    pub example_count: Option<i32>,
    /// Seconds from its creation until it expires (OpenAI's `expires_after` anchored at
    /// `created_at`): computed in the statement from the row's own `created_at`, so the two differ
    /// by exactly this.
    pub expires_after_seconds: Option<i64>,
}

const COLUMNS: &str = "id, organization_id, bytes, filename, purpose, status, status_details, \
                       dataset_format, example_count, created_at, expires_at";
const VISIBLE: &str = "(expires_at is null or expires_at > now())";

impl Store {
    /// Record a file whose bytes are already in place.
    #[tracing::instrument(skip_all)]
    pub async fn insert_file(&self, file: &NewFile) -> Result<FileRow, StoreError> {
        let mut conn = self.pool.acquire().await.ctx("acquiring a connection")?;
        Self::insert_file_in(&mut conn, file).await
    }

    /// Record a file inside a caller's transaction.
    pub(crate) async fn insert_file_in(
        conn: &mut sqlx::PgConnection,
        file: &NewFile,
    ) -> Result<FileRow, StoreError> {
        sqlx::query_as(&format!(
            "insert into file (id, organization_id, bytes, filename, purpose, dataset_format, \
             example_count, expires_at) values ($1, $2, $3, $4, $5, $6, $7, \
             now() + make_interval(secs => $8)) returning {COLUMNS}"
        ))
        .bind(&file.id)
        .bind(&file.organization_id)
        .bind(file.bytes)
        .bind(&file.filename)
        .bind(&file.purpose)
        .bind(&file.dataset_format)
        .bind(file.example_count)
        .bind(file.expires_after_seconds.map(|s| s as f64))
        .fetch_one(conn)
        .await
        .ctx("inserting a file")
    }

    /// One file of `org`, unless missing or expired.
    #[tracing::instrument(skip_all, fields(file_id = %id))]
    pub async fn get_file(
        &self,
        org: &OrganizationId,
        id: &FileId,
    ) -> Result<Option<FileRow>, StoreError> {
        sqlx::query_as(&format!(
            "select {COLUMNS} from file where id = $1 and organization_id = $2 and {VISIBLE}"
        ))
        .bind(id)
        .bind(org)
        .fetch_optional(&self.pool)
        .await
        .ctx("reading a file")
    }

    /// A page of `org`'s files, optionally of one purpose.
    #[tracing::instrument(skip_all)]
    pub async fn list_files(
        &self,
        org: &OrganizationId,
        purpose: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<FileRow>, StoreError> {
        let c = self
            .cursor("file", "organization_id", org.as_str(), page)
            .await?;
        let rows = sqlx::query_as(&format!(
            "select {COLUMNS} from file where organization_id = $1 and {VISIBLE} \
             and ($2::text is null or purpose = $2) and ($3::bigint is null or seq {} $3) \
             order by seq {} limit $4",
            c.cmp, c.dir
        ))
        .bind(org.as_str())
        .bind(purpose)
        .bind(c.seq)
        .bind(page.limit + 1)
        .fetch_all(&self.pool)
        .await
        .ctx("listing files")?;
        Ok(Page::from_overfetch(rows, page.limit))
    }

    /// Delete a file's row; true when it existed.
    #[tracing::instrument(skip_all, fields(file_id = %id))]
    pub async fn delete_file(&self, org: &OrganizationId, id: &FileId) -> Result<bool, StoreError> {
        let done = sqlx::query("delete from file where id = $1 and organization_id = $2")
            .bind(id)
            .bind(org)
            .execute(&self.pool)
            .await
            .ctx("deleting a file")?;
        Ok(done.rows_affected() == 1)
    }

    /// Delete expired files' rows, returning their ids so their bytes can be removed.
    #[tracing::instrument(skip_all)]
    pub async fn delete_expired_files(&self) -> Result<Vec<FileId>, StoreError> {
        sqlx::query_scalar("delete from file where expires_at <= now() returning id")
            .fetch_all(&self.pool)
            .await
            .ctx("deleting expired files")
    }
}
