//! Waking idle workers: a job that becomes runnable (created, resumed, queued again) is announced
//! on one `NOTIFY` channel inside the transaction that made it runnable, so the wake-up is sent
//! exactly when the change is visible. Workers `LISTEN` and keep polling as the fallback.

use sqlx::PgConnection;
use sqlx::postgres::PgListener;

use super::{Context, Store, StoreError};
use crate::domain::ids::JobId;

/// The channel runnable jobs are announced on; the payload is the job id.
pub const RUNNABLE_JOB_CHANNEL: &str = "ferrotune_runnable_job";

impl Store {
    /// Announce inside a caller's transaction that `job` can be claimed (sent at commit).
    pub(crate) async fn notify_runnable_in(
        conn: &mut PgConnection,
        job: &JobId,
    ) -> Result<(), StoreError> {
        sqlx::query("select pg_notify($1, $2)")
            .bind(RUNNABLE_JOB_CHANNEL)
            .bind(job)
            .execute(conn)
            .await
            .ctx("announcing a runnable job")?;
        Ok(())
    }

    /// A connection listening for runnable jobs (it reconnects by itself when dropped).
    pub async fn job_listener(&self) -> Result<PgListener, StoreError> {
        let mut listener = PgListener::connect_with(&self.pool)
            .await
            .ctx("connecting to LISTEN for jobs")?;
        listener
            .listen(RUNNABLE_JOB_CHANNEL)
            .await
            .ctx("listening for jobs")?;
        Ok(listener)
    }
}
