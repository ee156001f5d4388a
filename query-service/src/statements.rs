//! `GET /accounts/{id}/statements` and `GET /accounts/{id}/statements/{month}.csv|.pdf`:
//! the statements the archiver's job wrote to the archive's bucket, for the account's
//! owner and staff.

use crate::AppState;
use crate::http::{account_not_found, fault};
use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use bank_api::views::{StatementFile, StatementList};
use http::{HeaderValue, header};
use service_kit::auth::Caller;
use service_kit::extract::{PathId, parse_id};
use service_kit::{ApiError, ErrorCode};
use uuid::Uuid;

/// The errors of the statements' routes, beside the common ones.
pub const STATEMENT_ERRORS: &[ErrorCode] = &[
    ErrorCode::InvalidId,
    ErrorCode::Forbidden,
    ErrorCode::AccountNotFound,
    ErrorCode::StatementNotFound,
    ErrorCode::Unavailable,
];

fn unavailable(e: pond::s3::S3Error) -> ApiError {
    tracing::warn!(error = %e, "the archive's bucket did not answer");
    ApiError::new(ErrorCode::Unavailable, "the statements' store is unreachable; retry")
}

/// Whether the caller may read the account: its owner as the event store recorded it
/// at its opening (the views may not have it yet), before the bucket is read.
async fn readable(state: &AppState, caller: &Caller, id: Uuid) -> Result<(), ApiError> {
    // through es.account_owner (migration 0019): query-service reads nothing else of the store
    let owner: Option<String> = sqlx::query_scalar("select es.account_owner($1)")
        .bind(id)
        .fetch_optional(&state.kit.pool)
        .await
        .map_err(fault)?
        .flatten();
    let owner = owner.ok_or_else(account_not_found)?;
    if !caller.may_read(&owner) {
        return Err(ApiError::new(ErrorCode::Forbidden, "this account belongs to someone else"));
    }
    Ok(())
}

/// An account's statements, newest month first.
#[utoipa::path(get, path = "/accounts/{id}/statements", tag = "accounts",
    params(("id" = Uuid, Path, description = "the account")),
    responses((status = 200, description = "the months with a statement and their formats", body = StatementList)))]
pub async fn list(
    State(state): State<AppState>,
    caller: Caller,
    PathId(id): PathId,
) -> Result<Json<StatementList>, ApiError> {
    readable(&state, &caller, id).await?;
    let bucket = state.bucket().await;
    let months = pond::statements::list(bucket, id).await.map_err(unavailable)?;
    let statements = months.into_iter().map(|(month, formats)| StatementFile { month, formats }).collect();
    Ok(Json(StatementList { account_id: id, statements }))
}

/// One month's statement: `YYYY-MM.csv` or `YYYY-MM.pdf`.
#[utoipa::path(get, path = "/accounts/{id}/statements/{file}", tag = "accounts",
    params(("id" = Uuid, Path, description = "the account"),
           ("file" = String, Path, description = "`YYYY-MM.csv` or `YYYY-MM.pdf`")),
    responses((status = 200, description = "the statement (opening balance, movements with memo and running balance, closing balance; minor units)",
        content((String = "text/csv"), (Vec<u8> = "application/pdf")))))]
pub async fn download(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    // axum's own rejection (e.g. `%FF`) is plain text: answered in the error shape
    let Ok(Path((id, file))) = path else {
        return Err(ApiError::new(ErrorCode::InvalidId, "the path is not an account id and a file name"));
    };
    let id = parse_id(&id)?;
    readable(&state, &caller, id).await?;
    let not_found = || {
        ApiError::new(
            ErrorCode::StatementNotFound,
            "no such statement: YYYY-MM.csv or YYYY-MM.pdf of a month the job wrote",
        )
    };
    let (month, format) = file.split_once('.').ok_or_else(not_found)?;
    let media = match format {
        "csv" => "text/csv; charset=utf-8",
        "pdf" => "application/pdf",
        _ => return Err(not_found()),
    };
    let month = pond::statements::Month::parse(month).map_err(|_| not_found())?;
    let key = pond::statements::key(id, &month.to_string(), format);
    let body = state.bucket().await.get(&key).await.map_err(unavailable)?.ok_or_else(not_found)?;
    let disposition = format!("attachment; filename=\"statement-{id}-{month}.{format}\"");
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    Ok(response)
}
