//! account-service's part of the transfer saga: the river `accounts` on `transfer.*`.
//!
//! * `transfer.created` → debit the source (`account.debited` or `account.debit_rejected`);
//! * `transfer.debited` → credit the target (`account.credited` or `account.credit_rejected`);
//! * `transfer.refund_requested` → refund the source (`account.refunded`, or
//!   `account.refund_diverted` to `suspense` when the source was closed meanwhile).
//!
//! The same river reads the tasks addressed to the service (see [`crate::payments`]).
//!
//! Each step runs as a command with an idempotency record keyed by the transfer and
//! the step, written in the same statement as the step's event: a redelivered event
//! meets the record (its append fails on the key, or its refusal finds it) and
//! appends nothing. Transfers run concurrently; the steps of one
//! transfer in order. Each step logs `saga step` with the transfer id, inside the
//! delivery's span (the event's correlation and causation ids, stream and version).

use bank_domain::Aggregate;
use bank_domain::account::{Account, AccountCommand};
use bank_domain::transfer::MoneyTransfer;
use bank_domain::{Currency, Money};
use eventstore::{CommandContext, IdempotencyRequest, Repository};
use rapids::river::{Handler, HandlerError, RiverEvent, by_stream};
use serde::Deserialize;
use sqlx::PgConnection;
use uuid::Uuid;

/// The river's name: its leases, checkpoints and dead letters are kept under it.
pub const RIVER: &str = "accounts";
/// The event types the river reads: the saga's, and the tasks addressed to the service.
pub const TOPICS: &[&str] = &["transfer.*", crate::payments::TOPICS];
/// The idempotency records' actor.
const ACTOR: &str = "saga:accounts";
/// Transfers handled at once within one page of records.
const CONCURRENCY: usize = 64;

/// The movement a transfer event carries (the fields of `transfer.created`,
/// `transfer.debited` and `transfer.refund_requested` the account side needs).
#[derive(Debug, Deserialize)]
struct Movement {
    from: Uuid,
    to: Uuid,
    amount: i64,
    currency: Currency,
}

/// The handler: runs each step against the accounts.
pub struct SagaSteps {
    accounts: Repository<Account>,
    payments: crate::payments::Payments,
}

impl SagaSteps {
    pub fn new(accounts: Repository<Account>, payments: crate::payments::Payments) -> Self {
        SagaSteps { accounts, payments }
    }

    async fn step(&self, event: &RiverEvent) -> Result<(), HandlerError> {
        let envelope = &event.envelope;
        let step = match envelope.event_type.as_str() {
            "transfer.created" => "debit",
            "transfer.debited" => "credit",
            "transfer.refund_requested" => "refund",
            _ => return Ok(()),
        };
        let movement: Movement = serde_json::from_value(envelope.data.clone())
            .map_err(|e| HandlerError::Permanent(format!("{} without a movement: {e}", envelope.event_type)))?;
        let transfer_id = envelope.stream_id;
        let amount = Money::new(movement.amount, movement.currency, i64::MAX)
            .map_err(|e| HandlerError::Permanent(format!("transfer {transfer_id}: {e}")))?;
        let (account, command) = match step {
            "debit" => (movement.from, AccountCommand::Debit { transfer_id, amount, counterparty: movement.to }),
            "credit" => (movement.to, AccountCommand::Credit { transfer_id, amount, counterparty: movement.from }),
            _ => (movement.from, AccountCommand::Refund { transfer_id, amount }),
        };
        let ctx = CommandContext {
            idempotency: Some(IdempotencyRequest {
                actor: ACTOR.into(),
                key: format!("{transfer_id}:{step}"),
                request_hash: format!("{step}:{account}:{}:{}", movement.amount, movement.currency.as_str()),
                // redeliveries are rare: caught by the record's key, not looked up first
                optimistic: true,
            }),
            ..event.causes(transfer_id, ACTOR)
        };
        let done =
            self.accounts.execute(account, command, ctx, |_, version| serde_json::json!({ "version": version })).await;
        // in the delivery's span (correlation and causation ids, the transfer's stream
        // and version): with the transfer id, one grep finds every step of a transfer
        match &done {
            Ok(reply) => tracing::info!(
                transfer_id = %transfer_id,
                step,
                account_id = %account,
                outcome = if reply.replayed { "replayed" } else { "recorded" },
                account_version = reply.body["version"].as_i64(),
                "saga step"
            ),
            Err(error) => tracing::warn!(
                transfer_id = %transfer_id, step, account_id = %account, outcome = "failed", %error, "saga step"
            ),
        }
        done?;
        Ok(())
    }
}

impl Handler for SagaSteps {
    async fn handle(&self, _tx: &mut PgConnection, events: &[RiverEvent]) -> Result<(), HandlerError> {
        // only the transfer aggregate's own events (a task's refusal is `transfer.*` too)
        let transfers: Vec<RiverEvent> =
            events.iter().filter(|e| e.from_aggregate(MoneyTransfer::STREAM_TYPE)).cloned().collect();
        by_stream(&transfers, CONCURRENCY, |event| self.step(event)).await?;
        let tasks: Vec<RiverEvent> = events.iter().filter(|e| crate::payments::is_task(e)).cloned().collect();
        by_stream(&tasks, CONCURRENCY, |event| self.payments.run(event)).await
    }

    /// The steps are commands, idempotent on their own; nothing is written through `tx`.
    fn transactional(&self) -> bool {
        false
    }
}
