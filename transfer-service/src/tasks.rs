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
use rapids::river::{HandlerError, RiverEvent};
use rapids::tasks::{Refuser, StoredTask};
use service_kit::ErrorCode;

/// The topics of the tasks addressed to this service.
pub const TOPICS: &str = "transfers.*";
/// Create a transfer, as `POST /transfers` does.
pub const CREATE: &str = rapids::tasks::TRANSFER_CREATE;
/// Says why a task was refused.
pub const REJECTED: &str = "transfer.task_rejected";
const REFUSER: Refuser = Refuser { service: "transfer-service", domain: "transfer" };

/// Whether the river's event is a task for this service (posted to the bus).
pub fn is_task(event: &RiverEvent) -> bool {
    rapids::tasks::is_task(event, "transfers.")
}

/// Executes tasks.
pub struct Tasks {
    pub state: AppState,
}

impl Tasks {
    /// Executes one task (idempotent: a redelivery changes nothing).
    pub async fn run(&self, event: &RiverEvent) -> Result<(), HandlerError> {
        let Some(task) = rapids::tasks::load(&self.state.kit.pool, event).await? else { return Ok(()) };
        if task.name != CREATE {
            return self.reject(&task, "unknown_task", "transfer-service handles transfers.transfer.create only").await;
        }
        let body: CreateTransferRequest = match serde_json::from_value(task.data.clone()) {
            Ok(body) => body,
            Err(e) => return self.reject(&task, ErrorCode::InvalidBody.as_str(), &e.to_string()).await,
        };
        let ctx = eventstore::CommandContext {
            metadata: task.causes(&task.metadata.actor, task.metadata.role.clone()),
            idempotency: None,
            expected_version: None,
        };
        let actor = &task.metadata.actor;
        match crate::http::create_transfer(&self.state, actor, &body, ctx, task.id).await {
            Ok(_) => {
                tracing::info!(task_id = %task.id, transfer_id = %task.id, %actor, "task executed: transfer created");
                Ok(())
            }
            // the same task again: its transfer (or its refusal) exists
            Err(e) if e.code == ErrorCode::AlreadyExists => Ok(()),
            Err(e) if matches!(e.code, ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::VersionConflict) => {
                Err(HandlerError::Transient(e.to_string()))
            }
            Err(e) if e.code == ErrorCode::Internal => Err(HandlerError::Permanent(e.to_string())),
            Err(e) => self.reject(&task, e.code.as_str(), &e.message).await,
        }
    }

    async fn reject(&self, task: &StoredTask, code: &str, message: &str) -> Result<(), HandlerError> {
        rapids::tasks::reject(self.state.transfers.store(), REFUSER, task, code, message).await
    }
}
