//! The `MoneyTransfer` aggregate. Pure: no I/O.
//!
//! A transfer is created `initiated`; the saga (over the rapids) moves it on:
//! `initiated` → `debited` → `completed`; `initiated` → `failed` (debit rejected);
//! `debited` → `refunding` (credit rejected) → `failed` (refunded).
//!
//! Each step is recorded once: the saga's commands say what an account did, and a
//! transfer already past that step decides nothing (a redelivered event appends
//! nothing).

use crate::{Aggregate, Currency, DomainEvent, Money};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum TransferEvent {
    #[serde(rename = "transfer.created")]
    Created { from: Uuid, to: Uuid, amount: i64, currency: Currency, initiated_by: String },
    /// The source was debited; the target is credited next. Carries the movement so
    /// that the account side needs nothing but the event.
    #[serde(rename = "transfer.debited")]
    Debited { from: Uuid, to: Uuid, amount: i64, currency: Currency },
    #[serde(rename = "transfer.completed")]
    Completed {},
    /// The target refused the credit; the source gets its money back.
    #[serde(rename = "transfer.refund_requested")]
    RefundRequested { from: Uuid, to: Uuid, amount: i64, currency: Currency, reason: String },
    #[serde(rename = "transfer.failed")]
    Failed { reason: String, refunded: bool },
}

