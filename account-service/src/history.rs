//! History and temporal reads of an account, exact because they come from the event
//! store (never from the views, which may lag): its events page by page, its state as
//! of a time or at a version (a fold of its events up to there), and the transfers
//! that moved it. Their types are the contract's, in [`bank_api::accounts`].
//!
//! Who may read: the owner, tellers and admins ([`Caller::may_read`]). The check is
//! made on the account as it is now (its owner never changes), before anything of
//! its past is read.

use crate::AppState;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use bank_api::accounts::{
    AccountDetail, AccountTransfer, AccountTransfers, AccountTransfersQuery, HistoryEvent, HistoryPage, HistoryQuery,
    ReadQuery,
};
use bank_domain::account::{Account, BALANCE_EVENTS};
use eventstore::envelope::RecordedEvent;
use service_kit::auth::Caller;
use service_kit::extract::{ApiQuery, MAX_VERSION, PathId};
use service_kit::{ApiError, ErrorCode};
use uuid::Uuid;

/// The most events or transfers one answer holds, and how many it holds by default.
pub const MAX_LIMIT: i64 = 500;
pub const DEFAULT_LIMIT: i64 = 100;

/// The errors of `GET /accounts/{id}/history` and `/transfers`, beside the common ones.
pub const HISTORY_ERRORS: &[ErrorCode] =
    &[ErrorCode::InvalidId, ErrorCode::InvalidQuery, ErrorCode::Forbidden, ErrorCode::AccountNotFound];

pub fn routes() -> Router<AppState> {
    Router::new().route("/accounts/{id}/history", get(history)).route("/accounts/{id}/transfers", get(transfers))
}

fn not_found() -> ApiError {
    ApiError::new(ErrorCode::AccountNotFound, "no such account")
}

fn invalid_query(parameter: &str, message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::InvalidQuery, message).with_detail("parameter", parameter)
}

/// `limit` in `1..=MAX_LIMIT`, [`DEFAULT_LIMIT`] when absent.
fn limit(value: Option<i64>) -> Result<i64, ApiError> {
    match value {
        None => Ok(DEFAULT_LIMIT),
        Some(n) if (1..=MAX_LIMIT).contains(&n) => Ok(n),
        Some(_) => Err(invalid_query("limit", format!("limit must be an integer from 1 to {MAX_LIMIT}"))),
    }
}

/// The account now, if the caller may read it: 404 for an unknown id, 403 for
/// someone else's.
pub(crate) async fn readable(
    state: &AppState,
    caller: &Caller,
    id: Uuid,
) -> Result<eventstore::Loaded<Account>, ApiError> {
    let loaded = state.accounts.store().load::<Account>(id).await?.ok_or_else(not_found)?;
    if !caller.may_read(&loaded.state.owner) {
        return Err(ApiError::new(ErrorCode::Forbidden, "this account belongs to someone else"));
    }
    Ok(loaded)
}

/// A point in an account's past, from `as_of` and `at_version`: the last event at or
/// below the version and recorded at or before the time. Both at once mean the
/// earlier of the two (no 400: the OpenAPI document cannot state that two parameters
/// exclude each other, and a request the document allows is never refused as
/// malformed).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Point {
    time: Option<chrono::DateTime<chrono::Utc>>,
    version: Option<i32>,
}

impl Point {
    /// The point a read asks for, if any. A malformed or out-of-range value is 400
    /// `invalid_query` for any id, before the account is loaded.
    pub(crate) fn from_query(query: &ReadQuery) -> Result<Option<Point>, ApiError> {
        let version = match query.at_version {
            None => None,
            Some(v) => Some(i32::try_from(v).ok().filter(|v| *v >= 1).ok_or_else(|| {
                invalid_query("at_version", format!("at_version must be an integer from 1 to {MAX_VERSION}"))
            })?),
        };
        Ok((query.as_of.is_some() || version.is_some()).then_some(Point { time: query.as_of, version }))
    }
}

/// `GET /accounts/{id}?as_of=…&at_version=…`: the account as it was, with its 20
/// newest transactions then. `current` is the account now (already checked readable).
pub(crate) async fn read_at(
    state: &AppState,
    id: Uuid,
    current: eventstore::Loaded<Account>,
    point: Point,
) -> Result<AccountDetail, ApiError> {
    let store = state.accounts.store();
    let mut rows_read = 0;
    let then = match point {
        Point { version: Some(v), .. } if v > current.version => {
            return Err(ApiError::new(
                ErrorCode::VersionNotReached,
                format!("the account is at version {}, not yet at {v}", current.version),
            )
            .with_detail("current_version", current.version)
            .with_detail("wanted_version", v)
            .with_header(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from_static("1")));
        }
        // the current state is exact for its own version: no need to fold again
        Point { version: Some(v), time: None } if v == current.version => current,
        Point { version, time } => {
            let past = store.load_at::<Account>(id, version, time).await?;
            rows_read += past.rows_read;
            past.loaded
                .ok_or_else(|| ApiError::new(ErrorCode::AccountNotFound, "the account was not opened yet at as_of"))?
        }
    };
    let recent = store.latest_of_types_until(id, BALANCE_EVENTS, then.version, 20).await?;
    rows_read += recent.len();
    state.past_read_rows.with_label_values(&["as_of"]).observe(rows_read as f64);
    let mut detail = crate::http::detail(id, &then.state, then.version, &recent);
    detail.as_of = point.time;
    detail.at_version = point.version;
    Ok(detail)
}

