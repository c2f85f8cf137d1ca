//! The JSON request body extractor: actix's `web::Json`, except that a body that does not fit the
//! request type names the offending field as the error's `param` — its path, such as
//! `max_tokens` or `messages[0].role` — as every other 400 does.

use actix_web::dev::Payload;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::web::BytesMut;
use actix_web::{FromRequest, HttpRequest};
use futures_util::StreamExt;
use futures_util::future::LocalBoxFuture;
use serde::de::DeserializeOwned;

use super::body_timeout;
use super::error::ApiError;

/// The largest JSON body accepted (actix's `JsonConfig` default).
pub const LIMIT: usize = 2 * 1024 * 1024;

/// A request body parsed as JSON into `T`.
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<T> JsonBody<T> {
    /// The parsed value.
    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> std::ops::Deref for JsonBody<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0
    }
}

/// Whether the request says its body is JSON (a `json` subtype or a `+json` suffix, as actix's
/// `web::Json` accepts).
fn is_json(req: &HttpRequest) -> bool {
    let Some(value) = req.headers().get(CONTENT_TYPE) else {
        return false;
    };
    let essence = value
        .to_str()
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let subtype = essence.split_once('/').map_or("", |(_, s)| s);
    subtype == "json" || subtype.ends_with("+json")
}

/// The 400 for a body that is not the request type: for a field of the wrong type or value, its
/// path as the parameter (for a missing field, the field's name); for JSON that does not parse,
/// or a body that is not an object, no parameter.
fn mismatch(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let data = e.inner().classify() == serde_json::error::Category::Data;
    let text = e.into_inner().to_string();
    if !data {
        return ApiError::invalid(format!("Invalid JSON body: {text}"), None);
    }
    let missing = text
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
        .map(str::to_owned);
    let param = missing.or((path != ".").then_some(path));
    ApiError::invalid(format!("Invalid JSON body: {text}"), param.as_deref())
}

/// `value` read as the request type `T`, with the 400 a request body of that JSON would get.
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(mismatch)
}

impl<T: DeserializeOwned + 'static> FromRequest for JsonBody<T> {
    type Error = ApiError;
    type Future = LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let json = is_json(req);
        let mut payload = payload.take();
        Box::pin(async move {
            if !json {
                return Err(ApiError::invalid(
                    "The request body must be JSON with Content-Type: application/json",
                    None,
                ));
            }
            let mut body = BytesMut::new();
            while let Some(chunk) = payload.next().await {
                let chunk = chunk.map_err(|e| {
                    if body_timeout::is_timeout(&e) {
                        body_timeout::error()
                    } else {
                        ApiError::invalid(format!("Invalid JSON body: {e}"), None)
                    }
                })?;
                if body.len() + chunk.len() > LIMIT {
                    return Err(ApiError::too_large("The JSON body is too large"));
                }
                body.extend_from_slice(&chunk);
            }
            // A request is an object: another JSON value is refused before serde reads an
            // array as a struct's fields in order.
            if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
                return Err(ApiError::invalid(
                    "Invalid JSON body: the request body must be a JSON object",
                    None,
                ));
            }
            let de = &mut serde_json::Deserializer::from_slice(&body);
            serde_path_to_error::deserialize(de)
                .map(JsonBody)
                .map_err(mismatch)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)] // fields read by serde only
    struct Request {
        model: String,
        max_tokens: Option<usize>,
        messages: Vec<Message>,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Message {
        role: String,
    }

    fn error_of(body: &str) -> serde_json::Value {
        let de = &mut serde_json::Deserializer::from_str(body);
        let e = serde_path_to_error::deserialize::<_, Request>(de).unwrap_err();
        let res = actix_web::ResponseError::error_response(&mismatch(e));
        let bytes = actix_web::rt::System::new()
            .block_on(actix_web::body::to_bytes(res.into_body()))
            .unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn a_mistyped_field_is_named_by_its_path() {
        let e = error_of(r#"{"model": "m", "max_tokens": -1, "messages": []}"#);
        assert_eq!(e["error"]["param"], "max_tokens", "{e}");
        let e = error_of(r#"{"model": "m", "messages": [{"role": 1}]}"#);
        assert_eq!(e["error"]["param"], "messages[0].role", "{e}");
        let e = error_of(r#"{"messages": []}"#);
        assert_eq!(e["error"]["param"], "model", "{e}");
        // JSON that does not parse, or is not an object: no field to name.
        for body in [r#"{"model":"#, "1"] {
            let e = error_of(body);
            assert_eq!(e["error"]["param"], serde_json::Value::Null, "{body}: {e}");
        }
    }
}
