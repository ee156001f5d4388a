//! Prometheus counters of the event store and the command repository.

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// The store's counters, most labelled by stream type. Cloning shares them.
#[derive(Debug, Clone)]
pub struct StoreMetrics {
    /// Successful appends (one per command that wrote events).
    pub appends: IntCounterVec,
    /// Events written by those appends.
    pub events: IntCounterVec,
    /// Appends that lost an optimistic-concurrency race.
    pub conflicts: IntCounterVec,
    /// Commands re-run after a conflict.
    pub retries: IntCounterVec,
    /// Responses replayed from an Idempotency-Key record.
    pub idempotent_replays: IntCounterVec,
    /// HTTP Idempotency-Key records deleted by the cleanup job (all stream types).
    pub idempotency_expired: IntCounter,
}

impl StoreMetrics {
    /// Creates the counters and registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), &["stream_type"])?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let idempotency_expired = IntCounter::new(
            "es_idempotency_expired_total",
            "HTTP Idempotency-Key records deleted after IDEMPOTENCY_TTL_HOURS",
        )?;
        registry.register(Box::new(idempotency_expired.clone()))?;
        Ok(StoreMetrics {
            appends: counter("es_appends_total", "Appends committed to the event store")?,
            events: counter("es_events_appended_total", "Events committed to the event store")?,
            conflicts: counter("es_append_conflicts_total", "Appends refused by optimistic concurrency")?,
            retries: counter("es_command_retries_total", "Commands retried after a concurrency conflict")?,
            idempotent_replays: counter(
                "es_idempotent_replays_total",
                "Responses replayed for a repeated Idempotency-Key",
            )?,
            idempotency_expired,
        })
    }
}