/// The account's events, oldest first, paged by version.
#[utoipa::path(get, path = "/accounts/{id}/history", tag = "accounts",
    params(("id" = Uuid, Path), HistoryQuery),
    responses((status = 200, description = "a page of the account's events, as the event store recorded them", body = HistoryPage)))]
pub(crate) async fn history(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    ApiQuery(query): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryPage>, ApiError> {
    let limit = limit(query.limit)?;
    let after = match query.after_version {
        None => 0,
        Some(v) => i32::try_from(v).ok().filter(|v| *v >= 0).ok_or_else(|| {
            invalid_query("after_version", format!("after_version must be an integer from 0 to {MAX_VERSION}"))
        })?,
    };
    readable(&state, &caller, id).await?;
    // one more than the page: whether there is a next page, without counting
    let mut events = state.accounts.store().read_stream(id, after, Some(limit + 1)).await?;
    let more = events.len() as i64 > limit;
    events.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
    let next_after_version = if more { events.last().map(|e| e.version) } else { None };
    let items = events.into_iter().map(history_event).collect();
    Ok(Json(HistoryPage { account_id: id, items, next_after_version }))
}

fn history_event(e: RecordedEvent) -> HistoryEvent {
    HistoryEvent {
        version: e.version,
        event_type: e.event_type,
        event_id: e.event_id,
        schema_version: e.schema_version,
        data: e.data,
        recorded_at: e.recorded_at,
        actor: e.metadata.actor,
        request_id: e.metadata.request_id,
        correlation_id: e.metadata.correlation_id,
        causation_id: e.metadata.causation_id,
    }
}

/// The transfers that moved the account, newest first: each transfer once, as its
/// newest step on this account (a refunded debit shows as its refund).
#[utoipa::path(get, path = "/accounts/{id}/transfers", tag = "accounts",
    params(("id" = Uuid, Path), AccountTransfersQuery),
    responses((status = 200, description = "the account's transfers, newest first, from its own events", body = AccountTransfers)))]
pub(crate) async fn transfers(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
    ApiQuery(query): ApiQuery<AccountTransfersQuery>,
) -> Result<Json<AccountTransfers>, ApiError> {
    let limit = limit(query.limit)?;
    readable(&state, &caller, id).await?;
    let (events, rows_read) = state.accounts.store().latest_per_data_key(id, "transfer_id", limit).await?;
    state.past_read_rows.with_label_values(&["transfers"]).observe(rows_read as f64);
    let items = events.into_iter().map(account_transfer).collect::<Result<_, _>>()?;
    Ok(Json(AccountTransfers { account_id: id, items }))
}

fn account_transfer(e: RecordedEvent) -> Result<AccountTransfer, ApiError> {
    let text = |key: &str| e.data.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let uuid = |key: &str| text(key).and_then(|s| Uuid::parse_str(&s).ok());
    let transfer_id = uuid("transfer_id")
        .ok_or_else(|| ApiError::internal(format!("event {} has a transfer_id that is no UUID", e.event_id)))?;
    let kind = match e.event_type.as_str() {
        "account.debited" => "debit",
        "account.credited" => "credit",
        "account.refunded" => "refund",
        "account.refund_diverted" => "refund_diverted",
        "account.debit_rejected" => "debit_rejected",
        "account.credit_rejected" => "credit_rejected",
        other => return Err(ApiError::internal(format!("event {} of type {other} has a transfer_id", e.event_id))),
    };
    Ok(AccountTransfer {
        transfer_id,
        kind: kind.to_owned(),
        amount: e.data.get("amount").and_then(|v| v.as_i64()),
        currency: text("currency"),
        reason: text("reason"),
        counterparty: uuid("counterparty"),
        version: e.version,
        recorded_at: e.recorded_at,
        event_type: e.event_type,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bank_domain::account::AccountEvent;

    /// Every event of an account that names a transfer is one of its steps.
    #[test]
    fn every_account_event_of_a_transfer_is_a_step_of_the_list() {
        let (transfer_id, eur) = (Uuid::now_v7(), bank_domain::Currency::parse("EUR").unwrap());
        let reason = bank_domain::account::RejectReason::AccountClosed;
        let events = [
            AccountEvent::Debited {
                transfer_id,
                amount: 5,
                currency: eur,
                balance_after: 0,
                counterparty: transfer_id,
            },
            AccountEvent::DebitRejected { transfer_id, reason },
            AccountEvent::Credited {
                transfer_id,
                amount: 5,
                currency: eur,
                balance_after: 5,
                counterparty: transfer_id,
            },
            AccountEvent::CreditRejected { transfer_id, reason },
            AccountEvent::Refunded { transfer_id, amount: 5, currency: eur, balance_after: 5 },
            AccountEvent::RefundDiverted { transfer_id, amount: 5, currency: eur },
        ];
        let kinds: Vec<String> = events
            .iter()
            .map(|event| {
                let (event_type, data) = eventstore::aggregate::encode(event).unwrap();
                let recorded = RecordedEvent {
                    position: 1,
                    stream_id: Uuid::now_v7(),
                    stream_type: "account".into(),
                    version: 2,
                    event_id: Uuid::now_v7(),
                    event_type,
                    schema_version: 1,
                    data,
                    metadata: Default::default(),
                    recorded_at: chrono::Utc::now(),
                };
                account_transfer(recorded).unwrap().kind
            })
            .collect();
        assert_eq!(kinds, ["debit", "debit_rejected", "credit", "credit_rejected", "refund", "refund_diverted"]);
    }
}
