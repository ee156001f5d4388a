//! [`ApiError`]: every error a service answers, as `{"error":{"code","message",…}}`.
//!
//! The code is stable (clients branch on it); the message is for people. Faults of
//! our own (database, bugs) are logged with their cause and answered with an opaque
//! 500 `internal`: nothing internal ever reaches the body.

use axum::Json;
use axum::response::{IntoResponse, Response};
use eventstore::{ExecuteError, StoreError};
use http::{HeaderName, HeaderValue, StatusCode};
use serde_json::{Map, Value, json};

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// An error answer: status, stable code, message, optional details and headers.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub details: Map<String, Value>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: Map::new(), headers: Vec::new() }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
            .with_header(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }

    pub fn conflict(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, message)
    }

    pub fn unprocessable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }

    pub fn unavailable(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
            .with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
    }

    /// A fault of ours: the cause is logged, the client learns nothing of it.
    #[track_caller]
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let at = std::panic::Location::caller();
        tracing::error!(error = %cause, at = %at, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error; it was logged")
    }

    pub fn with_detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The JSON body of this error.
    pub fn body(&self) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), json!(self.code));
        error.insert("message".into(), json!(self.message));
        for (k, v) in &self.details {
            error.insert(k.clone(), v.clone());
        }
        json!({ "error": error })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }
}

impl From<StoreError> for ApiError {
    #[track_caller]
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict { .. } => {
                ApiError::conflict("version_conflict", "the stream was changed concurrently; retry")
            }
            StoreError::Database(sqlx::Error::PoolTimedOut) | StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::unavailable(
                    "unavailable",
                    "the service is overloaded or its database is unreachable; retry shortly",
                )
            }
            other => ApiError::internal(other),
        }
    }
}

impl<E: Into<ApiError>> From<ExecuteError<E>> for ApiError {
    #[track_caller]
    fn from(e: ExecuteError<E>) -> Self {
        match e {
            ExecuteError::Domain(e) => e.into(),
            ExecuteError::VersionMismatch { current, expected } => {
                ApiError::conflict("version_conflict", format!("expected version {expected}, but it is at {current}"))
                    .with_detail("current_version", current)
                    .with_detail("expected_version", expected)
            }
            ExecuteError::Conflict { attempts } => ApiError::conflict(
                "version_conflict",
                format!("the stream kept changing concurrently ({attempts} attempts); retry"),
            ),
            ExecuteError::IdempotencyMismatch => ApiError::unprocessable(
                "idempotency_key_reused",
                "this Idempotency-Key was already used for a different request",
            ),
            ExecuteError::Store(e) => e.into(),
        }
    }
}

/// Turns a rejected amount or currency into a 400 with its own code.
impl From<bank_domain::MoneyError> for ApiError {
    fn from(e: bank_domain::MoneyError) -> Self {
        use bank_domain::MoneyError as M;
        let code = match e {
            M::NotPositive | M::NotInteger => "invalid_amount",
            M::TooLarge { .. } => "amount_too_large",
            M::UnknownCurrency => "invalid_currency",
            M::Overflow => return ApiError::unprocessable("balance_limit_exceeded", e.to_string()),
        };
        ApiError::bad_request(code, e.to_string())
    }
}

impl From<bank_domain::account::AccountError> for ApiError {
    fn from(e: bank_domain::account::AccountError) -> Self {
        let message = e.to_string();
        match e {
            bank_domain::account::AccountError::NotFound => ApiError::not_found("account_not_found", message),
            bank_domain::account::AccountError::NotOwner => ApiError::forbidden(message),
            bank_domain::account::AccountError::AlreadyOpened => ApiError::conflict("already_exists", message),
            bank_domain::account::AccountError::Closed => ApiError::unprocessable("account_closed", message),
            bank_domain::account::AccountError::CurrencyMismatch { account, .. } => {
                ApiError::unprocessable("currency_mismatch", message).with_detail("account_currency", account.as_str())
            }
            bank_domain::account::AccountError::InsufficientFunds { balance, .. } => {
                ApiError::unprocessable("insufficient_funds", message).with_detail("balance", balance)
            }
            bank_domain::account::AccountError::BalanceNotZero { balance } => {
                ApiError::unprocessable("balance_not_zero", message).with_detail("balance", balance)
            }
            bank_domain::account::AccountError::BalanceLimit => {
                ApiError::unprocessable("balance_limit_exceeded", message)
            }
        }
    }
}

impl From<bank_domain::transfer::TransferError> for ApiError {
    fn from(e: bank_domain::transfer::TransferError) -> Self {
        let message = e.to_string();
        match e {
            bank_domain::transfer::TransferError::AlreadyExists => ApiError::conflict("already_exists", message),
            bank_domain::transfer::TransferError::SameAccount => ApiError::unprocessable("same_account", message),
            bank_domain::transfer::TransferError::NotFound => ApiError::not_found("transfer_not_found", message),
            bank_domain::transfer::TransferError::NotYet { .. } => ApiError::conflict("transfer_not_ready", message),
        }
    }
}
