//! A bound on how long a request body may stall: every request's payload is wrapped so that a
//! read waiting longer than the timeout for the next bytes fails. The handler then answers 408
//! and drops what it was writing (an upload's temporary file is removed), so a client that sends
//! headers and half a body, or a multipart body without its closing boundary, cannot hold a
//! connection, a file descriptor and a temporary file forever.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::dev::{Payload, ServiceRequest};
use actix_web::error::PayloadError;
use actix_web::web::Bytes;
use futures_util::Stream;

use super::error::ApiError;

const MESSAGE: &str = "the request body stalled";

/// A payload whose reads fail after `timeout` without new bytes.
struct IdleTimeout {
    inner: Payload,
    timeout: Duration,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Stream for IdleTimeout {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if let Poll::Ready(item) = Pin::new(&mut this.inner).poll_next(cx) {
            this.sleep = None;
            return Poll::Ready(item);
        }
        let timeout = this.timeout;
        let sleep = this
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                this.sleep = None;
                let e = std::io::Error::new(std::io::ErrorKind::TimedOut, MESSAGE);
                Poll::Ready(Some(Err(PayloadError::Io(e))))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Wrap `req`'s payload so that a read stalls at most `timeout`.
pub fn bound(req: &mut ServiceRequest, timeout: Duration) {
    let (_, payload) = req.parts_mut();
    let inner = std::mem::replace(payload, Payload::None);
    *payload = Payload::Stream {
        payload: Box::pin(IdleTimeout {
            inner,
            timeout,
            sleep: None,
        }),
    };
}

/// Whether a multipart error is this bound firing.
pub fn timed_out(e: &actix_multipart::MultipartError) -> bool {
    matches!(e, actix_multipart::MultipartError::Payload(p) if is_timeout(p))
}

/// Whether a payload error is this bound firing.
pub fn is_timeout(e: &PayloadError) -> bool {
    matches!(e, PayloadError::Io(io) if io.kind() == std::io::ErrorKind::TimedOut)
}

/// 408: the body stopped arriving.
pub fn error() -> ApiError {
    ApiError::request_timeout("The request body stopped arriving before it was complete")
}
