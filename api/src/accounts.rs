//! account-service's contract: opening an account, deposits and withdrawals, the
//! command side's view of an account (now, at a time or at a version), its history
//! and its transfers, all from the event store.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// `POST /accounts`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    #[schema(schema_with = crate::currency_schema)]
    pub currency: String,
    /// In minor units; 0 or absent opens an empty account.
    #[serde(default)]
    #[schema(value_type = Option<i64>, minimum = 0, maximum = 1_000_000_000)]
    pub initial_deposit: Option<serde_json::Number>,
    /// Who owns the account (staff open accounts for customers; a customer may name
    /// only themselves). Absent: the caller. A non-zero `initial_deposit` is cash taken
    /// in: staff only.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9_.@-]{1,128}$")]
    pub owner: Option<String>,
}

/// `POST /accounts/{id}/deposits` and `/withdrawals`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AmountRequest {
    /// In minor units, at most `MAX_AMOUNT_MINOR` (default 1,000,000,000).
    #[schema(value_type = i64, minimum = 1, maximum = 1_000_000_000)]
    pub amount: serde_json::Number,
    #[schema(schema_with = crate::currency_schema)]
    pub currency: String,
    /// Optional optimistic check: refuse with 409 unless the account is at this version.
    #[serde(default, deserialize_with = "crate::optional_version")]
    #[schema(minimum = 0, maximum = 2147483647)]
    pub expected_version: Option<i32>,
}

/// `POST /accounts/{id}/payments`: a payment to another bank (account → `outbound`).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentRequest {
    /// In minor units, at most `MAX_AMOUNT_MINOR` (default 1,000,000,000).
    #[schema(value_type = i64, minimum = 1, maximum = 1_000_000_000)]
    pub amount: serde_json::Number,
    #[schema(schema_with = crate::currency_schema)]
    pub currency: String,
    /// The payment's reference for the receiving bank (absent: one is made).
    #[serde(default)]
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:/-]+$")]
    pub reference: Option<String>,
    /// Optional optimistic check: refuse with 409 unless the account is at this version.
    #[serde(default, deserialize_with = "crate::optional_version")]
    #[schema(minimum = 0, maximum = 2147483647)]
    pub expected_version: Option<i32>,
}

/// The data of the task `accounts.payment.receive` that a payment rail (role
/// `service`) posts to the event bus: a payment from another bank, posted `inbound` →
/// account exactly once per the rail's reference.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReceivePaymentTask {
    /// The rail's payment reference: the same reference twice is one payment.
    #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:/-]+$")]
    pub reference: String,
    pub account: Uuid,
    #[schema(value_type = i64, minimum = 1, maximum = 1_000_000_000)]
    pub amount: serde_json::Number,
    #[schema(schema_with = crate::currency_schema)]
    pub currency: String,
}

/// An account after a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccountReply {
    pub id: Uuid,
    /// The account's stream version after the command: read the views with `min_version` set to it.
    pub version: i32,
    pub owner: String,
    #[schema(example = "EUR")]
    pub currency: String,
    #[schema(value_type = String, pattern = "^(open|closed)$")]
    pub status: String,
    /// In minor units.
    pub balance: i64,
}

/// One balance change, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct RecentTransaction {
    #[schema(value_type = String, pattern = "^(credit|debit)$")]
    pub kind: String,
    /// The event type, e.g. `account.deposited`.
    #[serde(rename = "type")]
    pub event_type: String,
    #[schema(value_type = Option<i64>)]
    pub amount: Option<Value>,
    #[schema(value_type = Option<String>)]
    pub currency: Option<Value>,
    #[schema(value_type = Option<i64>)]
    pub balance_after: Option<Value>,
    #[schema(value_type = Option<Uuid>)]
    pub transfer_id: Option<Value>,
    pub version: i32,
    pub recorded_at: chrono::DateTime<chrono::Utc>,
}

