//! Every SQL statement, and the on-disk blobs of uploaded files.
//!
//! `Store` wraps the pool; each table's statements live in their own module as an `impl Store`
//! block. The queue (claim, lease, heartbeat, fencing) is in [`queue`]. Nothing here knows HTTP.

pub mod batches;
pub mod blobs;
pub mod checkpoints;
pub mod ensembles;
pub mod events;
pub mod files;
pub mod job_dirs;
pub mod jobs;
pub mod models;
pub mod notify;
pub mod orphans;
mod paging;
pub mod queue;
pub mod remote;
pub mod responses;
pub mod stats;

use std::time::Duration;

use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

/// The folder of stored files, in the data dir and in the object store.
const FILES: &str = "files";

pub use checkpoints::CheckpointRow;
pub use events::{EventRow, NewEvent};
pub use files::{FileRow, NewFile};
pub use jobs::JobRow;
pub use queue::{ClaimedJob, JobResults};

/// The migrations in `migrations/`, embedded at compile time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// A failure in the storage layer, with what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A statement failed.
    #[error("database error while {context}: {source}")]
    Database {
        /// What the store was doing.
        context: &'static str,
        /// The driver's error.
        #[source]
        source: sqlx::Error,
    },
    /// Applying migrations failed.
    #[error("applying migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A list's `after` cursor names no object visible to the caller.
    #[error("no object with id '{0}' to page after")]
    UnknownCursor(String),
    /// Reading or writing a blob failed.
    #[error("file storage error while {context}: {source}")]
    Io {
        /// What the store was doing.
        context: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The object store (`--object-store`) failed or could not be reached.
    #[error("object store error while {context}: {source}")]
    Remote {
        /// What the store was doing.
        context: &'static str,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A storage setting is unusable.
    #[error("{0}")]
    Config(String),
}

impl StoreError {
    /// The database refused a text value it cannot hold (a NUL character: SQLSTATE 22021 in
    /// `text`, 22P05 in `jsonb`). Inputs are checked before; this is the backstop.
    pub fn is_unstorable_text(&self) -> bool {
        let Self::Database {
            source: sqlx::Error::Database(db),
            ..
        } = self
        else {
            return false;
        };
        matches!(db.code().as_deref(), Some("22021") | Some("22P05"))
    }

    /// The disk holding the files is full.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
    }
}

/// Attach what the store was doing to a driver error.
pub(crate) trait Context<T> {
    /// Wrap the error with `context`.
    fn ctx(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, sqlx::Error> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Database { context, source })
    }
}

impl<T> Context<T> for Result<T, std::io::Error> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Io { context, source })
    }
}

/// The database handle shared by the API and the workers.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    /// Connect with a URL (`postgres://…`, `?host=/socket/dir` for Unix sockets).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let mut options: PgConnectOptions = url
            .parse::<PgConnectOptions>()
            .ctx("parsing DATABASE_URL")?;
        if options.get_application_name().is_none() {
            // Names the process, so a server closing an embedded cluster can tell a live
            // process's connections from those a killed one left behind.
            options = options.application_name(&application_name(std::process::id()));
        }
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .ctx("connecting to Postgres")?;
        Ok(Self { pool })
    }

    /// Apply pending migrations.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR.run(&self.pool).await?;
        Ok(())
    }

    /// The pool, for tests and health checks.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// True when the database answers.
    pub async fn ping(&self) -> bool {
        sqlx::query("select 1").execute(&self.pool).await.is_ok()
    }
}

/// The `application_name` of this crate's connections from process `pid`.
pub fn application_name(pid: u32) -> String {
    format!("ferrotune/{pid}")
}
