//! The transfer routes: create (validated against the event store's accounts), read.
//! Their request and reply types are the contract's, in [`bank_api::transfers`].

use crate::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use bank_api::transfers::{CreateTransferRequest, TransferReply, WaitQuery};
use bank_domain::account::{Account, AccountEvent, AccountStatus};
use bank_domain::transfer::{Memo, MoneyTransfer, TransferCommand, TransferError};
use bank_domain::{Aggregate, DomainEvent, Money};
use serde_json::{Value, json};
use service_kit::auth::Caller;
use service_kit::extract::{ApiJson, ApiQuery, CommandMeta, PathId, Wait, parse_id};
use service_kit::http::command_response;
use service_kit::{ApiError, ErrorCode};
use uuid::Uuid;

pub fn routes() -> Router<AppState> {
    Router::new().route("/transfers", post(create)).route("/transfers/{id}", get(read))
}

/// The errors of `POST /transfers`, beside the common ones.
pub const CREATE_ERRORS: &[ErrorCode] = &[
    ErrorCode::MalformedJson,
    ErrorCode::InvalidBody,
    ErrorCode::InvalidId,
    ErrorCode::InvalidAmount,
    ErrorCode::AmountTooLarge,
    ErrorCode::InvalidCurrency,
    ErrorCode::InvalidMemo,
    ErrorCode::InvalidIdempotencyKey,
    ErrorCode::Forbidden,
    ErrorCode::AccountNotFound,
    ErrorCode::VersionConflict,
    ErrorCode::PayloadTooLarge,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::SameAccount,
    ErrorCode::AccountClosed,
    ErrorCode::CurrencyMismatch,
    ErrorCode::IdempotencyKeyReused,
];

/// The errors of `GET /transfers/{id}`, beside the common ones.
pub const READ_ERRORS: &[ErrorCode] = &[
    ErrorCode::InvalidId,
    ErrorCode::InvalidQuery,
    ErrorCode::Forbidden,
    ErrorCode::TransferNotFound,
    ErrorCode::VersionNotReached,
];

/// The generated OpenAPI document of these routes (completed by [`crate::openapi`]).
#[derive(utoipa::OpenApi)]
#[openapi(paths(create, read))]
pub struct Api;

fn transfer_reply(id: Uuid, t: &MoneyTransfer, version: i32) -> TransferReply {
    TransferReply {
        id,
        version,
        from: t.from,
        to: t.to,
        amount: t.amount,
        currency: t.currency.map(|c| c.as_str().to_owned()),
        state: t.state.as_str().to_owned(),
        initiated_by: t.initiated_by.clone(),
        failure_reason: t.failure_reason.clone(),
        memo: t.memo.clone(),
    }
}

fn transfer_json(id: Uuid, t: &MoneyTransfer, version: i32) -> Value {
    json!(transfer_reply(id, t, version))
}

/// Checks a transfer against the event store and creates it as `id`, initiated by
/// `initiator`: the source exists, is the initiator's, is open and holds the
/// currency; the target exists; the memo, if any, is one. Shared by `POST /transfers` and the task
/// `transfers.transfer.create`.
pub(crate) async fn create_transfer(
    state: &AppState,
    initiator: &str,
    body: &CreateTransferRequest,
    ctx: eventstore::CommandContext,
    id: Uuid,
) -> Result<eventstore::CommandReply, ApiError> {
    let from = parse_id(&body.from)?;
    let to = parse_id(&body.to)?;
    let amount = Money::parse(&body.amount, &body.currency, state.max_amount)?;
    let memo = Memo::parse(body.memo.as_deref().unwrap_or_default())
        .map_err(|e| ApiError::new(ErrorCode::InvalidMemo, e.to_string()))?;
    if from == to {
        return Err(TransferError::SameAccount.into());
    }
    let store = state.transfers.store();
    // owner and currency are fixed by the account's first event; closing is the one
    // later change that matters here (the saga's debit checks the balance)
    let source = store
        .load_first_and::<Account>(from, AccountEvent::Closed {}.event_type())
        .await?
        .ok_or_else(|| ApiError::new(ErrorCode::AccountNotFound, "the source account does not exist"))?;
    if source.owner != initiator {
        return Err(ApiError::new(ErrorCode::Forbidden, "the source account belongs to someone else"));
    }
    if source.status == AccountStatus::Closed {
        return Err(ApiError::new(ErrorCode::AccountClosed, "the source account is closed"));
    }
    if source.currency != Some(amount.currency()) {
        return Err(ApiError::new(ErrorCode::CurrencyMismatch, "the source account holds another currency")
            .with_detail("account_currency", source.currency_code()));
    }
    if !store.stream_exists(to, Account::STREAM_TYPE).await? {
        return Err(ApiError::new(ErrorCode::AccountNotFound, "the target account does not exist"));
    }
    let command = TransferCommand::Create { from, to, amount, initiated_by: initiator.to_owned(), memo };
    Ok(state.transfers.create(id, command, ctx, move |t, v| transfer_json(id, t, v)).await?)
}

