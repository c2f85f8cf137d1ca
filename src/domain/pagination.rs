//! List parameters shared by every paged endpoint.

use super::DomainError;

/// Sort direction by creation time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    /// Oldest first.
    Asc,
    /// Newest first (the default everywhere).
    Desc,
}

/// A validated page request: `limit` within bounds, an optional `after` cursor (an object id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// How many objects at most.
    pub limit: i64,
    /// Return objects strictly after this one in the chosen order.
    pub after: Option<String>,
    /// Sort direction.
    pub order: Order,
}

impl PageRequest {
    /// Check `limit` against `1..=max` (defaulting to `default`) and parse `order`.
    pub fn parse(
        limit: Option<i64>,
        after: Option<String>,
        order: Option<&str>,
        default: i64,
        max: i64,
    ) -> Result<Self, DomainError> {
        let limit = limit.unwrap_or(default);
        if !(1..=max).contains(&limit) {
            return Err(DomainError::invalid(
                "limit",
                format!("limit must be between 1 and {max}, got {limit}"),
            ));
        }
        let order = match order {
            None | Some("desc") => Order::Desc,
            Some("asc") => Order::Asc,
            Some(other) => {
                return Err(DomainError::invalid(
                    "order",
                    format!("order must be 'asc' or 'desc', got '{other}'"),
                ));
            }
        };
        let after = after.filter(|a| !a.is_empty());
        if let Some(a) = &after {
            super::text::storable("after", a)?;
        }
        Ok(Self {
            limit,
            after,
            order,
        })
    }
}

/// One page of results and whether more follow.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The objects, in the requested order.
    pub items: Vec<T>,
    /// True when another page exists after the last item.
    pub has_more: bool,
}

impl<T> Page<T> {
    /// Build a page from rows fetched with `limit + 1`: the extra row only signals `has_more`.
    pub fn from_overfetch(mut rows: Vec<T>, limit: i64) -> Self {
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        Self {
            items: rows,
            has_more,
        }
    }

    /// Convert every item.
    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            items: self.items.into_iter().map(f).collect(),
            has_more: self.has_more,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_outside_the_range_are_rejected_with_the_param() {
        let err = PageRequest::parse(Some(0), None, None, 20, 100).unwrap_err();
        assert_eq!(err.param.as_deref(), Some("limit"));
        assert!(PageRequest::parse(Some(101), None, None, 20, 100).is_err());
        assert_eq!(
            PageRequest::parse(None, None, None, 20, 100).unwrap().limit,
            20
        );
    }

    #[test]
    fn overfetched_rows_set_has_more() {
        let page = Page::from_overfetch(vec![1, 2, 3], 2);
        assert_eq!(page.items, vec![1, 2]);
        assert!(page.has_more);
        assert!(!Page::from_overfetch(vec![1, 2], 2).has_more);
    }
}
