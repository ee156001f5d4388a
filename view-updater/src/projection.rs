//! The projections, pure: how one event changes an account's or a transfer's view row
//! (and which transaction row it adds). The live updater and the rebuild both fold
//! events with these functions; they differ only in where rows are read and written.
//!
//! Events are decoded with their schema version (an envelope or a row of an older one
//! is upcast first, as the event store does): a version-1 `transfer.created`, still in
//! the store and perhaps on the stream, projects with an empty memo.

use bank_domain::account::AccountEvent;
use bank_domain::transfer::TransferEvent;
use chrono::{DateTime, Utc};
use eventstore::DomainEvent;
use eventstore::envelope::{Envelope, RecordedEvent};
use serde_json::Value;
use uuid::Uuid;

/// What the projections need of an event, from the rapids or from the store.
#[derive(Debug, Clone)]
pub struct ViewEvent {
    pub stream_id: Uuid,
    pub stream_type: String,
    pub version: i32,
    pub event_type: String,
    /// The version of `data`'s shape, as stored.
    pub schema_version: i16,
    pub data: Value,
    pub recorded_at: DateTime<Utc>,
}

impl ViewEvent {
    pub fn at(&self) -> At {
        At { stream_id: self.stream_id, version: self.version, recorded_at: self.recorded_at }
    }
}

/// Where an event stands in its stream: all the projections take from it besides the
/// typed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct At {
    pub stream_id: Uuid,
    pub version: i32,
    pub recorded_at: DateTime<Utc>,
}

impl From<&Envelope> for ViewEvent {
    fn from(e: &Envelope) -> Self {
        ViewEvent {
            stream_id: e.stream_id,
            stream_type: e.stream_type.clone(),
            version: e.version,
            event_type: e.event_type.clone(),
            schema_version: e.schema_version,
            data: e.data.clone(),
            recorded_at: e.recorded_at,
        }
    }
}

