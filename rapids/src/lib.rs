//! The rapids: the Kinesis stream every service publishes to (through the tailer) and
//! reads from (through rivers).
//!
//! * [`kinesis`]: the client ([`Rapids`]): construction, stream set-up, puts and reads.
//! * [`river`]: durable subscriptions: per-shard leases in Postgres, checkpoints in the
//!   handler's transaction, parents before children after a reshard, dead letters.
//! * [`tasks`]: what a service needs to run a task posted to the bus: read it back from
//!   the store, record a refusal.
//! * [`config`]: the command-line/environment arguments of the stream and of a river.
//!
//! The tailer (crate `tailer`) depends on this crate, never the other way round: the
//! two agree only on [`PUBLISHED_CHANNEL`] and [`LATENCY_BUCKETS`], defined here.
#![forbid(unsafe_code)]

pub mod config;
pub mod kinesis;
pub mod river;
pub mod tasks;

pub use kinesis::{Rapids, RapidsConfig, describe};

/// The Postgres NOTIFY channel on which the tailer announces that it published a
/// batch; river readers sharing the database wake on it instead of waiting to poll.
pub const PUBLISHED_CHANNEL: &str = "rapids_published";

/// The channel an instance of a river NOTIFYs (payload: the river's name) when it gives
/// its leases up on a clean stop: the other instances take the shards at once.
pub const LEASES_RELEASED_CHANNEL: &str = "rapids_leases_released";

/// Buckets (seconds) of the rapids' latency histograms: publish lag, GetRecords,
/// delivery. Fine between 10 ms and 1 s, where the saga's steps fall.
pub const LATENCY_BUCKETS: [f64; 25] = [
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.125, 0.15, 0.2, 0.25, 0.35, 0.5,
    0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
];
