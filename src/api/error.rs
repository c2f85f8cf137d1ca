//! The one HTTP error type: every failure leaves the server as OpenAI's error envelope
//! `{"error": {"message", "type", "param", "code"}}`, including actix's own rejections.

use actix_web::http::StatusCode;
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde::Serialize;

use crate::answers::AnswerError;
use crate::domain::DomainError;
use crate::serve::ServeError;
use crate::store::StoreError;

/// An error as the client sees it.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    kind: &'static str,
    param: Option<String>,
    code: Option<String>,
    /// Seconds the client should wait before retrying (`Retry-After`).
    retry_after: Option<u64>,
}

/// The envelope's inner object.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorObject {
    /// Human-readable description.
    pub message: String,
    /// `invalid_request_error`, `server_error`, …
    #[serde(rename = "type")]
    pub kind: String,
    /// The offending parameter, if any.
    pub param: Option<String>,
    /// A machine-readable code, if any.
    pub code: Option<String>,
}

/// `{"error": {...}}`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorObject,
}

impl ApiError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            kind,
            param: None,
            code: None,
            retry_after: None,
        }
    }

    /// 400 `invalid_request_error`.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self {
            param: param.map(str::to_owned),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
        }
    }

    /// 404 for an object that does not exist (or belongs to someone else).
    pub fn not_found(what: &str, id: &str) -> Self {
        Self {
            param: Some("id".to_owned()),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("No such {what}: '{id}'"),
            )
        }
    }

    /// 404 `model_not_found`, as OpenAI words it.
    pub fn not_found_model(model: &str) -> Self {
        Self {
            param: Some("model".to_owned()),
            ..Self::new(
                StatusCode::NOT_FOUND,
                "invalid_request_error",
                format!("The model `{model}` does not exist or you do not have access to it."),
            )
        }
        .with_code("model_not_found")
    }

    /// 503 when a model cannot be made ready.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message)
            .with_code("model_unavailable")
    }

    /// 507 when the server's disk is full (the request may be retried once space is freed).
    pub fn storage_full() -> Self {
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "server_error",
            "No space left on the server's disk; try again later",
        )
        .with_code("storage_full")
    }

    /// 408 when the request body stops arriving.
    pub fn request_timeout(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "invalid_request_error",
            message,
        )
        .with_code("request_timeout")
    }

    /// 429 `rate_limit_exceeded` (OpenAI's `requests` type) with `Retry-After`: the server is
    /// doing as much of this as it allows at once.
    pub fn busy(message: impl Into<String>, retry_after_seconds: u64) -> Self {
        Self {
            retry_after: Some(retry_after_seconds),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "requests", message)
                .with_code("rate_limit_exceeded")
        }
    }

    /// 409 for a state conflict.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "invalid_request_error", message).with_code("conflict")
    }

    /// 401 with `invalid_api_key`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "invalid_request_error", message)
            .with_code("invalid_api_key")
    }

    /// 413 for an oversize body.
    pub fn too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            message,
        )
        .with_code("payload_too_large")
    }

    /// 500: logs the cause, shows the client a fixed message.
    pub fn internal(cause: impl std::fmt::Debug) -> Self {
        tracing::error!(error = ?cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "The server had an error while processing your request.",
        )
    }

    /// Set the machine-readable code.
    pub fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_owned());
        self
    }

    /// Set the offending parameter.
    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_owned());
        self
    }

    /// The envelope for an error status that reached us without one (unknown route, wrong
    /// method, …).
    pub fn for_status(status: StatusCode, req: &HttpRequest) -> Self {
        match status {
            StatusCode::NOT_FOUND => Self::new(
                status,
                "invalid_request_error",
                format!(
                    "Unknown request URL: {} {}. Please check the URL for typos.",
                    req.method(),
                    req.path()
                ),
            )
            .with_code("unknown_url"),
            StatusCode::METHOD_NOT_ALLOWED => Self::new(
                status,
                "invalid_request_error",
                format!("Method {} is not allowed for {}", req.method(), req.path()),
            )
            .with_code("method_not_allowed"),
            StatusCode::PAYLOAD_TOO_LARGE => Self::too_large("The request body is too large"),
            s if s.is_server_error() => Self::internal(format!("{s} for {}", req.path())),
            s => Self::new(
                s,
                "invalid_request_error",
                s.canonical_reason().unwrap_or("Request failed").to_owned(),
            ),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status, self.message)
    }
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        self.status
    }

    fn error_response(&self) -> HttpResponse {
        let mut response = HttpResponse::build(self.status);
        if let Some(seconds) = self.retry_after {
            response.insert_header(("Retry-After", seconds.to_string()));
        }
        response.json(ErrorResponse {
            error: ErrorObject {
                message: self.message.clone(),
                kind: self.kind.to_owned(),
                param: self.param.clone(),
                code: self.code.clone(),
            },
        })
    }
}

impl From<DomainError> for ApiError {
    fn from(e: DomainError) -> Self {
        let mut err = Self::invalid(e.message, e.param.as_deref());
        err.code = e.code.map(str::to_owned);
        err
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnknownCursor(id) => Self::invalid(
                format!("No object with id '{id}' to list after"),
                Some("after"),
            ),
            e if e.is_unstorable_text() => Self::invalid(
                "A text value in the request holds a character that cannot be stored (NUL)",
                None,
            ),
            e if e.is_storage_full() => Self::storage_full(),
            e @ StoreError::Remote { .. } => {
                tracing::error!(error = %e, "object store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "server_error",
                    "The server's object store is unavailable; try again later",
                )
                .with_code("storage_unavailable")
            }
            other => Self::internal(other),
        }
    }
}

impl From<ServeError> for ApiError {
    fn from(e: ServeError) -> Self {
        match e {
            ServeError::Invalid(m) => ApiError::invalid(m, None),
            ServeError::Load { .. } => ApiError::unavailable(e.to_string()),
            ServeError::Engine(_) => ApiError::internal(e),
            ServeError::Stopped => ApiError::unavailable(e.to_string()),
        }
    }
}

impl From<AnswerError> for ApiError {
    fn from(e: AnswerError) -> Self {
        match e {
            AnswerError::ModelNotFound(model) => Self::not_found_model(&model),
            AnswerError::MemberGone { .. } => {
                Self::invalid(e.to_string(), Some("model")).with_code("model_not_found")
            }
            AnswerError::Invalid { message, param } => Self::invalid(message, Some(param)),
            AnswerError::Store(e) => e.into(),
            AnswerError::Serve(e) => e.into(),
            AnswerError::Internal(m) => Self::internal(m),
        }
    }
}
