//! The sampling parameters chat and legacy completions share (`temperature`, `top_p`, `n`,
//! penalties, `stop`, `logit_bias`), checked once; every problem is a 400 naming its parameter.

use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;

use crate::api::error::ApiError;
use crate::serve::ChatParams;

/// The shared fields of a request body, as sent (flattened into both request types).
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
pub struct SamplingFields {
    /// 0–2; 0 is greedy.
    #[schema(minimum = 0, maximum = 2)]
    pub temperature: Option<f64>,
    /// Nucleus sampling mass, (0, 1].
    #[schema(exclusive_minimum = 0, maximum = 1)]
    pub top_p: Option<f64>,
    /// Choices to generate (per prompt), 1–128.
    #[schema(minimum = 1, maximum = 128)]
    pub n: Option<usize>,
    /// -2–2.
    #[schema(minimum = -2, maximum = 2)]
    pub presence_penalty: Option<f32>,
    /// -2–2.
    #[schema(minimum = -2, maximum = 2)]
    pub frequency_penalty: Option<f32>,
    /// Up to 4 stop sequences (a string or a list).
    #[schema(schema_with = stop_schema)]
    pub stop: Option<Value>,
    /// Token id → bias (-100–100).
    #[schema(value_type = Option<Object>)]
    pub logit_bias: Option<Value>,
}

/// A 400 for `param`.
pub fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::invalid(message, Some(param))
}

/// `v` within `lo..=hi`, or a 400 for `param`.
pub fn in_range<T: PartialOrd + Copy + std::fmt::Display>(
    v: Option<T>,
    lo: T,
    hi: T,
    param: &str,
) -> Result<(), ApiError> {
    match v {
        Some(x) if !(lo..=hi).contains(&x) => {
            Err(bad(param, format!("{param} must be between {lo} and {hi}")))
        }
        _ => Ok(()),
    }
}

impl SamplingFields {
    /// Check the fields and fill them into engine parameters (the rest left at defaults).
    pub fn params(&self) -> Result<ChatParams, ApiError> {
        in_range(self.temperature, 0.0, 2.0, "temperature")?;
        if self.top_p.is_some_and(|p| p <= 0.0 || p > 1.0) {
            return Err(bad("top_p", "top_p must be in (0, 1]"));
        }
        in_range(self.n, 1, 128, "n")?;
        in_range(self.presence_penalty, -2.0, 2.0, "presence_penalty")?;
        in_range(self.frequency_penalty, -2.0, 2.0, "frequency_penalty")?;
        Ok(ChatParams {
            temperature: self.temperature,
            top_p: self.top_p,
            n: self.n.unwrap_or(1),
            stop: stop(&self.stop)?,
            presence_penalty: self.presence_penalty,
            frequency_penalty: self.frequency_penalty,
            logit_bias: logit_bias(&self.logit_bias)?,
            ..ChatParams::default()
        })
    }
}

/// A string, or a list of strings of `min_items` to `max_items` entries: the schema of
/// `prompt` and `stop`.
pub(crate) fn text_or_texts(
    min_items: Option<usize>,
    max_items: Option<usize>,
) -> utoipa::openapi::schema::OneOfBuilder {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
    let text = || ObjectBuilder::new().schema_type(Type::String);
    OneOfBuilder::new().item(text()).item(
        ArrayBuilder::new()
            .items(text())
            .min_items(min_items)
            .max_items(max_items),
    )
}

/// `stop`'s schema: a string, a list of up to 4, or null.
fn stop_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
    let null = ObjectBuilder::new().schema_type(Type::Null);
    Schema::OneOf(
        text_or_texts(None, Some(4))
            .item(null)
            .description(Some("Up to 4 stop sequences (a string or a list)."))
            .build(),
    )
}

fn stop(value: &Option<Value>) -> Result<Vec<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![s.clone()]),
        Some(Value::Array(list)) if list.len() <= 4 => list
            .iter()
            .map(|s| {
                s.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad("stop", "stop must be a string or a list of strings"))
            })
            .collect(),
        Some(_) => Err(bad(
            "stop",
            "stop must be a string or a list of at most 4 strings",
        )),
    }
}

fn logit_bias(value: &Option<Value>) -> Result<Option<HashMap<u32, f32>>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(map)) => map
            .iter()
            .map(|(k, v)| {
                let id = k
                    .parse::<u32>()
                    .map_err(|_| bad("logit_bias", format!("'{k}' is not a token id")))?;
                let b = v
                    .as_f64()
                    .filter(|b| (-100.0..=100.0).contains(b))
                    .ok_or_else(|| {
                        bad("logit_bias", "biases must be numbers between -100 and 100")
                    })?;
                Ok((id, b as f32))
            })
            .collect::<Result<HashMap<_, _>, ApiError>>()
            .map(Some),
        Some(_) => Err(bad(
            "logit_bias",
            "logit_bias must map token ids to numbers",
        )),
    }
}
