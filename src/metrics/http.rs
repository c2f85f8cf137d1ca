//! HTTP request counts and latency, labelled by route template (`/v1/files/{file_id}`, not the
//! concrete path, so the label set stays small) and status.

use super::global;

/// Route label for requests that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// Record one finished request.
pub fn record(method: &str, route: Option<&str>, status: u16, seconds: f64) {
    let m = global();
    let route = route.unwrap_or(UNMATCHED);
    let status = status.to_string();
    m.http_requests
        .with_label_values(&[method, route, &status])
        .inc();
    m.http_latency
        .with_label_values(&[method, route, &status])
        .observe(seconds);
}
