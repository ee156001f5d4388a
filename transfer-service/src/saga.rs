//! transfer-service's part of the transfer saga: the river `transfers` on `account.*`.
//!
//! * `account.debited` → `transfer.debited`; `account.debit_rejected` → `transfer.failed`;
//! * `account.credited` → `transfer.completed`;
//! * `account.credit_rejected` → `transfer.refund_requested`;
//! * `account.refunded` → `transfer.failed` (refunded); `account.refund_diverted` →
//!   `transfer.failed` (not refunded: the money is in the bank's `suspense`).
//!
//! The transfer's state says which steps were recorded: a step seen again decides
//! nothing, so a redelivered event appends nothing. Other account events are ignored.
//! Each step logs `saga step` with the transfer id (from the account event), inside
//! the delivery's span (the event's correlation and causation ids, stream and version).

use bank_domain::Aggregate;
use bank_domain::account::{Account, AccountEvent};
use bank_domain::transfer::{MoneyTransfer, TransferCommand};
use eventstore::Repository;
use rapids::river::{Handler, HandlerError, RiverEvent, by_stream};
use sqlx::PgConnection;

/// The river's name: its leases, checkpoints and dead letters are kept under it.
pub const RIVER: &str = "transfers";
/// The event types the river reads: the accounts' events, and the tasks addressed
/// to this service ([`crate::tasks`]).
pub const TOPICS: &[&str] = &["account.*", crate::tasks::TOPICS];
const ACTOR: &str = "saga:transfers";
/// Accounts handled at once within one page of records.
const CONCURRENCY: usize = 64;

/// The handler: records what the accounts did on the transfers.
pub struct SagaSteps {
    transfers: Repository<MoneyTransfer>,
    tasks: Option<crate::tasks::Tasks>,
}

impl SagaSteps {
    /// The saga's steps, and the tasks when `tasks` is given.
    pub fn new(transfers: Repository<MoneyTransfer>, tasks: Option<crate::tasks::Tasks>) -> Self {
        SagaSteps { transfers, tasks }
    }

    async fn step(&self, event: &RiverEvent) -> Result<(), HandlerError> {
        let envelope = &event.envelope;
        if !matches!(
            envelope.event_type.as_str(),
            "account.debited"
                | "account.debit_rejected"
                | "account.credited"
                | "account.credit_rejected"
                | "account.refunded"
                | "account.refund_diverted"
        ) {
            return Ok(());
        }
        let account_event: AccountEvent = eventstore::aggregate::decode_versioned(
            &envelope.event_type,
            envelope.schema_version,
            envelope.data.clone(),
        )
        .map_err(|e| HandlerError::Permanent(format!("undecodable {}: {e}", envelope.event_type)))?;
        let (transfer_id, step, command) = match account_event {
            AccountEvent::Debited { transfer_id, .. } => (transfer_id, "debited", TransferCommand::SourceDebited),
            AccountEvent::DebitRejected { transfer_id, reason } => {
                (transfer_id, "debit_rejected", TransferCommand::DebitRejected { reason: reason.as_str().into() })
            }
            AccountEvent::Credited { transfer_id, .. } => (transfer_id, "completed", TransferCommand::TargetCredited),
            AccountEvent::CreditRejected { transfer_id, reason } => {
                (transfer_id, "refund_requested", TransferCommand::CreditRejected { reason: reason.as_str().into() })
            }
            AccountEvent::Refunded { transfer_id, .. } => (transfer_id, "refunded", TransferCommand::SourceRefunded),
            AccountEvent::RefundDiverted { transfer_id, .. } => {
                (transfer_id, "refund_diverted", TransferCommand::SourceRefundDiverted)
            }
            _ => return Ok(()),
        };
        let ctx = event.causes(transfer_id, ACTOR);
        let done = self
            .transfers
            .execute(transfer_id, command, ctx, |_, version| serde_json::json!({ "version": version }))
            .await;
        // in the delivery's span (correlation and causation ids, the account's stream
        // and version); the transfer id comes from the account event
        match &done {
            Ok(reply) => tracing::info!(
                transfer_id = %transfer_id,
                step,
                outcome = "recorded",
                transfer_version = reply.body["version"].as_i64(),
                "saga step"
            ),
            Err(error) => tracing::warn!(transfer_id = %transfer_id, step, outcome = "failed", %error, "saga step"),
        }
        done?;
        Ok(())
    }
}

impl Handler for SagaSteps {
    async fn handle(&self, _tx: &mut PgConnection, events: &[RiverEvent]) -> Result<(), HandlerError> {
        // only the account aggregate's own events
        let accounts: Vec<RiverEvent> =
            events.iter().filter(|e| e.from_aggregate(Account::STREAM_TYPE)).cloned().collect();
        by_stream(&accounts, CONCURRENCY, |event| self.step(event)).await?;
        if let Some(tasks) = &self.tasks {
            let posted: Vec<RiverEvent> = events.iter().filter(|e| crate::tasks::is_task(e)).cloned().collect();
            by_stream(&posted, CONCURRENCY, |event| tasks.run(event)).await?;
        }
        Ok(())
    }

    /// The steps are commands, idempotent on their own; nothing is written through `tx`.
    fn transactional(&self) -> bool {
        false
    }
}
