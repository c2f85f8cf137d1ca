//! Waiting for something the system does in the background: one `eventually` for every test.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`eventually`] asks again.
const EVERY: Duration = Duration::from_millis(20);

/// Ask `check` until it gives `Some`, for at most `within`: the value, or a panic naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(EVERY).await;
    }
}