impl From<RecordedEvent> for ViewEvent {
    fn from(e: RecordedEvent) -> Self {
        ViewEvent {
            stream_id: e.stream_id,
            stream_type: e.stream_type,
            version: e.version,
            event_type: e.event_type,
            schema_version: e.schema_version,
            data: e.data,
            recorded_at: e.recorded_at,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct AccountView {
    pub id: Uuid,
    pub owner: String,
    pub currency: String,
    pub status: String,
    pub balance: i64,
    pub version: i32,
    pub opened_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One balance change of an account.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TransactionRow {
    pub account_id: Uuid,
    pub version: i32,
    /// `deposit`, `withdrawal`, `payment_in`, `payment_out`, `transfer_debit`,
    /// `transfer_credit`, `refund`.
    pub kind: String,
    /// Always positive; `kind` says which way it moved.
    pub amount: i64,
    pub currency: String,
    pub balance_after: i64,
    pub transfer_id: Option<Uuid>,
    pub counterparty: Option<Uuid>,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TransferView {
    pub id: Uuid,
    pub from_account: Uuid,
    pub to_account: Uuid,
    pub amount: i64,
    pub currency: String,
    pub state: String,
    pub failure_reason: Option<String>,
    pub initiated_by: String,
    /// Empty when the transfer has none.
    pub memo: String,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("cannot read {event_type} of {stream_id}: {message}")]
    Undecodable { stream_id: Uuid, event_type: String, message: String },
    #[error("{stream_id} has {event_type} at version {version} before it was created")]
    BeforeCreation { stream_id: Uuid, event_type: String, version: i32 },
}

/// The typed account event of `e`, upcast from its schema version.
pub fn decode_event(e: &ViewEvent) -> Result<AccountEvent, ProjectionError> {
    decode(e)
}

/// The typed event, upcast from its schema version.
fn decode<E: DomainEvent>(e: &ViewEvent) -> Result<E, ProjectionError> {
    eventstore::aggregate::decode_versioned(&e.event_type, e.schema_version, e.data.clone())
        .map_err(|err| undecodable(e.stream_id, &e.event_type, err))
}

/// The typed event from `data` as the store keeps it (JSON text), upcast from its
/// schema version: what [`decode`] gives for the same event, without building a
/// `serde_json::Value` first when no upcasting step applies (the rebuild's hot path).
/// `scratch` is a buffer reused from one call to the next.
pub fn decode_text<E: DomainEvent>(
    stream_id: Uuid,
    event_type: &str,
    schema_version: i16,
    data: &str,
    scratch: &mut Vec<u8>,
) -> Result<E, ProjectionError> {
    // below the code's version, the upcasting steps work on a `Value`
    if schema_version.max(1) < E::schema_version(event_type) {
        let data: Value = serde_json::from_str(data).map_err(|err| undecodable(stream_id, event_type, err))?;
        return eventstore::aggregate::decode_versioned(event_type, schema_version, data)
            .map_err(|err| undecodable(stream_id, event_type, err));
    }
    // the `{"type", "data"}` shape that `eventstore::aggregate::decode` builds as a `Value`
    let codec = |source| {
        let err = eventstore::aggregate::EventCodecError::Decode { event_type: event_type.to_owned(), source };
        undecodable(stream_id, event_type, err)
    };
    scratch.clear();
    scratch.extend_from_slice(b"{\"type\":");
    serde_json::to_writer(&mut *scratch, event_type).map_err(codec)?;
    scratch.extend_from_slice(b",\"data\":");
    scratch.extend_from_slice(data.as_bytes());
    scratch.push(b'}');
    serde_json::from_slice(scratch).map_err(codec)
}

fn undecodable(stream_id: Uuid, event_type: &str, err: impl std::fmt::Display) -> ProjectionError {
    ProjectionError::Undecodable { stream_id, event_type: event_type.to_owned(), message: err.to_string() }
}

/// Applies an account event (the next version) to its view. Returns the new view and
/// the balance change it recorded, if any.
pub fn apply_account(
    view: Option<AccountView>,
    e: &ViewEvent,
) -> Result<(AccountView, Option<TransactionRow>), ProjectionError> {
    project_account(view, e.at(), &decode(e)?)
}

/// [`apply_account`], and the legs of the event's posting on the bank's own accounts.
pub fn apply_account_with_legs(
    view: Option<AccountView>,
    e: &ViewEvent,
    legs: &mut BankLegs,
) -> Result<(AccountView, Option<TransactionRow>), ProjectionError> {
    let event = decode(e)?;
    legs.add(e.stream_id, &event, 1);
    project_account(view, e.at(), &event)
}

/// What account events did to the bank's own accounts (which have no stream): per
/// account, its currency, the change of its balance and the number of postings.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct BankLegs(pub std::collections::BTreeMap<Uuid, (String, i64, i64)>);

impl BankLegs {
    /// Adds (`sign` 1) or takes back (-1) the bank's legs of `account`'s event.
    pub fn add(&mut self, account: Uuid, event: &AccountEvent, sign: i64) {
        let Some(p) = bank_domain::ledger::posting(account, event) else { return };
        for (side, change) in [(p.from, -p.amount), (p.to, p.amount)] {
            if bank_domain::ledger::BankAccount::from_id(side).is_some() {
                let entry = self.0.entry(side).or_insert_with(|| (p.currency.as_str().to_owned(), 0, 0));
                entry.1 += sign * change;
                entry.2 += sign;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// [`apply_account`] for an event already decoded.
pub fn project_account(
    view: Option<AccountView>,
    e: At,
    event: &AccountEvent,
) -> Result<(AccountView, Option<TransactionRow>), ProjectionError> {
    let mut view = match (view, event) {
        (_, AccountEvent::Opened { owner, currency }) => AccountView {
            id: e.stream_id,
            owner: owner.clone(),
            currency: currency.as_str().to_owned(),
            status: "open".into(),
            balance: 0,
            version: e.version,
            opened_at: e.recorded_at,
            updated_at: e.recorded_at,
        },
        (Some(view), _) => view,
        (None, _) => {
            return Err(ProjectionError::BeforeCreation {
                stream_id: e.stream_id,
                event_type: event.event_type().to_owned(),
                version: e.version,
            });
        }
    };
    view.version = e.version;
    view.updated_at = e.recorded_at;
    let change = |kind: &str, amount: i64, currency: &bank_domain::Currency, after: i64, transfer, counterparty| {
        Some(TransactionRow {
            account_id: e.stream_id,
            version: e.version,
            kind: kind.into(),
            amount,
            currency: currency.as_str().to_owned(),
            balance_after: after,
            transfer_id: transfer,
            counterparty,
            recorded_at: e.recorded_at,
        })
    };
    let row = match event {
        AccountEvent::Opened { .. }
        | AccountEvent::DebitRejected { .. }
        | AccountEvent::CreditRejected { .. }
        | AccountEvent::RefundDiverted { .. } => None,
        AccountEvent::Closed {} => {
            view.status = "closed".into();
            None
        }
        AccountEvent::Deposited { amount, currency, balance_after } => {
            change("deposit", *amount, currency, *balance_after, None, None)
        }
        AccountEvent::Withdrawn { amount, currency, balance_after } => {
            change("withdrawal", *amount, currency, *balance_after, None, None)
        }
        AccountEvent::PaymentReceived { amount, currency, balance_after, .. } => {
            change("payment_in", *amount, currency, *balance_after, None, None)
        }
        AccountEvent::PaymentSent { amount, currency, balance_after, .. } => {
            change("payment_out", *amount, currency, *balance_after, None, None)
        }
        AccountEvent::Debited { transfer_id, amount, currency, balance_after, counterparty } => {
            change("transfer_debit", *amount, currency, *balance_after, Some(*transfer_id), Some(*counterparty))
        }
        AccountEvent::Credited { transfer_id, amount, currency, balance_after, counterparty } => {
            change("transfer_credit", *amount, currency, *balance_after, Some(*transfer_id), Some(*counterparty))
        }
        AccountEvent::Refunded { transfer_id, amount, currency, balance_after } => {
            change("refund", *amount, currency, *balance_after, Some(*transfer_id), None)
        }
    };
    if let Some(row) = &row {
        view.balance = row.balance_after;
    }
    Ok((view, row))
}

/// Applies a transfer event (the next version) to its view.
pub fn apply_transfer(view: Option<TransferView>, e: &ViewEvent) -> Result<TransferView, ProjectionError> {
    project_transfer(view, e.at(), &decode(e)?)
}

/// [`apply_transfer`] for an event already decoded.
pub fn project_transfer(
    view: Option<TransferView>,
    e: At,
    event: &TransferEvent,
) -> Result<TransferView, ProjectionError> {
    let mut view = match (view, event) {
        (_, TransferEvent::Created { from, to, amount, currency, initiated_by, memo }) => TransferView {
            id: e.stream_id,
            from_account: *from,
            to_account: *to,
            amount: *amount,
            currency: currency.as_str().to_owned(),
            state: "initiated".into(),
            failure_reason: None,
            initiated_by: initiated_by.clone(),
            memo: memo.clone(),
            version: e.version,
            created_at: e.recorded_at,
            updated_at: e.recorded_at,
        },
        (Some(view), _) => view,
        (None, _) => {
            return Err(ProjectionError::BeforeCreation {
                stream_id: e.stream_id,
                event_type: event.event_type().to_owned(),
                version: e.version,
            });
        }
    };
    view.version = e.version;
    view.updated_at = e.recorded_at;
    match event {
        TransferEvent::Created { .. } => {}
        TransferEvent::Debited { .. } => view.state = "debited".into(),
        TransferEvent::Completed {} => view.state = "completed".into(),
        TransferEvent::RefundRequested { reason, .. } => {
            view.state = "refunding".into();
            view.failure_reason = Some(reason.clone());
        }
        TransferEvent::Failed { reason, .. } => {
            view.state = "failed".into();
            view.failure_reason = Some(reason.clone());
        }
    }
    Ok(view)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(version: i32, event_type: &str, data: Value) -> ViewEvent {
        ViewEvent {
            stream_id: Uuid::nil(),
            stream_type: "account".into(),
            version,
            event_type: event_type.into(),
            schema_version: 1,
            data,
            recorded_at: DateTime::from_timestamp(1_700_000_000 + i64::from(version), 0).unwrap_or_default(),
        }
    }

    #[test]
    fn an_account_view_follows_its_balance_changes() {
        let (view, row) =
            apply_account(None, &event(1, "account.opened", json!({"owner": "alice", "currency": "EUR"}))).unwrap();
        assert!(row.is_none());
        assert_eq!((view.status.as_str(), view.balance, view.version), ("open", 0, 1));
        let (view, row) = apply_account(
            Some(view),
            &event(2, "account.deposited", json!({"amount": 100, "currency": "EUR", "balance_after": 100})),
        )
        .unwrap();
        assert_eq!((view.balance, view.version), (100, 2));
        assert_eq!(row.map(|r| (r.kind, r.amount, r.balance_after)), Some(("deposit".into(), 100, 100)));
        let t = Uuid::now_v7();
        let other = Uuid::now_v7();
        let (view, row) = apply_account(
            Some(view),
            &event(
                3,
                "account.debited",
                json!({"transfer_id": t, "amount": 40, "currency": "EUR", "balance_after": 60, "counterparty": other}),
            ),
        )
        .unwrap();
        assert_eq!(view.balance, 60);
        let row = row.unwrap();
        assert_eq!((row.kind.as_str(), row.transfer_id, row.counterparty), ("transfer_debit", Some(t), Some(other)));
        let (view, row) = apply_account(
            Some(view),
            &event(4, "account.debit_rejected", json!({"transfer_id": t, "reason": "insufficient_funds"})),
        )
        .unwrap();
        assert_eq!((view.balance, view.version, row), (60, 4, None));
    }

    #[test]
    fn decoding_the_stored_text_gives_what_decoding_the_value_gives() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let created = json!({"from": a, "to": b, "amount": 5, "currency": "EUR", "initiated_by": "alice"});
        let mut with_memo = created.clone();
        with_memo["memo"] = "rent".into();
        let mut scratch = Vec::new();
        // version 1 (upcast), version 2, and a version newer than the code's
        for (schema_version, data) in [(1, created), (2, with_memo.clone()), (3, with_memo)] {
            let mut e = event(1, "transfer.created", data);
            e.schema_version = schema_version;
            let text = e.data.to_string();
            let typed: TransferEvent =
                decode_text(e.stream_id, &e.event_type, schema_version, &text, &mut scratch).unwrap();
            assert_eq!(typed, decode::<TransferEvent>(&e).unwrap(), "version {schema_version}");
        }
        let deposit = json!({"amount": 1, "currency": "EUR", "balance_after": 1, "unknown": [1]});
        let typed: AccountEvent =
            decode_text(Uuid::nil(), "account.deposited", 1, &deposit.to_string(), &mut scratch).unwrap();
        assert_eq!(typed, decode::<AccountEvent>(&event(2, "account.deposited", deposit)).unwrap());
        let wrong = decode_text::<AccountEvent>(Uuid::nil(), "account.deposited", 1, r#"{"amount": 1}"#, &mut scratch);
        assert!(matches!(wrong, Err(ProjectionError::Undecodable { .. })), "{wrong:?}");
    }

    #[test]
    fn an_event_before_the_opening_is_an_error() {
        let deposit = event(2, "account.deposited", json!({"amount": 1, "currency": "EUR", "balance_after": 1}));
        assert!(matches!(apply_account(None, &deposit), Err(ProjectionError::BeforeCreation { .. })));
    }

    #[test]
    fn a_transfer_view_follows_its_states() {
        let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
        let created = json!({"from": a, "to": b, "amount": 5, "currency": "EUR", "initiated_by": "alice"});
        // version 1 (no memo), as every transfer before memos was stored
        let view = apply_transfer(None, &event(1, "transfer.created", created.clone())).unwrap();
        assert_eq!((view.state.as_str(), view.memo.as_str()), ("initiated", ""));
        let mut v2 = event(1, "transfer.created", created);
        v2.schema_version = 2;
        v2.data["memo"] = "rent".into();
        assert_eq!(apply_transfer(None, &v2).unwrap().memo, "rent");
        let moved = json!({"from": a, "to": b, "amount": 5, "currency": "EUR", "reason": "account_closed"});
        let view = apply_transfer(Some(view), &event(2, "transfer.debited", moved.clone())).unwrap();
        let view = apply_transfer(Some(view), &event(3, "transfer.refund_requested", moved)).unwrap();
        assert_eq!((view.state.as_str(), view.failure_reason.as_deref()), ("refunding", Some("account_closed")));
        let failed = json!({"reason": "account_closed", "refunded": true});
        let view = apply_transfer(Some(view), &event(4, "transfer.failed", failed)).unwrap();
        assert_eq!((view.state.as_str(), view.version), ("failed", 4));
    }
}
