//! The account routes: open, deposit, withdraw, close, read (now, or as it was: see
//! [`crate::history`], which also serves the history and transfers routes). Their
//! request and reply types are the contract's, in [`bank_api::accounts`].

use crate::AppState;
use crate::history::Point;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use bank_api::accounts::{
    AccountDetail, AccountReply, AmountRequest, OpenRequest, PaymentRequest, ReadQuery, RecentTransaction,
};
use bank_domain::account::{Account, AccountCommand, Actor, BALANCE_EVENTS};
use bank_domain::{Currency, Money};
use eventstore::envelope::RecordedEvent;
use serde_json::{Value, json};
use service_kit::auth::Caller;
use service_kit::extract::{ApiJson, ApiQuery, CommandMeta, PathId};
use service_kit::http::command_response;
use service_kit::{ApiError, ErrorCode};
use uuid::Uuid;

/// The generated OpenAPI document of these routes (completed by [`crate::openapi`]).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    open,
    read,
    deposit,
    withdraw,
    send_payment,
    close,
    crate::history::history,
    crate::history::transfers
))]
pub struct Api;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/accounts", post(open))
        .route("/accounts/{id}", get(read))
        .route("/accounts/{id}/deposits", post(deposit))
        .route("/accounts/{id}/withdrawals", post(withdraw))
        .route("/accounts/{id}/payments", post(send_payment))
        .route("/accounts/{id}/close", post(close))
        .merge(crate::history::routes())
}

/// Every error a command on an existing account can answer, beside the common ones.
pub const COMMAND_ERRORS: &[ErrorCode] = &[
    ErrorCode::MalformedJson,
    ErrorCode::InvalidBody,
    ErrorCode::InvalidId,
    ErrorCode::InvalidAmount,
    ErrorCode::AmountTooLarge,
    ErrorCode::InvalidCurrency,
    ErrorCode::InvalidIdempotencyKey,
    ErrorCode::Forbidden,
    ErrorCode::AccountNotFound,
    ErrorCode::VersionConflict,
    ErrorCode::PayloadTooLarge,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::InsufficientFunds,
    ErrorCode::AccountClosed,
    ErrorCode::CurrencyMismatch,
    ErrorCode::BalanceLimitExceeded,
    ErrorCode::IdempotencyKeyReused,
];

/// The errors of `POST /accounts`, beside the common ones.
pub const OPEN_ERRORS: &[ErrorCode] = &[
    ErrorCode::Forbidden,
    ErrorCode::MalformedJson,
    ErrorCode::InvalidBody,
    ErrorCode::InvalidAmount,
    ErrorCode::AmountTooLarge,
    ErrorCode::InvalidCurrency,
    ErrorCode::InvalidIdempotencyKey,
    ErrorCode::VersionConflict,
    ErrorCode::PayloadTooLarge,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::IdempotencyKeyReused,
];

/// The errors of `POST /accounts/{id}/close`, beside the common ones.
pub const CLOSE_ERRORS: &[ErrorCode] = &[
    ErrorCode::InvalidId,
    ErrorCode::InvalidIdempotencyKey,
    ErrorCode::Forbidden,
    ErrorCode::AccountNotFound,
    ErrorCode::VersionConflict,
    ErrorCode::AccountClosed,
    ErrorCode::BalanceNotZero,
    ErrorCode::IdempotencyKeyReused,
];

/// The errors of `GET /accounts/{id}` (now, or with `as_of`/`at_version`), beside the common ones.
pub const READ_ERRORS: &[ErrorCode] = &[
    ErrorCode::InvalidId,
    ErrorCode::InvalidQuery,
    ErrorCode::Forbidden,
    ErrorCode::AccountNotFound,
    ErrorCode::VersionNotReached,
];

fn account_json(id: Uuid, account: &Account, version: i32) -> Value {
    json!(account_reply(id, account, version))
}

fn account_reply(id: Uuid, account: &Account, version: i32) -> AccountReply {
    AccountReply {
        id,
        version,
        owner: account.owner.clone(),
        currency: account.currency_code().to_owned(),
        status: account.status.as_str().to_owned(),
        balance: account.balance,
    }
}

