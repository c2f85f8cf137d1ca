//! actix-web's own rejections — a body that is not the JSON asked for, a bad query string or
//! path, and any plain-text error body actix renders itself — turned into OpenAI's error
//! envelope, so a client sees one error shape whatever failed.

use actix_web::body::EitherBody;
use actix_web::dev::ServiceResponse;
use actix_web::http::header::CONTENT_TYPE;
use actix_web::middleware::ErrorHandlerResponse;
use actix_web::{HttpRequest, ResponseError};

use super::error::ApiError;

/// Middleware hook: replace any non-JSON error body (actix's defaults) with the envelope.
pub fn envelope_plain_errors<B>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .response()
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let (req, _) = res.into_parts();
    let response = ApiError::for_status(status, &req).error_response();
    let res: ServiceResponse<EitherBody<B>> =
        ServiceResponse::new(req, response).map_into_right_body();
    Ok(ErrorHandlerResponse::Response(res))
}

/// Render a JSON body rejection (malformed JSON, wrong types, missing fields, too large).
pub fn json_rejection(
    err: actix_web::error::JsonPayloadError,
    _: &HttpRequest,
) -> actix_web::Error {
    use actix_web::error::JsonPayloadError as E;
    let api = match &err {
        E::Overflow { .. } | E::OverflowKnownLength { .. } => {
            ApiError::too_large("The JSON body is too large")
        }
        E::ContentType => ApiError::invalid(
            "The request body must be JSON with Content-Type: application/json",
            None,
        ),
        E::Deserialize(e) => {
            let text = e.to_string();
            let param = text
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next());
            ApiError::invalid(format!("Invalid JSON body: {text}"), param)
        }
        E::Payload(p) if super::body_timeout::is_timeout(p) => super::body_timeout::error(),
        other => ApiError::invalid(format!("Invalid JSON body: {other}"), None),
    };
    api.into()
}

/// Render a query-string rejection.
pub fn query_rejection(
    err: actix_web::error::QueryPayloadError,
    _: &HttpRequest,
) -> actix_web::Error {
    ApiError::invalid(format!("Invalid query parameters: {err}"), None).into()
}

/// Render a path rejection.
pub fn path_rejection(err: actix_web::error::PathError, _: &HttpRequest) -> actix_web::Error {
    ApiError::invalid(format!("Invalid path: {err}"), None).into()
}
