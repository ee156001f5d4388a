//! The event-sourcing core on Postgres: it runs any [`Aggregate`] (the trait lives in
//! the pure `bank-domain` crate) and knows nothing of HTTP or Kinesis.
//!
//! * [`envelope`]: event metadata and the JSON envelope that travels on the rapids.
//! * [`store`]: the Postgres event store (append with expected version, load from
//!   snapshot + tail, idempotency records).
//! * [`repository`]: runs commands against aggregates: per-stream serialization,
//!   an in-memory state cache, bounded retries on conflicts, snapshots, idempotency.
//! * [`expiry`]: the cleanup job of HTTP Idempotency-Key records (the saga's stay).
//! * [`group_commit`]: concurrent appends share one statement and one commit.
//! * [`metrics`]: the store's Prometheus counters.
//! * [`watches`]: waiting for a stream to reach a version, woken by announcements.
//! * [`trace`]: the W3C trace context events carry from span to span.
#![forbid(unsafe_code)]

pub mod envelope;
pub mod expiry;
pub mod group_commit;
pub mod identity;
pub mod metrics;
pub mod repository;
pub mod store;
pub mod trace;
pub mod watches;

pub use bank_domain::aggregate::{self, Aggregate, DomainEvent};
pub use envelope::EventMetadata;
pub use repository::{CommandContext, CommandReply, ExecuteError, IdempotencyRequest, Repository, RepositoryConfig};
pub use store::{EventStore, Loaded, PastState, StoreError};
