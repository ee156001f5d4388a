//! The `MoneyTransfer` aggregate. Pure: no I/O.
//!
//! A transfer is created `initiated`; the saga (over the rapids) moves it on:
//! `initiated` → `debited` → `completed`; `initiated` → `failed` (debit rejected);
//! `debited` → `refunding` (credit rejected) → `failed` (refunded).
//!
//! Each step is recorded once: the saga's commands say what an account did, and a
//! transfer already past that step decides nothing (a redelivered event appends
//! nothing).
//!
//! `transfer.created` is at schema version 2, which added the `memo` (version 1, every
//! transfer created before, had none: [`TransferEvent::upcast`] gives it an empty one).
//! The other transfer events are still at version 1.

use crate::{Aggregate, Currency, DomainEvent, Money};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// The payer's note on a transfer: at most [`Memo::MAX_CHARS`] characters, no control
/// characters; empty when there is none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Memo(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoError {
    #[error("the memo is longer than {max} characters", max = Memo::MAX_CHARS)]
    TooLong,
    #[error("the memo contains a control character")]
    ControlCharacter,
}

impl Memo {
    /// The longest memo, in characters (Unicode scalar values).
    pub const MAX_CHARS: usize = 140;

    /// A memo from what a client sent; an empty one is no memo.
    pub fn parse(memo: &str) -> Result<Memo, MemoError> {
        if memo.chars().count() > Self::MAX_CHARS {
            return Err(MemoError::TooLong);
        }
        if memo.chars().any(char::is_control) {
            return Err(MemoError::ControlCharacter);
        }
        Ok(Memo(memo.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "data")]
pub enum TransferEvent {
    /// Schema version 2 added `memo` (empty: none); version 1 is upcast to it.
    #[serde(rename = "transfer.created")]
    Created { from: Uuid, to: Uuid, amount: i64, currency: Currency, initiated_by: String, memo: String },
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
    fn schema_version(event_type: &str) -> i16 {
        match event_type {
            "transfer.created" => 2,
            _ => 1,
        }
    }

    fn upcast(event_type: &str, from: i16, mut data: Value) -> Value {
        if let ("transfer.created", 1, Value::Object(fields)) = (event_type, from, &mut data) {
            // version 1 had no memo: a field of that name was unknown then, so ignored
            fields.insert("memo".into(), Value::String(String::new()));
        }
        data
    }

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
        memo: Memo,
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
    /// The source was closed meanwhile: its refund went to the bank's `suspense` account.
    SourceRefundDiverted,
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
    /// Empty when the transfer has none.
    #[serde(default)]
    pub memo: String,
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
    /// 2: the state gained `memo` (snapshots of version 1 are replayed instead).
    const SNAPSHOT_SCHEMA_VERSION: i16 = 2;
    type Command = TransferCommand;
    type Event = TransferEvent;
    type Error = TransferError;

    fn decide(&self, command: &TransferCommand) -> Result<Vec<TransferEvent>, TransferError> {
        match command {
            TransferCommand::Create { from, to, amount, initiated_by, memo } => {
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
                    memo: memo.as_str().to_owned(),
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
            TransferCommand::SourceRefundDiverted => self.step(TransferState::Refunding, || TransferEvent::Failed {
                reason: self.failure_reason.clone().unwrap_or_default(),
                refunded: false,
            }),
        }
    }

    fn apply(mut self, event: &TransferEvent) -> Self {
        match event {
            TransferEvent::Created { from, to, amount, currency, initiated_by, memo } => {
                self.state = TransferState::Initiated;
                self.memo = memo.clone();
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
            .when(&TransferCommand::Create {
                from: a,
                to: b,
                amount: eur(500),
                initiated_by: "alice".into(),
                memo: Memo::default(),
            })
            .then_events(&[TransferEvent::Created {
                from: a,
                to: b,
                amount: 500,
                currency: Currency::parse("EUR").expect("EUR"),
                initiated_by: "alice".into(),
                memo: String::new(),
            }]);
        assert_eq!((state.state, state.amount, state.from, state.to), (TransferState::Initiated, 500, a, b));
    }

    #[test]
    fn a_transfer_to_the_same_account_is_refused() {
        let a = Uuid::now_v7();
        given::<MoneyTransfer>(&[])
            .when(&TransferCommand::Create {
                from: a,
                to: a,
                amount: eur(1),
                initiated_by: "alice".into(),
                memo: Memo::default(),
            })
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
            memo: String::new(),
        };
        given::<MoneyTransfer>(&[created])
            .when(&TransferCommand::Create {
                from: a,
                to: b,
                amount: eur(1),
                initiated_by: "alice".into(),
                memo: Memo::default(),
            })
            .then_error(&TransferError::AlreadyExists);
    }

    #[test]
    fn a_step_is_recorded_once_and_never_before_its_cause() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let eur = Currency::parse("EUR").expect("EUR");
        let created = TransferEvent::Created {
            from: a,
            to: b,
            amount: 1,
            currency: eur,
            initiated_by: "alice".into(),
            memo: String::new(),
        };
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

    #[test]
    fn a_memo_is_at_most_140_characters_without_control_characters() {
        assert_eq!(Memo::parse("").map(|m| m.as_str().to_owned()), Ok(String::new()));
        assert!(Memo::parse(&"x".repeat(140)).is_ok());
        // characters, not bytes
        assert!(Memo::parse(&"é".repeat(140)).is_ok());
        assert_eq!(Memo::parse(&"x".repeat(141)), Err(MemoError::TooLong));
        for bad in ["rent\n", "a\tb", "\u{0}", "\u{7f}", "\u{85}"] {
            assert_eq!(Memo::parse(bad), Err(MemoError::ControlCharacter), "{bad:?}");
        }
    }

    #[test]
    fn the_memo_is_recorded_and_kept_in_the_state() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let memo = Memo::parse("rent for März").expect("memo");
        let state = given::<MoneyTransfer>(&[])
            .when(&TransferCommand::Create { from: a, to: b, amount: eur(5), initiated_by: "alice".into(), memo })
            .then_events(&[TransferEvent::Created {
                from: a,
                to: b,
                amount: 5,
                currency: Currency::parse("EUR").expect("EUR"),
                initiated_by: "alice".into(),
                memo: "rent for März".into(),
            }]);
        assert_eq!(state.memo, "rent for März");
    }

    fn v1_created(a: Uuid, b: Uuid) -> serde_json::Value {
        serde_json::json!({"from": a, "to": b, "amount": 7, "currency": "EUR", "initiated_by": "alice"})
    }

    #[test]
    fn a_version_1_created_is_upcast_to_an_empty_memo() {
        use crate::aggregate::{decode, decode_versioned, upcast};
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        // the enum knows only the newest shape: without the step, version 1 does not decode
        assert!(decode::<TransferEvent>("transfer.created", v1_created(a, b)).is_err());
        let mut upcast_data = v1_created(a, b);
        upcast_data["memo"] = "".into();
        assert_eq!(upcast::<TransferEvent>("transfer.created", 1, v1_created(a, b)), upcast_data);

        let event: TransferEvent = decode_versioned("transfer.created", 1, v1_created(a, b)).expect("decodes");
        let TransferEvent::Created { memo, amount, .. } = &event else { panic!("{event:?}") };
        assert_eq!((memo.as_str(), *amount), ("", 7));
        assert_eq!(MoneyTransfer::default().apply(&event).memo, "");

        // unknown fields of version 1 stay ignored, one named memo too (it meant nothing then)
        let mut odd = v1_created(a, b);
        odd["channel"] = "atm".into();
        odd["memo"] = "not a memo in version 1".into();
        let back: TransferEvent = decode_versioned("transfer.created", 1, odd).expect("decodes");
        assert_eq!(back, event);
    }

    #[test]
    fn only_transfer_created_changed_version() {
        use crate::aggregate::{encode, upcast};
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        assert_eq!(TransferEvent::schema_version("transfer.created"), 2);
        for other in ["transfer.debited", "transfer.completed", "transfer.refund_requested", "transfer.failed"] {
            assert_eq!(TransferEvent::schema_version(other), 1, "{other}");
        }
        // the step touches transfer.created only
        let debited = serde_json::json!({"from": a, "to": b, "amount": 7, "currency": "EUR"});
        assert_eq!(upcast::<TransferEvent>("transfer.debited", 1, debited.clone()), debited);
        // the current version is decoded as it is, and so is a newer one (it only adds fields)
        let mut v2 = v1_created(a, b);
        v2["memo"] = "kept".into();
        assert_eq!(upcast::<TransferEvent>("transfer.created", 2, v2.clone()), v2);
        let mut v3 = v2.clone();
        v3["tag"] = "later".into();
        assert_eq!(upcast::<TransferEvent>("transfer.created", 3, v3.clone()), v3);
        // and what is written is version 2's shape
        let event: TransferEvent = crate::aggregate::decode("transfer.created", v2.clone()).expect("decodes");
        assert_eq!(encode(&event).expect("encodes"), ("transfer.created".to_owned(), v2));
    }

    #[test]
    fn a_version_1_snapshot_state_reads_with_an_empty_memo() {
        // the store ignores snapshots of another schema version; the state itself still
        // reads without the field (serde default), so nothing else breaks on it
        let state: MoneyTransfer = serde_json::from_value(serde_json::json!({
            "state": "initiated", "from": Uuid::nil(), "to": Uuid::nil(), "amount": 1,
            "currency": "EUR", "initiated_by": "alice", "failure_reason": null
        }))
        .expect("reads");
        assert_eq!(state.memo, "");
    }
}
