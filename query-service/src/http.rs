//! The read routes: accounts, their transactions, transfers; each with `min_version`
//! and `wait_ms`. Their query and reply types are the contract's, in
//! [`bank_api::views`]. An account with its recent transactions and a transfer are
//! served from [`crate::cache`] when it holds them at a version the read may use;
//! the access check runs on every answer either way.

use crate::AppState;
use axum::Json;
use axum::Router;
use axum::extract::State;
use axum::routing::get;
use bank_api::views::{
    AccountDetail, AccountList, AccountRow, AccountsQuery, TransactionPage, TransactionRow, TransactionsQuery,
    TransferRow, WaitQuery,
};
use chrono::{DateTime, Utc};
use http::HeaderValue;
use service_kit::auth::Caller;
use service_kit::extract::{ApiQuery, MAX_VERSION, PathId, Wait, in_range};
use service_kit::{ApiError, ErrorCode};
use std::future::Future;
use std::sync::Arc;
use uuid::Uuid;

/// The generated OpenAPI document of these routes (completed by [`crate::openapi`]).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    list_accounts,
    account,
    transactions,
    transfer,
    crate::search::search,
    crate::statements::list,
    crate::statements::download
))]
pub struct Api;

/// The errors of the waiting reads of one account or transfer, beside the common ones.
pub const ACCOUNT_ERRORS: &[ErrorCode] = &[
    ErrorCode::InvalidId,
    ErrorCode::InvalidQuery,
    ErrorCode::Forbidden,
    ErrorCode::AccountNotFound,
    ErrorCode::ViewOutOfDate,
];
pub const TRANSFER_ERRORS: &[ErrorCode] = &[
    ErrorCode::InvalidId,
    ErrorCode::InvalidQuery,
    ErrorCode::Forbidden,
    ErrorCode::TransferNotFound,
    ErrorCode::ViewOutOfDate,
];
pub const LIST_ERRORS: &[ErrorCode] = &[ErrorCode::InvalidQuery, ErrorCode::Forbidden];

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/accounts", get(list_accounts))
        .route("/accounts/{id}", get(account))
        .route("/accounts/{id}/transactions", get(transactions))
        .route("/transfers/{id}", get(transfer))
        .route("/search", get(crate::search::search))
        .route("/accounts/{id}/statements", get(crate::statements::list))
        .route("/accounts/{id}/statements/{file}", get(crate::statements::download))
}

fn out_of_date(current: i64, wanted: i64) -> ApiError {
    ApiError::new(ErrorCode::ViewOutOfDate, "the view has not reached the wanted version yet; retry later")
        .with_detail("current_version", current)
        .with_detail("wanted_version", wanted)
        .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
}

pub(crate) fn fault(e: sqlx::Error) -> ApiError {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            ApiError::new(ErrorCode::Unavailable, "the database is busy or unreachable; retry")
        }
        other => ApiError::internal(other),
    }
}

impl AppState {
    /// Loads a row (`load` answers its version, or None) until it is at
    /// `min_version`, waiting for view-updater's announcements (never polling) up to
    /// `wait`; then 409 `view_out_of_date`. `check` refuses a row the caller may not see.
    async fn at_version<T, F, Fut>(
        &self,
        id: Uuid,
        wait: Wait,
        load: F,
        check: impl Fn(&T) -> Result<(), ApiError>,
    ) -> Result<Option<T>, ApiError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<Option<(T, i64)>, sqlx::Error>>,
    {
        let load_checked = || async {
            let found = load().await.map_err(fault)?;
            if let Some((row, _)) = &found {
                check(row)?;
            }
            Ok::<_, ApiError>(found)
        };
        // without min_version (0) this is one load, no wait
        let wanted = wait.min_version.unwrap_or(0);
        match self.waiters.at_version(id, wanted, wait.wait, None, load_checked).await? {
            Ok(found) => Ok(found),
            Err(current) => Err(out_of_date(current, wanted)),
        }
    }
}

const ACCOUNT: &str = "select id, owner, currency, status, balance, version, opened_at, updated_at from views.accounts";

async fn load_account(pool: &sqlx::PgPool, id: Uuid) -> Result<Option<(AccountRow, i64)>, sqlx::Error> {
    let row: Option<AccountRow> =
        sqlx::query_as(&format!("{ACCOUNT} where id = $1")).bind(id).fetch_optional(pool).await?;
    Ok(row.map(|r| {
        let version = i64::from(r.version);
        (r, version)
    }))
}

