//! The cleanup job of HTTP Idempotency-Key records: every `every`, it deletes the
//! records older than `ttl` in batches of `batch` until none is left, then sleeps.
//!
//! Only HTTP keys expire: a client repeating a request with its key after the TTL
//! makes a new request (keys are honoured for `IDEMPOTENCY_TTL_HOURS`). The saga's
//! step records stay (see [`EventStore::expire_idempotency`]). account-service and
//! transfer-service both run it; concurrent runs skip each other's rows.

use crate::store::EventStore;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// When and how much the job deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiryConfig {
    /// Records created longer ago than this are deleted.
    pub ttl: Duration,
    /// Time between two runs (the first runs at start).
    pub every: Duration,
    /// Most records one statement deletes (a short transaction, short row locks).
    pub batch: i64,
}

/// Runs the job until `shutdown`, counting the deleted records in `expired`. A batch in
/// progress finishes; a failed run is logged and tried again at the next period.
pub async fn run(
    store: EventStore,
    config: ExpiryConfig,
    expired: prometheus::IntCounter,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(config.every.max(Duration::from_millis(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        match expire_all(&store, config, &expired, &shutdown).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, ttl_s = config.ttl.as_secs(), "idempotency records expired"),
            Err(error) => tracing::warn!(%error, "idempotency cleanup failed; trying again next period"),
        }
    }
}

/// Batches until one comes back short (or `shutdown`); the records deleted.
async fn expire_all(
    store: &EventStore,
    config: ExpiryConfig,
    expired: &prometheus::IntCounter,
    shutdown: &CancellationToken,
) -> Result<u64, crate::StoreError> {
    let mut total = 0;
    while !shutdown.is_cancelled() {
        let deleted = store.expire_idempotency(config.ttl, config.batch).await?;
        expired.inc_by(deleted);
        total += deleted;
        if deleted < config.batch.max(1).unsigned_abs() {
            break;
        }
    }
    Ok(total)
}
