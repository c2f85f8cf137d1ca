//! Text that may be stored: PostgreSQL's `text` and `jsonb` cannot hold a NUL character, so a
//! value carrying one is refused here, naming its parameter, before it reaches the database.

use serde_json::Value;

use super::DomainError;

fn nul_error(param: &str) -> DomainError {
    DomainError::invalid(param, format!("{param} must not contain a NUL character"))
        .with_code("invalid_value")
}

/// `value` unless it holds a NUL character.
pub fn storable<'a>(param: &str, value: &'a str) -> Result<&'a str, DomainError> {
    if value.contains('\0') {
        return Err(nul_error(param));
    }
    Ok(value)
}

/// Refuse a JSON value with a NUL character in any string or key inside it.
pub fn storable_json(param: &str, value: &Value) -> Result<(), DomainError> {
    fn clean(value: &Value) -> bool {
        match value {
            Value::String(s) => !s.contains('\0'),
            Value::Array(items) => items.iter().all(clean),
            Value::Object(map) => map.iter().all(|(k, v)| !k.contains('\0') && clean(v)),
            _ => true,
        }
    }
    if clean(value) {
        Ok(())
    } else {
        Err(nul_error(param))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_characters_are_refused_with_their_parameter() {
        assert_eq!(storable("purpose", "fine-tune"), Ok("fine-tune"));
        let err = storable("purpose", "a\0b").unwrap_err();
        assert_eq!(err.param.as_deref(), Some("purpose"));
        assert!(storable_json("metadata", &serde_json::json!({"k": ["x", "a\u{0}"]})).is_err());
        assert!(storable_json("metadata", &serde_json::json!({"k\u{0}": 1})).is_err());
        assert!(storable_json("metadata", &serde_json::json!({"k": [1, "x"]})).is_ok());
    }
}
