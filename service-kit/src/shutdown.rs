//! One cancellation token for the whole process, cancelled by SIGINT or SIGTERM: at
//! once, or after a drain (`SHUTDOWN_DRAIN_MS`) during which `/ready` says the process
//! is stopping while it still serves.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use tokio_util::sync::CancellationToken;

static STOPPING: AtomicBool = AtomicBool::new(false);
static DRAIN_MS: AtomicU64 = AtomicU64::new(0);

/// True once a stop signal arrived (`/ready` answers 503 from then on).
pub fn stopping() -> bool {
    STOPPING.load(Ordering::Relaxed)
}

/// How long the process keeps serving, not ready, between the signal and the stop
/// (set from `SHUTDOWN_DRAIN_MS` when the service's kit is made).
pub fn set_drain(drain: std::time::Duration) {
    DRAIN_MS.store(drain.as_millis() as u64, Ordering::Relaxed);
}

/// A token cancelled on the first SIGINT (Ctrl-C) or SIGTERM.
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {},
            _ = term => {},
        }
        STOPPING.store(true, Ordering::Relaxed);
        let drain = std::time::Duration::from_millis(DRAIN_MS.load(Ordering::Relaxed));
        if !drain.is_zero() {
            tracing::info!(?drain, "shutdown signal received; not ready, still serving while the drain lasts");
            tokio::time::sleep(drain).await;
        }
        tracing::info!("stopping: finishing requests in flight");
        cancel.cancel();
    });
    token
}