async fn recent(
    pool: &sqlx::PgPool,
    id: Uuid,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<TransactionRow>, ApiError> {
    sqlx::query_as(
        "select version, kind, amount, currency, balance_after, transfer_id, counterparty, recorded_at
         from views.account_transactions
         where account_id = $1 and ($2::int8 is null or version < $2)
         order by version desc limit $3",
    )
    .bind(id)
    .bind(before)
    .bind(limit)
    .fetch_all(pool)
    .await
    .map_err(fault)
}

fn owned_by(caller: &Caller) -> impl Fn(&AccountRow) -> Result<(), ApiError> + '_ {
    move |row| {
        if caller.may_read(&row.owner) {
            Ok(())
        } else {
            Err(ApiError::new(ErrorCode::Forbidden, "this account belongs to someone else"))
        }
    }
}

pub(crate) fn account_not_found() -> ApiError {
    ApiError::new(ErrorCode::AccountNotFound, "no such account")
}

/// An account row with one of its newest transactions (none: the columns are null).
#[derive(Debug, sqlx::FromRow)]
struct AccountWithRecent {
    #[sqlx(flatten)]
    account: AccountRow,
    t_version: Option<i32>,
    kind: Option<String>,
    amount: Option<i64>,
    t_currency: Option<String>,
    balance_after: Option<i64>,
    transfer_id: Option<Uuid>,
    counterparty: Option<Uuid>,
    recorded_at: Option<DateTime<Utc>>,
}

/// The account and its 20 newest transactions up to its version, in one statement.
async fn load_account_with_recent(pool: &sqlx::PgPool, id: Uuid) -> Result<Option<(AccountDetail, i64)>, sqlx::Error> {
    let rows: Vec<AccountWithRecent> = sqlx::query_as(
        "select a.id, a.owner, a.currency, a.status, a.balance, a.version, a.opened_at, a.updated_at,
                t.version as t_version, t.kind, t.amount, t.currency as t_currency, t.balance_after,
                t.transfer_id, t.counterparty, t.recorded_at
         from views.accounts a
         left join lateral (
             select * from views.account_transactions
             where account_id = a.id and version <= a.version order by version desc limit 20
         ) t on true
         where a.id = $1
         order by t.version desc",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    let mut recent = Vec::with_capacity(rows.len());
    let mut account = None;
    for row in rows {
        if let (Some(version), Some(kind), Some(amount), Some(currency), Some(balance_after), Some(recorded_at)) =
            (row.t_version, row.kind, row.amount, row.t_currency, row.balance_after, row.recorded_at)
        {
            recent.push(TransactionRow {
                version,
                kind,
                amount,
                currency,
                balance_after,
                transfer_id: row.transfer_id,
                counterparty: row.counterparty,
                recorded_at,
            });
        }
        account.get_or_insert(row.account);
    }
    Ok(account.map(|a| {
        let version = i64::from(a.version);
        (AccountDetail { account: a, recent_transactions: recent }, version)
    }))
}

/// The account with its 20 newest transactions.
#[utoipa::path(get, path = "/accounts/{id}", tag = "accounts",
    params(("id" = Uuid, Path), WaitQuery),
    responses((status = 200, description = "the account", body = AccountDetail)))]
async fn account(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Json<AccountDetail>, ApiError> {
    let wait = Wait::new(query.min_version, query.wait_ms, state.max_wait)?;
    let pool = &state.kit.pool;
    if let Some((kind, currency)) = bank_domain::ledger::BankAccount::from_id(id) {
        return bank_account(pool, &caller, id, kind.as_str(), currency.as_str()).await.map(Json);
    }
    let allowed = owned_by(&caller);
    let wanted = wait.min_version.unwrap_or(0);
    let load = || state.cache().get_or_load(id, wanted, || load_account_with_recent(pool, id));
    let detail = state
        .at_version(id, wait, load, |detail: &Arc<AccountDetail>| allowed(&detail.account))
        .await?
        .ok_or_else(account_not_found)?;
    Ok(Json(Arc::unwrap_or_clone(detail)))
}

/// One of the bank's own accounts (staff only): the sum of the views' rows of it (one per
/// shard of the river `views`). Its owner is `bank:<kind>`, its version the number of
/// postings against it; it has no transactions of its own (they are the customers').
async fn bank_account(
    pool: &sqlx::PgPool,
    caller: &Caller,
    id: Uuid,
    kind: &str,
    currency: &str,
) -> Result<AccountDetail, ApiError> {
    if !caller.is_staff() {
        return Err(ApiError::new(ErrorCode::Forbidden, "the bank's own accounts are staff's to read"));
    }
    let (balance, postings): (i64, i64) = sqlx::query_as(
        "select coalesce(sum(balance), 0)::int8, coalesce(sum(postings), 0)::int8
         from views.bank_balances where account_id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .map_err(fault)?;
    Ok(AccountDetail {
        account: AccountRow {
            id,
            owner: format!("bank:{kind}"),
            currency: currency.to_owned(),
            status: "open".into(),
            balance,
            version: i32::try_from(postings).unwrap_or(i32::MAX),
            opened_at: DateTime::<Utc>::UNIX_EPOCH,
            updated_at: Utc::now(),
        },
        recent_transactions: Vec::new(),
    })
}

/// An account's transactions, newest first, cursor-paged.
#[utoipa::path(get, path = "/accounts/{id}/transactions", tag = "accounts",
    params(("id" = Uuid, Path), TransactionsQuery),
    responses((status = 200, description = "a page of transactions", body = TransactionPage)))]
