//! `metadata` as OpenAI takes it on responses and batches: up to 16 string values.

use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::api::sampling::bad;

/// `metadata`: at most 16 string values, keys up to 64 characters, values up to 512, no NUL
/// characters; `{}` when absent.
pub fn check_metadata(metadata: Option<&Value>) -> Result<Value, ApiError> {
    match metadata {
        None | Some(Value::Null) => Ok(json!({})),
        Some(Value::Object(m)) => {
            if m.len() > 16 {
                return Err(bad("metadata", "metadata holds at most 16 keys"));
            }
            for (k, v) in m {
                let fits = k.chars().count() <= 64
                    && !k.contains('\0')
                    && v.as_str()
                        .is_some_and(|s| s.chars().count() <= 512 && !s.contains('\0'));
                if !fits {
                    return Err(bad(
                        &format!("metadata.{k}"),
                        "metadata keys are up to 64 characters and values strings up to 512",
                    ));
                }
            }
            Ok(Value::Object(m.clone()))
        }
        Some(_) => Err(bad("metadata", "metadata must be an object of strings")),
    }
}
