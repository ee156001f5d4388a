//! The event store and everything that crosses the boundary between services.
//!
//! * [`aggregate`]: the [`Aggregate`] trait (pure `decide` / `apply`) and the
//!   given/when/then helpers for testing aggregates.
//! * [`money`]: the `Money` and `Currency` value types that events carry.
//! * [`envelope`]: event metadata and the JSON envelope that travels on the rapids.
//! * [`store`]: the Postgres event store (append with expected version, load from
//!   snapshot + tail, idempotency records).
//! * [`repository`]: runs commands against aggregates: per-stream serialization,
//!   an in-memory state cache, bounded retries on conflicts, snapshots, idempotency.
//! * [`rapids`]: the Kinesis client configuration shared by services and tools.
//! * [`group_commit`]: concurrent appends share one statement and one commit.
//! * [`metrics`]: the store's Prometheus counters.
//! * [`tailer`]: follows the store's log onto the rapids (Kinesis).
//! * [`river`]: durable subscriptions to the rapids (leases, checkpoints, dead letters).
//! * [`watches`]: waiting for a stream to reach a version, woken by announcements.
#![forbid(unsafe_code)]

pub mod aggregate;
pub mod envelope;
pub mod group_commit;
pub mod metrics;
pub mod money;
pub mod rapids;
pub mod repository;
pub mod river;
pub mod store;
pub mod tailer;
pub mod watches;

pub use aggregate::{Aggregate, DomainEvent};
pub use envelope::EventMetadata;
pub use money::{Currency, Money, MoneyError};
pub use repository::{CommandContext, CommandReply, ExecuteError, IdempotencyRequest, Repository, RepositoryConfig};
pub use store::{EventStore, Loaded, StoreError};