/// Opens an account (201): a customer's own; staff open for anyone (`owner`) and may
/// take cash in at once (`initial_deposit`, a posting `cash` → account).
#[utoipa::path(post, path = "/accounts", tag = "accounts",
    params(("Idempotency-Key" = Option<String>, Header, description = "repeats of the request answer the first answer")),
    request_body = OpenRequest,
    responses((status = 201, description = "the account, opened", body = AccountReply)))]
async fn open(
    State(state): State<AppState>,
    meta: CommandMeta,
    body: ApiJson<OpenRequest>,
) -> Result<Response, ApiError> {
    meta.caller.person()?;
    let currency = Currency::parse(&body.value.currency)?;
    let initial_deposit = match &body.value.initial_deposit {
        Some(n) if n.as_f64() == Some(0.0) => None,
        Some(n) => Some(Money::from_json(n, currency, state.max_amount)?),
        None => None,
    };
    let owner = match &body.value.owner {
        Some(owner)
            if !(1..=128).contains(&owner.len())
                || !owner.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.@-".contains(&b)) =>
        {
            return Err(ApiError::new(ErrorCode::InvalidBody, "owner must be 1 to 128 of A-Z a-z 0-9 _ . @ -"));
        }
        Some(owner) => owner.clone(),
        None => meta.caller.subject.clone(),
    };
    let id = Uuid::now_v7();
    let command = AccountCommand::Open { owner, currency, initial_deposit, by: actor(&meta.caller) };
    let ctx = meta.context(&body.canonical, None);
    let reply =
        state.accounts.create(id, command, ctx, move |account, version| account_json(id, account, version)).await?;
    Ok(command_response(StatusCode::CREATED, reply))
}

fn actor(caller: &Caller) -> Actor {
    Actor { id: caller.subject.clone(), staff: caller.is_staff() }
}

/// Cash in at the desk (a posting `cash` → account): tellers and admins only; a
/// customer, even the owner, is refused 403 and nothing is written.
#[utoipa::path(post, path = "/accounts/{id}/deposits", tag = "accounts",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = AmountRequest,
    responses((status = 200, description = "the account after the deposit", body = AccountReply)))]
async fn deposit(
    State(state): State<AppState>,
    meta: CommandMeta,
    PathId(id): PathId,
    body: ApiJson<AmountRequest>,
) -> Result<Response, ApiError> {
    amount_command(state, meta, id, body, |amount, by| AccountCommand::Deposit { amount, by }).await
}

/// Cash out (a posting account → `cash`): the owner, or a teller or admin; never below zero.
#[utoipa::path(post, path = "/accounts/{id}/withdrawals", tag = "accounts",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = AmountRequest,
    responses((status = 200, description = "the account after the withdrawal", body = AccountReply)))]
async fn withdraw(
    State(state): State<AppState>,
    meta: CommandMeta,
    PathId(id): PathId,
    body: ApiJson<AmountRequest>,
) -> Result<Response, ApiError> {
    amount_command(state, meta, id, body, |amount, by| AccountCommand::Withdraw { amount, by }).await
}

/// A deposit or a withdrawal: parse, check the amount, run the command.
async fn amount_command(
    state: AppState,
    meta: CommandMeta,
    id: Uuid,
    body: ApiJson<AmountRequest>,
    command: fn(Money, Actor) -> AccountCommand,
) -> Result<Response, ApiError> {
    let amount = Money::parse(&body.value.amount, &body.value.currency, state.max_amount)?;
    let command = command(amount, actor(&meta.caller));
    let ctx = meta.context(&body.canonical, body.value.expected_version);
    let reply = state.accounts.execute(id, command, ctx, move |a, v| account_json(id, a, v)).await?;
    Ok(command_response(StatusCode::OK, reply))
}

/// Sends a payment to another bank (a posting account → `outbound`): the owner only;
/// never below zero (422 `insufficient_funds`).
#[utoipa::path(post, path = "/accounts/{id}/payments", tag = "accounts",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    request_body = PaymentRequest,
    responses((status = 200, description = "the account after the payment", body = AccountReply)))]
