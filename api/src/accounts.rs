//! account-service's contract: opening an account, deposits and withdrawals, and the
//! command side's view of an account.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
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

/// An account with its 20 newest transactions, from the event store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccountDetail {
    #[serde(flatten)]
    pub account: AccountReply,
    pub recent_transactions: Vec<RecentTransaction>,
}
