//! Cursor resolution shared by every list query.

use super::{Context, Store, StoreError};
use crate::domain::pagination::{Order, PageRequest};

/// A list's cursor, resolved to a `seq` bound, and the SQL fragments for the sort direction.
pub(crate) struct Cursor {
    /// `seq` of the `after` object, if any.
    pub seq: Option<i64>,
    /// `<` or `>`: how `seq` compares to the cursor.
    pub cmp: &'static str,
    /// `asc` or `desc`.
    pub dir: &'static str,
}

impl Store {
    /// Look up the `after` object's `seq` in `table` where `scope_col = scope`.
    pub(crate) async fn cursor(
        &self,
        table: &'static str,
        scope_col: &'static str,
        scope: &str,
        page: &PageRequest,
    ) -> Result<Cursor, StoreError> {
        let seq = match &page.after {
            None => None,
            Some(after) => Some(
                sqlx::query_scalar::<_, i64>(&format!(
                    "select seq from {table} where id = $1 and {scope_col} = $2"
                ))
                .bind(after)
                .bind(scope)
                .fetch_optional(&self.pool)
                .await
                .ctx("resolving a list cursor")?
                .ok_or_else(|| StoreError::UnknownCursor(after.clone()))?,
            ),
        };
        let (cmp, dir) = match page.order {
            Order::Asc => (">", "asc"),
            Order::Desc => ("<", "desc"),
        };
        Ok(Cursor { seq, cmp, dir })
    }
}
