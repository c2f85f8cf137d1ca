//! Servable models beyond the base: fine-tuned models (table `model`) and job checkpoints.

use chrono::{DateTime, Utc};
use sqlx::FromRow;

use super::{Context, Store, StoreError};
use crate::domain::ids::JobId;
use crate::domain::organization::OrganizationId;

/// A model a caller may chat with.
#[derive(Debug, Clone, FromRow)]
pub struct ModelRow {
    /// Public id (`ft:…` or `ft:…:ckpt-step-N`).
    pub id: String,
    /// Owner.
    pub organization_id: String,
    /// The base model it was trained on.
    pub base_model: String,
    /// Adapter directory (PEFT).
    pub path: String,
    /// When it became available.
    pub created_at: DateTime<Utc>,
}

const SERVABLE: &str = "select id, organization_id, base_model, path, created_at from model \
     where deleted_at is null and organization_id = $1 \
     union all \
     select c.fine_tuned_model_checkpoint, j.organization_id, j.model, c.path, c.created_at \
     from fine_tuning_job_checkpoint c join fine_tuning_job j on j.id = c.job_id \
     where j.organization_id = $1 and not exists \
       (select 1 from model m where m.job_id = j.id and m.deleted_at is not null)";

impl Store {
    /// The fine-tuning job that produced `model` of `org` (a fine-tuned model, an ensemble
    /// member or a checkpoint); `None` for anything else.
    #[tracing::instrument(skip_all, fields(model = %model))]
    pub async fn job_of_model(
        &self,
        org: &OrganizationId,
        model: &str,
    ) -> Result<Option<JobId>, StoreError> {
        let id: Option<String> = sqlx::query_scalar(
            "select job_id from model \
             where organization_id = $1 and id = $2 and deleted_at is null and job_id is not null \
             union all \
             select c.job_id from fine_tuning_job_checkpoint c \
             join fine_tuning_job j on j.id = c.job_id \
             where j.organization_id = $1 and c.fine_tuned_model_checkpoint = $2 \
             limit 1",
        )
        .bind(org)
        .bind(model)
        .fetch_optional(&self.pool)
        .await
        .ctx("finding a model's job")?;
        Ok(id.as_deref().and_then(JobId::parse))
    }

    /// Every fine-tuned model and checkpoint of `org`, newest first.
    #[tracing::instrument(skip_all)]
    pub async fn list_models(&self, org: &OrganizationId) -> Result<Vec<ModelRow>, StoreError> {
        sqlx::query_as(&format!(
            "select * from ({SERVABLE}) s order by created_at desc, id"
        ))
        .bind(org.as_str())
        .fetch_all(&self.pool)
        .await
        .ctx("listing models")
    }

    /// One servable model of `org`.
    #[tracing::instrument(skip_all, fields(model = %id))]
    pub async fn get_model(
        &self,
        org: &OrganizationId,
        id: &str,
    ) -> Result<Option<ModelRow>, StoreError> {
        sqlx::query_as(&format!("select * from ({SERVABLE}) s where id = $2"))
            .bind(org.as_str())
            .bind(id)
            .fetch_optional(&self.pool)
            .await
            .ctx("reading a model")
    }

    /// Mark a fine-tuned model deleted (its checkpoints go with it); true when it existed.
    #[tracing::instrument(skip_all, fields(model = %id))]
    pub async fn delete_model(&self, org: &OrganizationId, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "update model set deleted_at = now() where id = $1 and organization_id = $2 \
             and kind = 'fine_tuned' and deleted_at is null",
        )
        .bind(id)
        .bind(org.as_str())
        .execute(&self.pool)
        .await
        .ctx("deleting a model")?;
        Ok(done.rows_affected() == 1)
    }
}

/// The outcome of registering a runtime adapter.
#[derive(Debug, PartialEq, Eq)]
pub enum AdapterInsert {
    /// Registered.
    Added,
    /// A model with that name exists already.
    NameTaken,
}

impl Store {
    /// Register an externally trained adapter under `name` for `org`.
    #[tracing::instrument(skip_all, fields(model = %name))]
    pub async fn insert_adapter(
        &self,
        org: &OrganizationId,
        name: &str,
        base_model: &str,
        path: &str,
    ) -> Result<AdapterInsert, StoreError> {
        let done = sqlx::query(
            "insert into model (id, organization_id, kind, base_model, path) \
             select $1, $2, 'adapter', $3, $4 \
             where not exists (select 1 from ensemble where id = $1) \
             on conflict on constraint model_pkey do nothing",
        )
        .bind(name)
        .bind(org.as_str())
        .bind(base_model)
        .bind(path)
        .execute(&self.pool)
        .await
        .ctx("registering an adapter")?;
        Ok(if done.rows_affected() == 1 {
            AdapterInsert::Added
        } else {
            AdapterInsert::NameTaken
        })
    }

    /// Forget a runtime adapter of `org`; true when it existed.
    #[tracing::instrument(skip_all, fields(model = %name))]
    pub async fn delete_adapter(
        &self,
        org: &OrganizationId,
        name: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "delete from model where id = $1 and organization_id = $2 and kind = 'adapter'",
        )
        .bind(name)
        .bind(org.as_str())
        .execute(&self.pool)
        .await
        .ctx("removing an adapter")?;
        Ok(done.rows_affected() == 1)
    }
}
