//! actix-web's own rejections — a bad query string or path, and any plain-text error body actix
//! renders itself — turned into OpenAI's error envelope, so a client sees one error shape
//! whatever failed. JSON bodies are parsed by [`super::json_body`], which names the field.

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
