//! Ensembles (table `ensemble`): model names answered by several models, or by a domain model
//! with a fallback.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{Context, Store, StoreError};
use crate::domain::ensemble::EnsembleSpec;
use crate::domain::organization::OrganizationId;

/// A stored ensemble.
#[derive(Debug, Clone, FromRow)]
pub struct EnsembleRow {
    /// Its model name.
    pub id: String,
    /// Owner.
    pub organization_id: String,
    /// `vote`, `best_logprob`, `consensus` or `layered`.
    pub strategy: String,
    /// Member model ids.
    pub members: Vec<String>,
    /// With `layered`: the fallback model.
    pub fallback: Option<String>,
    /// With `layered`: the confidence threshold.
    pub threshold: Option<f64>,
    /// The job that trained the members, when one did.
    pub job_id: Option<String>,
    /// When it was defined.
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str =
    "id, organization_id, strategy, members, fallback, threshold, job_id, created_at";

impl Store {
    /// Define an ensemble for `org`; `None` when the name is taken (by an ensemble or a model of
    /// any organization).
    #[tracing::instrument(skip_all)]
    pub async fn insert_ensemble(
        &self,
        org: &OrganizationId,
        spec: &EnsembleSpec,
    ) -> Result<Option<EnsembleRow>, StoreError> {
        sqlx::query_as(&format!(
            "insert into ensemble (id, organization_id, strategy, members, fallback, threshold) \
             select $1, $2, $3, $4, $5, $6 where not exists (select 1 from model where id = $1) \
             on conflict on constraint ensemble_pkey do nothing returning {COLUMNS}"
        ))
        .bind(&spec.name)
        .bind(org.as_str())
        .bind(spec.strategy.as_str())
        .bind(&spec.members)
        .bind(&spec.fallback)
        .bind(spec.threshold)
        .fetch_optional(&self.pool)
        .await
        .ctx("defining an ensemble")
    }

    /// The ensembles of `org`, oldest first.
    #[tracing::instrument(skip_all)]
    pub async fn list_ensembles(
        &self,
        org: &OrganizationId,
    ) -> Result<Vec<EnsembleRow>, StoreError> {
        sqlx::query_as(&format!(
            "select {COLUMNS} from ensemble where organization_id = $1 order by seq"
        ))
        .bind(org.as_str())
        .fetch_all(&self.pool)
        .await
        .ctx("listing ensembles")
    }

    /// One ensemble of `org`.
    #[tracing::instrument(skip_all, fields(ensemble = %id))]
    pub async fn get_ensemble(
        &self,
        org: &OrganizationId,
        id: &str,
    ) -> Result<Option<EnsembleRow>, StoreError> {
        sqlx::query_as(&format!(
            "select {COLUMNS} from ensemble where organization_id = $1 and id = $2"
        ))
        .bind(org.as_str())
        .bind(id)
        .fetch_optional(&self.pool)
        .await
        .ctx("reading an ensemble")
    }

    /// Remove an ensemble of `org`, and the member models its job trained (they were never
    /// published alone); the removed row, if it existed.
    #[tracing::instrument(skip_all, fields(ensemble = %id))]
    pub async fn delete_ensemble(
        &self,
        org: &OrganizationId,
        id: &str,
    ) -> Result<Option<EnsembleRow>, StoreError> {
        let mut tx = self.pool.begin().await.ctx("starting a transaction")?;
        let row: Option<EnsembleRow> = sqlx::query_as(&format!(
            "delete from ensemble where organization_id = $1 and id = $2 returning {COLUMNS}"
        ))
        .bind(org.as_str())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await
        .ctx("removing an ensemble")?;
        if let Some(job) = row.as_ref().and_then(|r| r.job_id.as_ref()) {
            sqlx::query(
                "update model set deleted_at = now() where job_id = $1 and deleted_at is null",
            )
            .bind(job)
            .execute(&mut *tx)
            .await
            .ctx("removing an ensemble's members")?;
        }
        tx.commit().await.ctx("committing an ensemble removal")?;
        Ok(row)
    }
}