impl DomainEvent for TransferEvent {
    fn event_type(&self) -> &'static str {
        match self {
            TransferEvent::Created { .. } => "transfer.created",
            TransferEvent::Debited { .. } => "transfer.debited",
            TransferEvent::Completed {} => "transfer.completed",
            TransferEvent::RefundRequested { .. } => "transfer.refund_requested",
            TransferEvent::Failed { .. } => "transfer.failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TransferCommand {
    Create {
        from: Uuid,
        to: Uuid,
        amount: Money,
        initiated_by: String,
    },
    /// What the accounts did (the saga's steps; `reason` is the account's reject reason).
    SourceDebited,
    DebitRejected {
        reason: String,
    },
    TargetCredited,
    CreditRejected {
        reason: String,
    },
    SourceRefunded,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransferError {
    #[error("the transfer already exists")]
    AlreadyExists,
    #[error("a transfer needs two different accounts")]
    SameAccount,
    #[error("no such transfer")]
    NotFound,
    #[error("the transfer is {state}, not yet {step}")]
    NotYet { state: &'static str, step: &'static str },
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransferState {
    #[default]
    New,
    Initiated,
    Debited,
    Refunding,
    Completed,
    Failed,
}

impl TransferState {
    /// How far along the saga the state is.
    fn rank(&self) -> u8 {
        match self {
            TransferState::New => 0,
            TransferState::Initiated => 1,
            TransferState::Debited => 2,
            TransferState::Refunding => 3,
            TransferState::Completed | TransferState::Failed => 4,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            TransferState::New => "new",
            TransferState::Initiated => "initiated",
            TransferState::Debited => "debited",
            TransferState::Refunding => "refunding",
            TransferState::Completed => "completed",
            TransferState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MoneyTransfer {
    pub state: TransferState,
    pub from: Uuid,
    pub to: Uuid,
    pub amount: i64,
    pub currency: Option<Currency>,
    pub initiated_by: String,
    #[serde(default)]
    pub failure_reason: Option<String>,
}

impl MoneyTransfer {
    /// The step's event when the transfer is at `at`; nothing when it is past it (the
    /// step was recorded before: a redelivery). A transfer that does not exist, or is
    /// not yet at the step, is an error (the step's cause cannot have happened yet).
    fn step(
        &self,
        at: TransferState,
        event: impl FnOnce() -> TransferEvent,
    ) -> Result<Vec<TransferEvent>, TransferError> {
        match self.state {
            TransferState::New => Err(TransferError::NotFound),
            state if state == at => Ok(vec![event()]),
            state if state.rank() > at.rank() => Ok(Vec::new()),
            state => Err(TransferError::NotYet { state: state.as_str(), step: at.as_str() }),
        }
    }
}

impl Aggregate for MoneyTransfer {
    const STREAM_TYPE: &'static str = "transfer";
    const SNAPSHOT_SCHEMA_VERSION: i16 = 1;
    type Command = TransferCommand;
    type Event = TransferEvent;
    type Error = TransferError;

    fn decide(&self, command: &TransferCommand) -> Result<Vec<TransferEvent>, TransferError> {
        match command {
            TransferCommand::Create { from, to, amount, initiated_by } => {
                if self.state != TransferState::New {
                    return Err(TransferError::AlreadyExists);
                }
                if from == to {
                    return Err(TransferError::SameAccount);
                }
                Ok(vec![TransferEvent::Created {
                    from: *from,
                    to: *to,
                    amount: amount.minor(),
                    currency: amount.currency(),
                    initiated_by: initiated_by.clone(),
                }])
            }
            TransferCommand::SourceDebited => {
                let currency = self.currency.ok_or(TransferError::NotFound)?;
                self.step(TransferState::Initiated, || TransferEvent::Debited {
                    from: self.from,
                    to: self.to,
                    amount: self.amount,
                    currency,
                })
            }
            TransferCommand::DebitRejected { reason } => self
                .step(TransferState::Initiated, || TransferEvent::Failed { reason: reason.clone(), refunded: false }),
            TransferCommand::TargetCredited => self.step(TransferState::Debited, || TransferEvent::Completed {}),
            TransferCommand::CreditRejected { reason } => {
                let currency = self.currency.ok_or(TransferError::NotFound)?;
                self.step(TransferState::Debited, || TransferEvent::RefundRequested {
                    from: self.from,
                    to: self.to,
                    amount: self.amount,
                    currency,
                    reason: reason.clone(),
                })
            }
            TransferCommand::SourceRefunded => self.step(TransferState::Refunding, || TransferEvent::Failed {
                reason: self.failure_reason.clone().unwrap_or_default(),
                refunded: true,
            }),
        }
    }

    fn apply(mut self, event: &TransferEvent) -> Self {
        match event {
            TransferEvent::Created { from, to, amount, currency, initiated_by } => {
                self.state = TransferState::Initiated;
                self.from = *from;
                self.to = *to;
                self.amount = *amount;
                self.currency = Some(*currency);
                self.initiated_by = initiated_by.clone();
            }
            TransferEvent::Debited { .. } => self.state = TransferState::Debited,
            TransferEvent::Completed {} => self.state = TransferState::Completed,
            TransferEvent::RefundRequested { reason, .. } => {
                self.state = TransferState::Refunding;
                self.failure_reason = Some(reason.clone());
            }
            TransferEvent::Failed { reason, .. } => {
                self.state = TransferState::Failed;
                self.failure_reason = Some(reason.clone());
            }
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aggregate::testing::given;

    fn eur(minor: i64) -> Money {
        Money::new(minor, Currency::parse("EUR").expect("EUR"), i64::MAX).expect("amount")
    }

    #[test]
    fn creating_a_transfer_initiates_it() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let state = given::<MoneyTransfer>(&[])
            .when(&TransferCommand::Create { from: a, to: b, amount: eur(500), initiated_by: "alice".into() })
            .then_events(&[TransferEvent::Created {
                from: a,
                to: b,
                amount: 500,
                currency: Currency::parse("EUR").expect("EUR"),
                initiated_by: "alice".into(),
            }]);
        assert_eq!((state.state, state.amount, state.from, state.to), (TransferState::Initiated, 500, a, b));
    }

    #[test]
    fn a_transfer_to_the_same_account_is_refused() {
        let a = Uuid::now_v7();
        given::<MoneyTransfer>(&[])
            .when(&TransferCommand::Create { from: a, to: a, amount: eur(1), initiated_by: "alice".into() })
            .then_error(&TransferError::SameAccount);
    }

    #[test]
    fn a_transfer_is_created_once() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let created = TransferEvent::Created {
            from: a,
            to: b,
            amount: 1,
            currency: Currency::parse("EUR").expect("EUR"),
            initiated_by: "alice".into(),
        };
        given::<MoneyTransfer>(&[created])
            .when(&TransferCommand::Create { from: a, to: b, amount: eur(1), initiated_by: "alice".into() })
            .then_error(&TransferError::AlreadyExists);
    }

    #[test]
    fn a_step_is_recorded_once_and_never_before_its_cause() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let eur = Currency::parse("EUR").expect("EUR");
        let created = TransferEvent::Created { from: a, to: b, amount: 1, currency: eur, initiated_by: "alice".into() };
        let debited = TransferEvent::Debited { from: a, to: b, amount: 1, currency: eur };
        given::<MoneyTransfer>(std::slice::from_ref(&created))
            .when(&TransferCommand::TargetCredited)
            .then_error(&TransferError::NotYet { state: "initiated", step: "debited" });
        given::<MoneyTransfer>(&[created.clone(), debited.clone()])
            .when(&TransferCommand::SourceDebited)
            .then_events(&[]);
        given::<MoneyTransfer>(&[created, debited, TransferEvent::Completed {}])
            .when(&TransferCommand::CreditRejected { reason: "account_closed".into() })
            .then_events(&[]);
    }
}
