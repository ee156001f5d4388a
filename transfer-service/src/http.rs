//! The transfer routes: create (validated against the event store's accounts), read.

use crate::AppState;
use axum::extract::{Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use bank_domain::account::{Account, AccountStatus};
use bank_domain::transfer::{MoneyTransfer, TransferCommand, TransferError};
use bank_domain::{Aggregate, Money};
use serde::Deserialize;
use serde_json::{Value, json};
use service_kit::ApiError;
use service_kit::auth::Caller;
use service_kit::extract::{ApiJson, CommandMeta, PathId, Wait, parse_id};
use service_kit::http::command_response;
use std::collections::HashMap;
use uuid::Uuid;

pub fn routes() -> Router<AppState> {
    Router::new().route("/transfers", post(create)).route("/transfers/{id}", get(read))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    from: String,
    to: String,
    amount: serde_json::Number,
    currency: String,
}

fn transfer_json(id: Uuid, t: &MoneyTransfer, version: i32) -> Value {
    json!({
        "id": id,
        "version": version,
        "from": t.from,
        "to": t.to,
        "amount": t.amount,
        "currency": t.currency.map(|c| c.as_str().to_owned()),
        "state": t.state.as_str(),
        "initiated_by": t.initiated_by,
        "failure_reason": t.failure_reason,
    })
}

async fn create(
    State(state): State<AppState>,
    meta: CommandMeta,
    body: ApiJson<CreateBody>,
) -> Result<Response, ApiError> {
    // a repeated request is answered as the first time, before anything is re-checked
    // (the source may have been closed since, and that must not turn a 201 into a 422)
    let ctx = meta.context(&body.canonical, None);
    if let Some(stored) = state.transfers.replay(&ctx).await? {
        return Ok(command_response(stored));
    }
    let from = parse_id(&body.value.from)?;
    let to = parse_id(&body.value.to)?;
    let amount = Money::parse(&body.value.amount, &body.value.currency, state.max_amount)?;
    if from == to {
        return Err(TransferError::SameAccount.into());
    }
    // what the event store says about the source: it exists, it is the caller's,
    // it is open and holds this currency; and the target exists
    let store = state.transfers.store();
    let source = store
        .load::<Account>(from)
        .await?
        .ok_or_else(|| ApiError::not_found("account_not_found", "the source account does not exist"))?
        .state;
    if source.owner != meta.caller.subject {
        return Err(ApiError::forbidden("the source account belongs to someone else"));
    }
    if source.status == AccountStatus::Closed {
        return Err(ApiError::unprocessable("account_closed", "the source account is closed"));
    }
    if source.currency != Some(amount.currency()) {
        return Err(ApiError::unprocessable("currency_mismatch", "the source account holds another currency")
            .with_detail("account_currency", source.currency_code()));
    }
    if !store.stream_exists(to, Account::STREAM_TYPE).await? {
        return Err(ApiError::not_found("account_not_found", "the target account does not exist"));
    }

    let id = Uuid::now_v7();
    let command = TransferCommand::Create { from, to, amount, initiated_by: meta.caller.subject.clone() };
    let reply = state.transfers.create(id, command, ctx, move |t, v| (201, transfer_json(id, t, v))).await?;
    Ok(command_response(reply))
}

/// The transfer as the event store has it. With `min_version` the answer waits (up
/// to `wait_ms`) until the transfer is at that version: woken at once by this
/// process's own appends, and checking every `TRANSFER_WAIT_RECHECK_MS` for those of
/// other instances; then 409 `version_not_reached`.
async fn read(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let wait = Wait::parse(&params, state.max_wait)?;
    let wanted = wait.min_version.unwrap_or(0);
    let load = || async {
        // a state this instance committed at the wanted version or later answers a
        // wait without a query (a read without min_version wants the latest: the store)
        let cached =
            (wanted > 0).then(|| state.transfers.cached(id)).flatten().filter(|c| i64::from(c.version) >= wanted);
        let loaded = match cached {
            Some(cached) => cached,
            None => state
                .transfers
                .store()
                .load::<MoneyTransfer>(id)
                .await?
                .ok_or_else(|| ApiError::not_found("transfer_not_found", "no such transfer"))?,
        };
        if !caller.may_read(&loaded.state.initiated_by) {
            return Err(ApiError::forbidden("this transfer belongs to someone else"));
        }
        let version = i64::from(loaded.version);
        Ok(Some((loaded, version)))
    };
    match state.transfers.watches().at_version(id, wanted, wait.wait, Some(state.wait_recheck), load).await? {
        Ok(Some(loaded)) => Ok(Json(transfer_json(id, &loaded.state, loaded.version))),
        Ok(None) => Err(ApiError::not_found("transfer_not_found", "no such transfer")),
        Err(current) => Err(ApiError::conflict(
            "version_not_reached",
            "the transfer has not reached the wanted version yet; retry later",
        )
        .with_detail("current_version", current)
        .with_detail("wanted_version", wanted)
        .with_header(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"))),
    }
}
