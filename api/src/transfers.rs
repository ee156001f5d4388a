//! transfer-service's contract: creating a transfer, and reading it (waiting for a
//! version).

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// `POST /transfers`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTransferRequest {
    /// The source account: the caller's own.
    #[schema(value_type = Uuid)]
    pub from: String,
    /// The target account.
    #[schema(value_type = Uuid)]
    pub to: String,
    /// In minor units, at most `MAX_AMOUNT_MINOR` (default 1,000,000,000).
    #[schema(value_type = i64, minimum = 1, maximum = 1_000_000_000)]
    pub amount: serde_json::Number,
    #[schema(schema_with = crate::currency_schema)]
    pub currency: String,
    /// A note for both sides: at most 140 characters, no control characters (400
    /// `invalid_memo`); absent, null or empty is none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 140, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$")]
    pub memo: Option<String>,
}

/// A transfer as the event store has it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransferReply {
    pub id: Uuid,
    /// The transfer's stream version: 1 when initiated; wait for later ones with `min_version`.
    pub version: i32,
    pub from: Uuid,
    pub to: Uuid,
    /// In minor units.
    pub amount: i64,
    pub currency: Option<String>,
    #[schema(value_type = String, pattern = "^(initiated|debited|refunding|completed|failed)$")]
    pub state: String,
    pub initiated_by: String,
    /// Why a failed transfer failed (e.g. `insufficient_funds`).
    pub failure_reason: Option<String>,
    /// The transfer's memo; empty when it has none (every transfer created before memos).
    #[serde(default)]
    pub memo: String,
}

/// `GET /transfers/{id}`: wait for a version.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Answer once the transfer is at this version or later (see `wait_ms`).
    #[param(minimum = 0, maximum = 2147483647)]
    pub min_version: Option<i64>,
    /// How long to wait for `min_version`, in ms; capped by `TRANSFER_MAX_WAIT_MS` and always
    /// ending before the request timeout, in 200 or 409 `version_not_reached`. An unknown id
    /// waits too (it may be a transfer about to be created) and ends in 409 with version 0.
    #[param(minimum = 0)]
    pub wait_ms: Option<i64>,
}
