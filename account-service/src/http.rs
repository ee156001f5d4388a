//! The account routes: open, deposit, withdraw, close, read.

use crate::AppState;
use axum::extract::State;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, Router};
use bank_domain::account::{Account, AccountCommand, Actor, BALANCE_EVENTS};
use bank_domain::{Currency, Money};
use serde::Deserialize;
use serde_json::{Value, json};
use service_kit::ApiError;
use service_kit::auth::Caller;
use service_kit::extract::{ApiJson, CommandMeta, PathId};
use service_kit::http::command_response;
use uuid::Uuid;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/accounts", post(open))
        .route("/accounts/{id}", get(read))
        .route("/accounts/{id}/deposits", post(deposit))
        .route("/accounts/{id}/withdrawals", post(withdraw))
        .route("/accounts/{id}/close", post(close))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpenBody {
    currency: String,
    #[serde(default)]
    initial_deposit: Option<serde_json::Number>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AmountBody {
    amount: serde_json::Number,
    currency: String,
    /// Optional optimistic check: refuse with 409 unless the account is at this version.
    #[serde(default)]
    expected_version: Option<i32>,
}

fn account_json(id: Uuid, account: &Account, version: i32) -> Value {
    json!({
        "id": id,
        "version": version,
        "owner": account.owner,
        "currency": account.currency_code(),
        "status": account.status.as_str(),
        "balance": account.balance,
    })
}

async fn open(State(state): State<AppState>, meta: CommandMeta, body: ApiJson<OpenBody>) -> Result<Response, ApiError> {
    let currency = Currency::parse(&body.value.currency)?;
    let initial_deposit = match &body.value.initial_deposit {
        Some(n) if n.as_i64() == Some(0) => None,
        Some(n) => Some(Money::from_json(n, currency, state.max_amount)?),
        None => None,
    };
    let id = Uuid::now_v7();
    let command = AccountCommand::Open { owner: meta.caller.subject.clone(), currency, initial_deposit };
    let ctx = meta.context(&body.canonical, None);
    let reply = state
        .accounts
        .create(id, command, ctx, move |account, version| (201, account_json(id, account, version)))
        .await?;
    Ok(command_response(reply))
}

fn actor(caller: &Caller) -> Actor {
    Actor { id: caller.subject.clone(), staff: caller.is_staff() }
}

async fn deposit(
    State(state): State<AppState>,
    meta: CommandMeta,
    PathId(id): PathId,
    body: ApiJson<AmountBody>,
) -> Result<Response, ApiError> {
    amount_command(state, meta, id, body, |amount, by| AccountCommand::Deposit { amount, by }).await
}

async fn withdraw(
    State(state): State<AppState>,
    meta: CommandMeta,
    PathId(id): PathId,
    body: ApiJson<AmountBody>,
) -> Result<Response, ApiError> {
    amount_command(state, meta, id, body, |amount, by| AccountCommand::Withdraw { amount, by }).await
}

/// A deposit or a withdrawal: parse, check the amount, run the command.
async fn amount_command(
    state: AppState,
    meta: CommandMeta,
    id: Uuid,
    body: ApiJson<AmountBody>,
    command: fn(Money, Actor) -> AccountCommand,
) -> Result<Response, ApiError> {
    let amount = Money::parse(&body.value.amount, &body.value.currency, state.max_amount)?;
    let command = command(amount, actor(&meta.caller));
    let ctx = meta.context(&body.canonical, body.value.expected_version);
    let reply = state.accounts.execute(id, command, ctx, move |a, v| (200, account_json(id, a, v))).await?;
    Ok(command_response(reply))
}

async fn close(State(state): State<AppState>, meta: CommandMeta, PathId(id): PathId) -> Result<Response, ApiError> {
    let command = AccountCommand::Close { by: actor(&meta.caller) };
    let ctx = meta.context(b"", None);
    let reply = state.accounts.execute(id, command, ctx, move |a, v| (200, account_json(id, a, v))).await?;
    Ok(command_response(reply))
}

/// The command side's view of one account: its state from the event store (not the
/// cache, which another instance may have overtaken) and its 20 newest transactions.
async fn read(State(state): State<AppState>, caller: Caller, PathId(id): PathId) -> Result<Json<Value>, ApiError> {
    let store = state.accounts.store();
    let loaded =
        store.load::<Account>(id).await?.ok_or_else(|| ApiError::not_found("account_not_found", "no such account"))?;
    if !caller.may_read(&loaded.state.owner) {
        return Err(ApiError::forbidden("this account belongs to someone else"));
    }
    let recent = store.latest_of_types(id, BALANCE_EVENTS, 20).await?;
    let transactions: Vec<Value> = recent
        .iter()
        .map(|e| {
            json!({
                "kind": match e.event_type.as_str() {
                    "account.deposited" | "account.credited" | "account.refunded" => "credit",
                    _ => "debit",
                },
                "type": e.event_type,
                "amount": e.data.get("amount"),
                "currency": e.data.get("currency"),
                "balance_after": e.data.get("balance_after"),
                "transfer_id": e.data.get("transfer_id"),
                "version": e.version,
                "recorded_at": e.recorded_at,
            })
        })
        .collect();
    let mut body = account_json(id, &loaded.state, loaded.version);
    body["recent_transactions"] = Value::Array(transactions);
    Ok(Json(body))
}
