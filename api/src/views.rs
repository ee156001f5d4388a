//! query-service's contract: accounts, their transactions and transfers as the views
//! have them, each read able to wait for a version (`min_version`, `wait_ms`).
//!
//! With the `sqlx` feature the row types are also `sqlx::FromRow` (their field names
//! are the views' column names), so query-service reads them straight from Postgres.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// `min_version` and `wait_ms` of a waiting read.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitQuery {
    /// Answer once the view is at this version or later (the `version` a command answered).
    #[param(minimum = 0, maximum = 2147483647)]
    pub min_version: Option<i64>,
    /// How long to wait for `min_version`, in ms; capped by `QUERY_MAX_WAIT_MS` and always
    /// ending before the request timeout, in 200 or 409 `view_out_of_date`. An id not in the
    /// views yet waits too (its creation may be on its way) and ends in 409 with version 0.
    #[param(minimum = 0)]
    pub wait_ms: Option<i64>,
}

/// `GET /accounts/{id}/transactions`: a page, and the wait.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TransactionsQuery {
    #[param(minimum = 0, maximum = 2147483647)]
    pub min_version: Option<i64>,
    #[param(minimum = 0)]
    pub wait_ms: Option<i64>,
    /// Items per page (0 counts as 1; default 50).
    #[param(minimum = 0, maximum = 200)]
    pub limit: Option<i64>,
    /// The cursor: `next_before_version` of the previous page.
    #[param(minimum = 0, maximum = 2147483647)]
    pub before_version: Option<i64>,
}

/// `GET /accounts`: whose accounts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AccountsQuery {
    /// Tellers and admins may name any owner; a customer only themselves (default: the caller).
    #[param(pattern = "^[^\\x00]*$")]
    pub owner: Option<String>,
}

/// An account as the views have it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct AccountRow {
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct TransactionRow {
    pub version: i32,
    pub kind: String,
    pub amount: i64,
    pub currency: String,
    pub balance_after: i64,
    pub transfer_id: Option<Uuid>,
    pub counterparty: Option<Uuid>,
    pub recorded_at: DateTime<Utc>,
}

/// A transfer as the views have it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct TransferRow {
    pub id: Uuid,
    #[serde(rename = "from")]
    pub from_account: Uuid,
    #[serde(rename = "to")]
    pub to_account: Uuid,
    pub amount: i64,
    pub currency: String,
    #[schema(pattern = "^(initiated|debited|refunding|completed|failed)$")]
    pub state: String,
    pub failure_reason: Option<String>,
    pub initiated_by: String,
    /// Empty when the transfer has none.
    #[serde(default)]
    pub memo: String,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An account with its newest transactions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccountDetail {
    #[serde(flatten)]
    pub account: AccountRow,
    pub recent_transactions: Vec<TransactionRow>,
}

/// A page of an account's transactions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct TransactionPage {
    pub account_id: Uuid,
    /// The account's version the page was read at.
    pub version: i32,
    pub items: Vec<TransactionRow>,
    /// The cursor of the next page (`before_version`); null on the last.
    pub next_before_version: Option<i32>,
}

/// Someone's accounts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AccountList {
    pub owner: String,
    pub items: Vec<AccountRow>,
}

/// `GET /search`: a caller's transactions (a teller's or an admin's: everyone's) by
/// words, amount and date; each filter given must match.
#[derive(Debug, Clone, Default, Serialize, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SearchQuery {
    /// Words (1 to 200 characters) in the transfer's memo, read as a web search reads
    /// them (all of them; `"a phrase"`, `or`, `-not`), or the transaction's kind
    /// (`deposit`, `transfer_credit`, …), or a part of the other party's account id (8
    /// hex digits or more, e.g. the app's `…1a2b3c4d`). Staff also get the accounts whose
    /// owner starts with it.
    #[param(min_length = 1, max_length = 200, pattern = "^[^\\x00]*[^\\s\\x00][^\\x00]*$")]
    pub q: Option<String>,
    /// Exactly this amount, in minor units.
    #[param(minimum = 1)]
    pub amount: Option<i64>,
    /// Recorded on or after this day (`YYYY-MM-DD`, UTC, 1970 to 9999).
    #[param(format = Date, pattern = "^(19[7-9][0-9]|[2-9][0-9]{3})-[0-9]{2}-[0-9]{2}$")]
    pub from: Option<String>,
    /// Recorded before the end of this day (`YYYY-MM-DD`, UTC, 1970 to 9999).
    #[param(format = Date, pattern = "^(19[7-9][0-9]|[2-9][0-9]{3})-[0-9]{2}-[0-9]{2}$")]
    pub to: Option<String>,
    /// Only this account's transactions.
    #[param(format = Uuid)]
    pub account: Option<String>,
    /// Items per page (default 20).
    #[param(minimum = 1, maximum = 100)]
    pub limit: Option<i64>,
    /// `newest` first (the default), or `relevance`: the best matches of `q` first
    /// (how often and how close its words are in the memo), then the newest (without
    /// `q`, newest first).
    pub order: Option<SearchOrder>,
    /// The next page: `next_cursor` of the previous answer (a cursor of the other
    /// order: by newest, its time; by relevance, from the best matches again).
    #[param(pattern = "^(r[0-9a-f]{8}_)?[0-9]{1,17}_[0-9a-f]{32}_[0-9]{1,10}$")]
    pub cursor: Option<String>,
}

/// The order of `GET /search`'s hits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum SearchOrder {
    #[default]
    Newest,
    Relevance,
}

/// A transaction found, with its account and its transfer's memo.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[cfg_attr(feature = "sqlx", derive(sqlx::FromRow))]
pub struct SearchHit {
    pub account_id: Uuid,
    #[serde(flatten)]
    #[cfg_attr(feature = "sqlx", sqlx(flatten))]
    pub transaction: TransactionRow,
    /// The transfer's memo ("" for a deposit or a withdrawal).
    pub memo: String,
}

/// A page of what `GET /search` found, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct SearchPage {
    pub items: Vec<SearchHit>,
    /// For staff with `q`: the accounts whose owner starts with it (at most 20).
    pub accounts: Vec<AccountRow>,
    /// Pass as `cursor` for the next page; none on the last.
    pub next_cursor: Option<String>,
}

/// One month's statement of an account, as the statements job wrote it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatementFile {
    /// `YYYY-MM`.
    pub month: String,
    /// The formats written (`csv`, `pdf`): `GET /accounts/{id}/statements/{month}.{format}`.
    pub formats: Vec<String>,
}

/// An account's statements, newest month first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct StatementList {
    pub account_id: Uuid,
    pub statements: Vec<StatementFile>,
}
