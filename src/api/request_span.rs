//! One tracing span per HTTP request (method, route template, status, request id — from
//! `tracing-actix-web`) plus its latency, and one `request finished` line when it ends; the same
//! figures feed the HTTP metrics ([`crate::metrics::http`]).

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::{Error, HttpMessage};
use tracing::Span;
use tracing_actix_web::{DefaultRootSpanBuilder, RootSpanBuilder};

/// When the request arrived, kept in its extensions until it ends.
#[derive(Clone, Copy)]
struct Started(Instant);

/// The root span builder the server uses.
pub struct RequestSpan;

impl RootSpanBuilder for RequestSpan {
    fn on_request_start(request: &ServiceRequest) -> Span {
        request.extensions_mut().insert(Started(Instant::now()));
        tracing_actix_web::root_span!(request, latency_ms = tracing::field::Empty)
    }

    fn on_request_end<B: MessageBody>(span: Span, outcome: &Result<ServiceResponse<B>, Error>) {
        let (status, started) = match outcome {
            Ok(res) => (
                res.status().as_u16(),
                res.request().extensions().get::<Started>().copied(),
            ),
            Err(e) => (e.as_response_error().status_code().as_u16(), None),
        };
        let latency_ms = started.map(|s| s.0.elapsed().as_secs_f64() * 1000.0);
        if let Some(ms) = latency_ms {
            span.record("latency_ms", ms);
        }
        if let Ok(res) = outcome {
            let req = res.request();
            crate::metrics::http::record(
                req.method().as_str(),
                req.match_pattern().as_deref(),
                status,
                latency_ms.unwrap_or_default() / 1000.0,
            );
        }
        span.in_scope(|| tracing::info!(status, latency_ms, "request finished"));
        DefaultRootSpanBuilder::on_request_end(span, outcome);
    }
}
