//! Stored responses (table `response`): the Responses API's objects, their input items and the
//! conversation a later `previous_response_id` goes on from.

use serde_json::Value;
use sqlx::FromRow;

use super::{Context, Store, StoreError};
use crate::domain::organization::OrganizationId;

/// A stored response.
#[derive(Debug, Clone, FromRow)]
pub struct ResponseRow {
    /// `resp_…`.
    pub id: String,
    /// The response object as it was returned.
    pub body: Value,
    /// The request's input items, each with its id.
    pub input_items: Value,
    /// The items of the conversation before the request's input.
    pub history: Value,
}

impl Store {
    /// Keep `row` for `org`.
    #[tracing::instrument(skip_all, fields(response = %row.id))]
    pub async fn insert_response(
        &self,
        org: &OrganizationId,
        row: &ResponseRow,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "insert into response (id, organization_id, body, input_items, history) \
             values ($1, $2, $3, $4, $5)",
        )
        .bind(&row.id)
        .bind(org.as_str())
        .bind(&row.body)
        .bind(&row.input_items)
        .bind(&row.history)
        .execute(&self.pool)
        .await
        .ctx("storing a response")?;
        Ok(())
    }

    /// Response `id` of `org`.
    #[tracing::instrument(skip_all, fields(response = %id))]
    pub async fn get_response(
        &self,
        org: &OrganizationId,
        id: &str,
    ) -> Result<Option<ResponseRow>, StoreError> {
        sqlx::query_as(
            "select id, body, input_items, history from response \
             where id = $1 and organization_id = $2",
        )
        .bind(id)
        .bind(org.as_str())
        .fetch_optional(&self.pool)
        .await
        .ctx("reading a response")
    }

    /// Delete response `id` of `org`; `false` when there is none.
    #[tracing::instrument(skip_all, fields(response = %id))]
    pub async fn delete_response(
        &self,
        org: &OrganizationId,
        id: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("delete from response where id = $1 and organization_id = $2")
            .bind(id)
            .bind(org.as_str())
            .execute(&self.pool)
            .await
            .ctx("deleting a response")?;
        Ok(done.rows_affected() == 1)
    }
}