/// An account with its 20 newest transactions, from the event store (now, or as it was
/// at `as_of` or `at_version`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccountDetail {
    #[serde(flatten)]
    pub account: AccountReply,
    pub recent_transactions: Vec<RecentTransaction>,
    /// The time asked for, in UTC (a read with `as_of` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of: Option<DateTime<Utc>>,
    /// The version asked for (a read with `at_version` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at_version: Option<i32>,
}

/// `GET /accounts/{id}`: the account as it was at a time or at a version (neither: the
/// account now; both: the earlier of the two points).
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadQuery {
    /// The account as of this time (RFC 3339; write `+` as `%2B` in a URL): its events
    /// recorded at or before it. Before the account was opened: 404 `account_not_found`.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "optional_rfc3339")]
    pub as_of: Option<DateTime<Utc>>,
    /// The account as it was at this version. Past the account's version: 409
    /// `version_not_reached` with `current_version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 2147483647)]
    pub at_version: Option<i64>,
}

/// An optional RFC 3339 time (`2024-05-01T12:00:00Z`, `…+02:00`), strictly: the
/// lenient forms chrono would also read (a space for the `T`) are not the contract's.
pub fn optional_rfc3339<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    let Some(text) = Option::<String>::deserialize(d)? else { return Ok(None) };
    DateTime::parse_from_rfc3339(&text).map(|t| Some(t.with_timezone(&Utc))).map_err(|e| {
        serde::de::Error::custom(format!(
            "as_of is not an RFC 3339 time such as 2024-05-01T12:00:00Z ({e}; write + as %2B in a URL)"
        ))
    })
}

/// `GET /accounts/{id}/history`: a page of the account's events.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// The cursor: the events after this version (`next_after_version` of the previous
    /// page; default 0, from the first event).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 0, maximum = 2147483647)]
    pub after_version: Option<i64>,
    /// Events per page (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// One event of an account, as the event store recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryEvent {
    pub version: i32,
    /// The event type, e.g. `account.deposited`.
    #[serde(rename = "type")]
    pub event_type: String,
    pub event_id: Uuid,
    /// The schema version of `data`, as stored.
    pub schema_version: i16,
    /// The event's data, as stored.
    #[schema(value_type = Object)]
    pub data: Value,
    pub recorded_at: DateTime<Utc>,
    /// The token subject (or service) that acted.
    pub actor: String,
    pub request_id: Option<String>,
    /// The business flow the event belongs to (a transfer's events share one).
    pub correlation_id: Option<String>,
    /// The request or event that caused this one.
    pub causation_id: Option<String>,
}

/// A page of an account's events, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct HistoryPage {
    pub account_id: Uuid,
    pub items: Vec<HistoryEvent>,
    /// The cursor of the next page (`after_version`); null on the last page.
    pub next_after_version: Option<i32>,
}

/// `GET /accounts/{id}/transfers`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccountTransfersQuery {
    /// How many transfers (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// A transfer that moved (or tried to move) an account: its newest step on the account.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccountTransfer {
    pub transfer_id: Uuid,
    /// The step: `debit`, `credit`, `refund`, `refund_diverted` (the account was closed
    /// before the refund: the money went to the bank's suspense), `debit_rejected` or
    /// `credit_rejected`.
    #[schema(value_type = String, pattern = "^(debit|credit|refund|refund_diverted|debit_rejected|credit_rejected)$")]
    pub kind: String,
    /// The event type, e.g. `account.debited`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// In minor units (null for a rejected step, which moved nothing).
    pub amount: Option<i64>,
    pub currency: Option<String>,
    /// Why the account refused the step (rejections only).
    pub reason: Option<String>,
    /// The other account (debits and credits only).
    pub counterparty: Option<Uuid>,
    /// The account's version at this step.
    pub version: i32,
    pub recorded_at: DateTime<Utc>,
}

/// The transfers of an account, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccountTransfers {
    pub account_id: Uuid,
    pub items: Vec<AccountTransfer>,
}
