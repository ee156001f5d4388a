//! Tasks addressed to transfer-service: events posted to the event bus whose first
//! segment is `transfers` (`<service>.<entity>.<request>`), read by the river
//! `transfers` beside the saga's account events.
//!
//! One task is handled: `transfers.transfer.create`, with the body of `POST
//! /transfers`, executed with the rights of the actor who posted it (as the event
//! store recorded them: an envelope on the stream proves nothing, so the task is read
//! back from the store by its id). The transfer's id is the task's id, so the same
//! task twice creates one transfer; its events carry the task's id as causation. A
//! refused task produces `transfer.task_rejected` (stream type `task`, the task's id
//! as its stream) saying why, which a river subscribed to it sees.

use crate::AppState;
use bank_api::transfers::CreateTransferRequest;
use eventstore::StoreError;
use eventstore::envelope::EventMetadata;
use eventstore::store::{Append, NewEvent};
use rapids::river::{HandlerError, RiverEvent, UNSEEN_GRACE};
use serde_json::{Value, json};
use service_kit::ErrorCode;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// The topics of the tasks addressed to this service.
pub const TOPICS: &str = "transfers.*";
/// Create a transfer, as `POST /transfers` does.
pub const CREATE: &str = "transfers.transfer.create";
/// Says why a task was refused.
pub const REJECTED: &str = "transfer.task_rejected";
/// The stream type of the refusals.
pub const REJECTION_STREAM_TYPE: &str = "task";
const SERVICE: &str = "transfer-service";

/// Whether the river's event is a task for this service (posted to the bus).
pub fn is_task(event: &RiverEvent) -> bool {
    event.envelope.stream_type == "bus" && event.envelope.event_type.starts_with("transfers.")
}

/// Executes tasks.
pub struct Tasks {
    pub state: AppState,
}

impl Tasks {
    /// Executes one task (idempotent: a redelivery changes nothing).
    pub async fn run(&self, event: &RiverEvent) -> Result<(), HandlerError> {
        let task_id = event.envelope.event_id;
        // the tailer may publish a commit a moment before other sessions can see it
        // (logical decoding hands it over once its commit record is flushed): an id
        // not in the store is looked for again as long as the rivers look for a
        // reserved event's, then the river's attempts go on and park what it never holds
        let mut pause = Duration::from_millis(20);
        let started = Instant::now();
        let (stream_type, task, data, metadata) = loop {
            let stored: Option<(String, String, sqlx::types::Json<Value>, sqlx::types::Json<EventMetadata>)> =
                sqlx::query_as("select stream_type, type, data, metadata from es.events where event_id = $1")
                    .bind(task_id)
                    .fetch_optional(&self.state.kit.pool)
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
        if stream_type != "bus" || task != event.envelope.event_type {
            tracing::warn!(%task_id, "an envelope that does not match its stored task: ignored");
            return Ok(());
        }
        let metadata = metadata.0;
        if task != CREATE {
            return self
                .reject(
                    event,
                    &metadata,
                    &task,
                    "unknown_task",
                    "transfer-service handles transfers.transfer.create only",
                )
                .await;
        }
        let body: CreateTransferRequest = match serde_json::from_value(data.0) {
            Ok(body) => body,
            Err(e) => {
                return self.reject(event, &metadata, &task, ErrorCode::InvalidBody.as_str(), &e.to_string()).await;
            }
        };
        let ctx = eventstore::CommandContext {
            metadata: EventMetadata {
                correlation_id: metadata.correlation_id.clone().or_else(|| Some(task_id.to_string())),
                causation_id: Some(task_id.to_string()),
                request_id: None,
                actor: metadata.actor.clone(),
                role: metadata.role.clone(),
                ..EventMetadata::default()
            },
            idempotency: None,
            expected_version: None,
        };
        match crate::http::create_transfer(&self.state, &metadata.actor, &body, ctx, task_id).await {
            Ok(_) => {
                tracing::info!(%task_id, transfer_id = %task_id, actor = %metadata.actor, "task executed: transfer created");
                Ok(())
            }
            // the same task again: its transfer (or its refusal) exists
            Err(e) if e.code == ErrorCode::AlreadyExists => Ok(()),
            Err(e) if matches!(e.code, ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::VersionConflict) => {
                Err(HandlerError::Transient(e.to_string()))
            }
            Err(e) if e.code == ErrorCode::Internal => Err(HandlerError::Permanent(e.to_string())),
            Err(e) => self.reject(event, &metadata, &task, e.code.as_str(), &e.message).await,
        }
    }

    /// Records why a task was refused (once: the refusal's stream is the task's id).
    async fn reject(
        &self,
        event: &RiverEvent,
        task_metadata: &EventMetadata,
        task: &str,
        code: &str,
        message: &str,
    ) -> Result<(), HandlerError> {
        let task_id = event.envelope.event_id;
        let append = Append {
            stream_id: task_id,
            stream_type: REJECTION_STREAM_TYPE,
            expected_version: 0,
            events: vec![NewEvent {
                event_id: Uuid::now_v7(),
                event_type: REJECTED.into(),
                schema_version: 1,
                data: json!({"task_id": task_id, "task": task, "code": code, "message": message, "actor": task_metadata.actor}),
            }],
            metadata: EventMetadata {
                correlation_id: task_metadata.correlation_id.clone().or_else(|| Some(task_id.to_string())),
                causation_id: Some(task_id.to_string()),
                request_id: None,
                actor: SERVICE.into(),
                source: Some("transfer".into()),
                service: Some(SERVICE.into()),
                ..EventMetadata::default()
            },
            snapshot: None,
            idempotency: None,
        };
        match self.state.transfers.store().append(&append).await {
            Ok(_) => {
                tracing::info!(%task_id, code, actor = %task_metadata.actor, "task refused");
                Ok(())
            }
            // refused (or executed) before: a redelivery
            Err(StoreError::Conflict { .. }) => Ok(()),
            Err(e) => Err(HandlerError::Transient(e.to_string())),
        }
    }
}
