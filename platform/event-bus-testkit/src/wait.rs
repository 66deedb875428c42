//! Waiting for a condition with a deadline (never a fixed sleep).

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `cond` every few milliseconds until it is true; panics naming `what`
/// if it is still false after `timeout`.
pub async fn until<F: FnMut() -> bool>(timeout: Duration, what: &str, mut cond: F) {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(2);
    while !cond() {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Like [`until`] with an async condition.
pub async fn until_async<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    while !cond().await {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}