/// Creates a transfer (201, state `initiated`); the saga moves the money afterwards.
#[utoipa::path(post, path = "/transfers", tag = "transfers",
    params(("Idempotency-Key" = Option<String>, Header)),
    request_body = CreateTransferRequest,
    responses((status = 201, description = "the transfer, initiated", body = TransferReply)))]
async fn create(
    State(state): State<AppState>,
    meta: CommandMeta,
    body: ApiJson<CreateTransferRequest>,
) -> Result<Response, ApiError> {
    meta.caller.person()?;
    // a repeated request is answered as the first time, before anything is re-checked
    // (the source may have been closed since, and that must not turn a 201 into a 422)
    let ctx = meta.context(&body.canonical, None);
    if let Some(stored) = state.transfers.replay(&ctx).await? {
        return Ok(command_response(StatusCode::CREATED, stored));
    }
    let id = Uuid::now_v7();
    let reply = create_transfer(&state, &meta.caller.subject, &body.value, ctx, id).await?;
    Ok(command_response(StatusCode::CREATED, reply))
}

#[utoipa::path(get, path = "/transfers/{id}", tag = "transfers",
    params(("id" = Uuid, Path), WaitQuery),
    responses((status = 200, description = "the transfer", body = TransferReply)))]
/// The transfer as the event store has it. With `min_version` the answer waits (up
/// to `wait_ms`) until the transfer is at that version: woken at once by this
/// process's own appends, and checking every `TRANSFER_WAIT_RECHECK_MS` for those of
/// other instances; then 409 `version_not_reached`.
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    ApiQuery(query): ApiQuery<WaitQuery>,
) -> Result<Json<TransferReply>, ApiError> {
    let wait = Wait::new(query.min_version, query.wait_ms, state.max_wait)?;
    let wanted = wait.min_version.unwrap_or(0);
    let load = || async {
        // a state this instance committed at the wanted version or later answers a
        // wait without a query (a read without min_version wants the latest: the store)
        let cached =
            (wanted > 0).then(|| state.transfers.cached(id)).flatten().filter(|c| i64::from(c.version) >= wanted);
        let loaded = match cached {
            Some(cached) => cached,
            // not (yet) there: with min_version the read waits for it (a task's
            // transfer is created after the task), without it this is a 404
            None => match state.transfers.store().load::<MoneyTransfer>(id).await? {
                Some(loaded) => loaded,
                None => return Ok(None),
            },
        };
        if !caller.may_read(&loaded.state.initiated_by) {
            return Err(ApiError::new(ErrorCode::Forbidden, "this transfer belongs to someone else"));
        }
        let version = i64::from(loaded.version);
        Ok(Some((loaded, version)))
    };
    match state.transfers.watches().at_version(id, wanted, wait.wait, Some(state.wait_recheck), load).await? {
        Ok(Some(loaded)) => Ok(Json(transfer_reply(id, &loaded.state, loaded.version))),
        Ok(None) => Err(ApiError::new(ErrorCode::TransferNotFound, "no such transfer")),
        Err(current) => Err(ApiError::new(
            ErrorCode::VersionNotReached,
            "the transfer has not reached the wanted version yet; retry later",
        )
        .with_detail("current_version", current)
        .with_detail("wanted_version", wanted)
        .with_header(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"))),
    }
}