async fn transactions(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    ApiQuery(query): ApiQuery<TransactionsQuery>,
) -> Result<Json<TransactionPage>, ApiError> {
    let wait = Wait::new(query.min_version, query.wait_ms, state.max_wait)?;
    let limit = in_range("limit", query.limit, 200)?.unwrap_or(50).max(1);
    let before = in_range("before_version", query.before_version, MAX_VERSION)?;
    let pool = &state.kit.pool;
    let row = state
        .at_version(id, wait, || load_account(pool, id), owned_by(&caller))
        .await?
        .ok_or_else(account_not_found)?;
    let upto = i64::from(row.version) + 1;
    let before = before.map_or(upto, |b| b.min(upto));
    let mut items = recent(pool, id, Some(before), limit + 1).await?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next = if more { items.last().map(|t| t.version) } else { None };
    Ok(Json(TransactionPage { account_id: id, version: row.version, items, next_before_version: next }))
}

/// The caller's accounts (tellers and admins: anyone's), at most 1,000.
#[utoipa::path(get, path = "/accounts", tag = "accounts",
    params(AccountsQuery),
    responses((status = 200, description = "the accounts", body = AccountList)))]
async fn list_accounts(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<AccountsQuery>,
) -> Result<Json<AccountList>, ApiError> {
    let owner = query.owner.unwrap_or_else(|| caller.subject.clone());
    if !caller.may_read(&owner) {
        return Err(ApiError::new(ErrorCode::Forbidden, "these accounts belong to someone else"));
    }
    let rows: Vec<AccountRow> =
        sqlx::query_as(&format!("{ACCOUNT} where owner = $1 order by opened_at, id limit 1000"))
            .bind(&owner)
            .fetch_all(&state.kit.pool)
            .await
            .map_err(fault)?;
    Ok(Json(AccountList { owner, items: rows }))
}

/// A transfer (its initiator, tellers and admins).
#[utoipa::path(get, path = "/transfers/{id}", tag = "transfers",
    params(("id" = Uuid, Path), WaitQuery),
    responses((status = 200, description = "the transfer", body = TransferRow)))]
async fn transfer(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Json<TransferRow>, ApiError> {
    let wait = Wait::new(query.min_version, query.wait_ms, state.max_wait)?;
    let pool = &state.kit.pool;
    let wanted = wait.min_version.unwrap_or(0);
    let load_row = || async move {
        let row: Option<TransferRow> = sqlx::query_as(
            "select id, from_account, to_account, amount, currency, state, failure_reason, initiated_by, memo,
                    version, created_at, updated_at
             from views.transfers where id = $1",
        )
        .bind(id)
        .fetch_optional(pool)
        .await?;
        Ok(row.map(|r| {
            let version = i64::from(r.version);
            (r, version)
        }))
    };
    let load = || state.cache().get_or_load(id, wanted, load_row);
    let check = |row: &Arc<TransferRow>| {
        if caller.may_read(&row.initiated_by) {
            Ok(())
        } else {
            Err(ApiError::new(ErrorCode::Forbidden, "this transfer belongs to someone else"))
        }
    };
    let t = state
        .at_version(id, wait, load, check)
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::TransferNotFound, "no such transfer"))?;
    Ok(Json(Arc::unwrap_or_clone(t)))
}
