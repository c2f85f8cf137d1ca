//! Operator-wide figures for `/metrics`: jobs by status, worker leases and the latest metrics of
//! running jobs, across every organization.

use super::{Context, Store, StoreError};

/// A running job's latest logged step.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RunningJobStats {
    /// The job.
    pub job_id: String,
    /// Training loss at its latest logged step (`None` before the first).
    pub train_loss: Option<f64>,
    /// Training tokens per second at that step, when the trainer reported it.
    pub tokens_per_second: Option<f64>,
}

/// What `/metrics` reports of training.
#[derive(Debug, Clone, Default)]
pub struct TrainingStats {
    /// `(status, jobs)` for every status with at least one job.
    pub jobs_by_status: Vec<(String, i64)>,
    /// `(worker, live leases)`.
    pub leases: Vec<(String, i64)>,
    /// Running jobs and their latest metrics.
    pub running: Vec<RunningJobStats>,
}

impl Store {
    /// Training figures across every organization (three small queries).
    pub async fn training_stats(&self) -> Result<TrainingStats, StoreError> {
        let jobs_by_status = sqlx::query_as(
            "select status, count(*) from fine_tuning_job group by status order by status",
        )
        .fetch_all(&self.pool)
        .await
        .ctx("counting jobs by status")?;
        let leases = sqlx::query_as(
            "select locked_by, count(*) from fine_tuning_job \
             where locked_by is not null and locked_until > now() \
             group by locked_by order by locked_by",
        )
        .fetch_all(&self.pool)
        .await
        .ctx("counting worker leases")?;
        let running = sqlx::query_as(
            "select j.id as job_id, (e.data->>'train_loss')::float8 as train_loss, \
                    (e.data->>'tokens_per_second')::float8 as tokens_per_second \
             from fine_tuning_job j \
             left join lateral (select data from fine_tuning_job_event \
                                where job_id = j.id and type = 'metrics' \
                                order by seq desc limit 1) e on true \
             where j.status = 'running' order by j.seq",
        )
        .fetch_all(&self.pool)
        .await
        .ctx("reading running jobs' metrics")?;
        Ok(TrainingStats {
            jobs_by_status,
            leases,
            running,
        })
    }
}
