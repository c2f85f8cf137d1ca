//! The wire types of the Batch API (OpenAI's schema names).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::batches::BatchRow;

/// `POST /v1/batches`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
pub struct CreateBatchRequest {
    /// A file uploaded with `purpose=batch`: one request per line.
    #[schema(min_length = 1)]
    pub input_file_id: String,
    /// The endpoint every line calls.
    #[schema(value_type = BatchEndpoint)]
    pub endpoint: String,
    /// Only `24h`.
    #[schema(value_type = CompletionWindow)]
    pub completion_window: String,
    /// Up to 16 string values (keys up to 64 characters, values up to 512).
    #[schema(value_type = Option<HashMap<String, String>>)]
    pub metadata: Option<Value>,
}

/// The endpoints a batch may call.
#[derive(Serialize, utoipa::ToSchema)]
pub enum BatchEndpoint {
    /// Chat completions.
    #[serde(rename = "/v1/chat/completions")]
    #[schema(rename = "/v1/chat/completions")]
    Chat,
    /// Responses.
    #[serde(rename = "/v1/responses")]
    #[schema(rename = "/v1/responses")]
    Responses,
    /// Legacy completions.
    #[serde(rename = "/v1/completions")]
    #[schema(rename = "/v1/completions")]
    Completions,
}

/// The completion windows served.
#[derive(Serialize, utoipa::ToSchema)]
pub enum CompletionWindow {
    /// A day.
    #[serde(rename = "24h")]
    #[schema(rename = "24h")]
    Day,
}

/// `request_counts`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BatchRequestCounts {
    /// Requests in the file.
    pub total: i32,
    /// Answered.
    pub completed: i32,
    /// Failed.
    pub failed: i32,
}

/// `object: "batch"`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BatchObject {
    /// `batch_…`.
    pub id: String,
    /// Always `batch`.
    pub object: &'static str,
    /// The endpoint.
    pub endpoint: String,
    /// The requests file.
    pub input_file_id: String,
    /// `24h`.
    pub completion_window: String,
    /// `validating`, `failed`, `in_progress`, `finalizing`, `completed`, `expired`,
    /// `cancelling` or `cancelled`.
    pub status: String,
    /// The answers (one line per request: `{id, custom_id, response: {status_code,
    /// request_id, body}, error}`).
    pub output_file_id: Option<String>,
    /// The failed requests, in the same shape.
    pub error_file_id: Option<String>,
    /// Why the batch failed: `{object: "list", data: [{code, message, line, param}]}`.
    #[schema(value_type = Option<Object>)]
    pub errors: Option<Value>,
    /// Counts so far.
    pub request_counts: BatchRequestCounts,
    /// The caller's metadata.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<Value>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub in_progress_at: Option<i64>,
    /// Unix seconds.
    pub expires_at: Option<i64>,
    /// Unix seconds.
    pub finalizing_at: Option<i64>,
    /// Unix seconds.
    pub completed_at: Option<i64>,
    /// Unix seconds.
    pub failed_at: Option<i64>,
    /// Unix seconds.
    pub expired_at: Option<i64>,
    /// Unix seconds.
    pub cancelling_at: Option<i64>,
    /// Unix seconds.
    pub cancelled_at: Option<i64>,
}

impl From<BatchRow> for BatchObject {
    fn from(r: BatchRow) -> Self {
        let unix = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.timestamp());
        Self {
            id: r.id,
            object: "batch",
            endpoint: r.endpoint,
            input_file_id: r.input_file_id,
            completion_window: r.completion_window,
            status: r.status,
            output_file_id: r.output_file_id,
            error_file_id: r.error_file_id,
            errors: r.errors,
            request_counts: BatchRequestCounts {
                total: r.total,
                completed: r.completed,
                failed: r.failed,
            },
            metadata: r.metadata,
            created_at: r.created_at.timestamp(),
            in_progress_at: unix(r.in_progress_at),
            expires_at: Some(r.expires_at.timestamp()),
            finalizing_at: unix(r.finalizing_at),
            completed_at: unix(r.completed_at),
            failed_at: unix(r.failed_at),
            expired_at: unix(r.expired_at),
            cancelling_at: unix(r.cancelling_at),
            cancelled_at: unix(r.cancelled_at),
        }
    }
}

/// `GET /v1/batches`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BatchList {
    /// Always `list`.
    pub object: &'static str,
    /// Newest first.
    pub data: Vec<BatchObject>,
    /// The first batch's id.
    pub first_id: Option<String>,
    /// The last batch's id.
    pub last_id: Option<String>,
    /// More after the last.
    pub has_more: bool,
}

/// Query of `GET /v1/batches`.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct BatchListQuery {
    /// 1–100 (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// A batch id: list the batches after it.
    pub after: Option<String>,
}
