//! Payments from other banks: the task `accounts.payment.receive`, posted to the event
//! bus by a payment rail (a token of role `service`) and read by the river `accounts`.
//!
//! The task is read back from the event store (the recorded role, never the
//! envelope's, says whether a rail posted it), then the account takes the payment: a
//! posting `inbound` → account. The idempotency record is keyed by the rail and its
//! payment reference (never expiring), so the same reference twice, in one task
//! delivered again or in a second task, is one payment. A refusal (not a rail, a bad
//! body, no such account, a closed one, the reference reused for another payment) is
//! recorded as `account.task_rejected`.

use bank_api::accounts::ReceivePaymentTask;
use bank_domain::account::{Account, AccountCommand};
use bank_domain::{Currency, Money};
use eventstore::{CommandContext, IdempotencyRequest, Repository};
use rapids::river::{HandlerError, RiverEvent};
use rapids::tasks::{Refuser, StoredTask};
use service_kit::{ApiError, ErrorCode};
use sqlx::PgPool;

/// The topics of the tasks addressed to this service.
pub const TOPICS: &str = "accounts.*";
/// Receive a payment from another bank.
pub const RECEIVE: &str = rapids::tasks::PAYMENT_RECEIVE;
/// The actor of the payments' idempotency records: `saga:` records never expire.
const ACTOR: &str = "saga:payments";
const REFUSER: Refuser = Refuser { service: "account-service", domain: "account" };

/// Whether the river's event is a task for this service (posted to the bus).
pub fn is_task(event: &RiverEvent) -> bool {
    rapids::tasks::is_task(event, "accounts.")
}

/// Executes the payment tasks.
pub struct Payments {
    pub accounts: Repository<Account>,
    pub pool: PgPool,
    pub max_amount: i64,
}

impl Payments {
    /// Executes one task (idempotent: a redelivery, or the same reference again, changes nothing).
    pub async fn run(&self, event: &RiverEvent) -> Result<(), HandlerError> {
        let Some(task) = rapids::tasks::load(&self.pool, event).await? else { return Ok(()) };
        if task.name != RECEIVE {
            return self.reject(&task, "unknown_task", "account-service handles accounts.payment.receive only").await;
        }
        if task.metadata.role.as_deref() != Some("service") {
            return self
                .reject(&task, ErrorCode::Forbidden.as_str(), "only a payment rail (role service) posts payments")
                .await;
        }
        let (account, reference, amount) = match self.parse(&task) {
            Ok(parsed) => parsed,
            Err(e) => return self.reject(&task, e.code.as_str(), &e.message).await,
        };
        let rail = &task.metadata.actor;
        // the same reference with another payment is refused, not taken for a repeat
        let request_hash = format!("receive:{account}:{}:{}", amount.minor(), amount.currency().as_str());
        let ctx = CommandContext {
            metadata: task.causes(rail, task.metadata.role.clone()),
            idempotency: Some(IdempotencyRequest {
                actor: ACTOR.into(),
                // a subject never holds `:`, so the key splits one way only
                key: format!("{rail}:{reference}"),
                request_hash,
                optimistic: false,
            }),
            expected_version: None,
        };
        let command = AccountCommand::ReceivePayment { reference, amount };
        let done = self.accounts.execute(account, command, ctx, |_, v| serde_json::json!({ "version": v })).await;
        match done.map_err(ApiError::from) {
            Ok(reply) => {
                tracing::info!(task_id = %task.id, account_id = %account, %rail, replayed = reply.replayed, "payment received");
                Ok(())
            }
            Err(e) if matches!(e.code, ErrorCode::Unavailable | ErrorCode::Timeout | ErrorCode::VersionConflict) => {
                Err(HandlerError::Transient(e.to_string()))
            }
            Err(e) if e.code == ErrorCode::Internal => Err(HandlerError::Permanent(e.to_string())),
            Err(e) => self.reject(&task, e.code.as_str(), &e.message).await,
        }
    }

    /// The account, the reference and the amount, or why the task's data is refused.
    fn parse(&self, task: &StoredTask) -> Result<(uuid::Uuid, String, Money), ApiError> {
        let body: ReceivePaymentTask = serde_json::from_value(task.data.clone())
            .map_err(|e| ApiError::new(ErrorCode::InvalidBody, e.to_string()))?;
        if !bank_domain::ledger::valid_reference(&body.reference) {
            return Err(ApiError::new(ErrorCode::InvalidBody, "reference must be 1 to 64 of A-Z a-z 0-9 . _ : / -"));
        }
        let currency = Currency::parse(&body.currency)?;
        let amount = Money::from_json(&body.amount, currency, self.max_amount)?;
        Ok((body.account, body.reference, amount))
    }

    async fn reject(&self, task: &StoredTask, code: &str, message: &str) -> Result<(), HandlerError> {
        rapids::tasks::reject(self.accounts.store(), REFUSER, task, code, message).await
    }
}
