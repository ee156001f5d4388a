//! Tasks: events posted to the event bus whose name is `<service>.<entity>.<request>`,
//! read by the addressed service's river. What a service needs to run one safely:
//!
//! * [`load`] reads the task back from the event store by its id: an envelope on the
//!   stream proves nothing (anyone can put a record on Kinesis), the store's row says
//!   who posted it, with which role and data.
//! * [`reject`] records why a task was refused, once: `<domain>.task_rejected`
//!   (stream type `task`, the task's id as its stream), which a river subscribed to it
//!   sees.

use crate::river::{HandlerError, RiverEvent, UNSEEN_GRACE};
use eventstore::envelope::EventMetadata;
use eventstore::store::{Append, NewEvent};
use eventstore::{EventStore, StoreError};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Create a transfer, as `POST /transfers` does (transfer-service).
pub const TRANSFER_CREATE: &str = "transfers.transfer.create";
/// Receive a payment from another bank (account-service; a rail's only).
pub const PAYMENT_RECEIVE: &str = "accounts.payment.receive";
/// Write the statements of a month (the archiver's statements job; staff or a service).
pub const STATEMENTS_GENERATE: &str = "statements.statement.generate";
/// The tasks the bank's services take: postable without advertising.
pub const BANK_TASKS: &[&str] = &[TRANSFER_CREATE, PAYMENT_RECEIVE, STATEMENTS_GENERATE];

/// The stream type of the refusals.
pub const REJECTION_STREAM_TYPE: &str = "task";

/// Whether the river's event is a task of `prefix` (e.g. `transfers.`), posted to the bus.
pub fn is_task(event: &RiverEvent, prefix: &str) -> bool {
    event.envelope.stream_type == "bus" && event.envelope.event_type.starts_with(prefix)
}

/// A task as the event store holds it.
#[derive(Debug)]
pub struct StoredTask {
    pub id: Uuid,
    /// Its name (`transfers.transfer.create`).
    pub name: String,
    pub data: Value,
    /// Who posted it, with which role, as recorded.
    pub metadata: EventMetadata,
}

impl StoredTask {
    /// The metadata of what the task causes: its correlation kept, caused by the task,
    /// acting as `actor` (the poster, or the service itself).
    pub fn causes(&self, actor: &str, role: Option<String>) -> EventMetadata {
        EventMetadata {
            correlation_id: self.metadata.correlation_id.clone().or_else(|| Some(self.id.to_string())),
            causation_id: Some(self.id.to_string()),
            request_id: None,
            actor: actor.into(),
            role,
            // the delivery's span the task runs in
            traceparent: eventstore::trace::current(),
            ..EventMetadata::default()
        }
    }
}

/// The task `event` carries, read back from the store. `Ok(None)` when the envelope does
/// not match the stored task (ignored). The tailer may publish a commit a moment before
/// other sessions can see it (logical decoding hands it over once its commit record is
/// flushed): an id not in the store is looked for again as long as the rivers look for
/// a reserved event's, then the attempt fails and the river's attempts park what it
/// never holds.
pub async fn load(pool: &PgPool, event: &RiverEvent) -> Result<Option<StoredTask>, HandlerError> {
    let task_id = event.envelope.event_id;
    let mut pause = Duration::from_millis(20);
    let started = Instant::now();
    let (stream_type, name, data, metadata) = loop {
        let stored: Option<(String, String, sqlx::types::Json<Value>, sqlx::types::Json<EventMetadata>)> =
            sqlx::query_as("select stream_type, type, data, metadata from es.events where event_id = $1")
                .bind(task_id)
                .fetch_optional(pool)
                .await
                .map_err(|e| HandlerError::Transient(e.to_string()))?;
        match stored {
            Some(stored) => break stored,
            None if started.elapsed() < UNSEEN_GRACE => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(1));
            }
            None => {
                return Err(HandlerError::Permanent(
                    "a task the event store does not hold (forged, or its commit not visible)".into(),
                ));
            }
        }
    };
    if stream_type != "bus" || name != event.envelope.event_type {
        tracing::warn!(%task_id, "an envelope that does not match its stored task: ignored");
        return Ok(None);
    }
    Ok(Some(StoredTask { id: task_id, name, data: data.0, metadata: metadata.0 }))
}

/// Who refuses a task: the service and its domain (`transfer` → `transfer.task_rejected`).
#[derive(Debug, Clone, Copy)]
pub struct Refuser {
    pub service: &'static str,
    pub domain: &'static str,
}

/// Records why `task` was refused (once: the refusal's stream is the task's id).
pub async fn reject(
    store: &EventStore,
    by: Refuser,
    task: &StoredTask,
    code: &str,
    message: &str,
) -> Result<(), HandlerError> {
    let append = Append {
        stream_id: task.id,
        stream_type: REJECTION_STREAM_TYPE,
        expected_version: 0,
        events: vec![NewEvent {
            event_id: Uuid::now_v7(),
            event_type: format!("{}.task_rejected", by.domain),
            schema_version: 1,
            data: json!({"task_id": task.id, "task": task.name, "code": code, "message": message, "actor": task.metadata.actor}),
            metadata: None,
        }],
        metadata: EventMetadata {
            source: Some(by.domain.into()),
            service: Some(by.service.into()),
            ..task.causes(by.service, None)
        },
        snapshot: None,
        idempotency: Vec::new(),
    };
    match store.append(&append).await {
        Ok(_) => {
            tracing::info!(task_id = %task.id, code, actor = %task.metadata.actor, "task refused");
            Ok(())
        }
        // refused (or executed) before: a redelivery
        Err(StoreError::Conflict { .. }) => Ok(()),
        Err(e) => Err(HandlerError::Transient(e.to_string())),
    }
}
