//! Text that may be stored: PostgreSQL's `text` and `jsonb` cannot hold a NUL character, so a
//! value carrying one is refused here, naming its parameter, before it reaches the database.

use serde_json::Value;

use super::DomainError;

/// `value` unless it holds a NUL character.
pub fn storable<'a>(param: &str, value: &'a str) -> Result<&'a str, DomainError> {
    if value.contains('\0') {
        return Err(DomainError::invalid(
            param,
            format!("{param} must not contain a NUL character"),
        )
        .with_code("invalid_value"));
    }
    Ok(value)
}

/// Refuse a JSON value with a NUL character in any string or key inside it.
pub fn storable_json(param: &str, value: &Value) -> Result<(), DomainError> {
    let clean = match value {
        Value::String(s) => !s.contains('\0'),
        Value::Array(items) => items.iter().all(|v| storable_json(param, v).is_ok()),
        Value::Object(map) => map
            .iter()
            .all(|(k, v)| !k.contains('\0') && storable_json(param, v).is_ok()),
        _ => true,
    };
    if clean {
        Ok(())
    } else {
        storable(param, "\0").map(|_| ())
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