async fn send_payment(
    State(state): State<AppState>,
    meta: CommandMeta,
    PathId(id): PathId,
    body: ApiJson<PaymentRequest>,
) -> Result<Response, ApiError> {
    let amount = Money::parse(&body.value.amount, &body.value.currency, state.max_amount)?;
    let reference = match &body.value.reference {
        Some(r) if !bank_domain::ledger::valid_reference(r) => {
            return Err(ApiError::new(ErrorCode::InvalidBody, "reference must be 1 to 64 of A-Z a-z 0-9 . _ : / -"));
        }
        Some(r) => r.clone(),
        None => Uuid::now_v7().to_string(),
    };
    let command = AccountCommand::SendPayment { reference, amount, by: actor(&meta.caller) };
    let ctx = meta.context(&body.canonical, body.value.expected_version);
    let reply = state.accounts.execute(id, command, ctx, move |a, v| account_json(id, a, v)).await?;
    Ok(command_response(StatusCode::OK, reply))
}

/// Closes an account (its owner only; at a zero balance). Takes no body.
#[utoipa::path(post, path = "/accounts/{id}/close", tag = "accounts",
    params(("id" = Uuid, Path), ("Idempotency-Key" = Option<String>, Header)),
    responses((status = 200, description = "the account, closed", body = AccountReply)))]
async fn close(State(state): State<AppState>, meta: CommandMeta, PathId(id): PathId) -> Result<Response, ApiError> {
    let command = AccountCommand::Close { by: actor(&meta.caller) };
    let ctx = meta.context(b"", None);
    let reply = state.accounts.execute(id, command, ctx, move |a, v| account_json(id, a, v)).await?;
    Ok(command_response(StatusCode::OK, reply))
}

/// The state and the 20 newest transactions (`recent`, newest first) as one answer.
pub(crate) fn detail(id: Uuid, account: &Account, version: i32, recent: &[RecordedEvent]) -> AccountDetail {
    let recent_transactions = recent
        .iter()
        .map(|e| RecentTransaction {
            kind: match e.event_type.as_str() {
                t if bank_domain::account::CREDIT_EVENTS.contains(&t) => "credit",
                _ => "debit",
            }
            .to_owned(),
            event_type: e.event_type.clone(),
            amount: e.data.get("amount").cloned(),
            currency: e.data.get("currency").cloned(),
            balance_after: e.data.get("balance_after").cloned(),
            transfer_id: e.data.get("transfer_id").cloned(),
            version: e.version,
            recorded_at: e.recorded_at,
        })
        .collect();
    AccountDetail { account: account_reply(id, account, version), recent_transactions, as_of: None, at_version: None }
}

/// The command side's view of one account: its state from the event store (not the
/// cache, which another instance may have overtaken) and its 20 newest transactions.
///
/// With `as_of` or `at_version`, the account as it was then: the fold of its events up
/// to the last one recorded at or before `as_of` (404 `account_not_found` before it
/// was opened), or up to `at_version`. An `at_version` past the account's version is
/// 409 `version_not_reached` with `current_version` (a state the account has not
/// reached yet, like a transfer's `min_version`; not a malformed query, so not a 400).
/// Both parameters at once ask for the earlier of the two points.
#[utoipa::path(get, path = "/accounts/{id}", tag = "accounts",
    params(("id" = Uuid, Path), ReadQuery),
    responses((status = 200, description = "the account with its 20 newest transactions (then, with as_of or at_version)", body = AccountDetail)))]
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    ApiQuery(query): ApiQuery<ReadQuery>,
) -> Result<Json<AccountDetail>, ApiError> {
    let point = Point::from_query(&query)?;
    let loaded = crate::history::readable(&state, &caller, id).await?;
    if let Some(point) = point {
        return Ok(Json(crate::history::read_at(&state, id, loaded, point).await?));
    }
    let recent = state.accounts.store().latest_of_types(id, BALANCE_EVENTS, 20).await?;
    Ok(Json(detail(id, &loaded.state, loaded.version, &recent)))
}
