//! [`ApiError`]: every error a service answers, as `{"error":{"code","message",…}}`.
//!
//! The code is stable (clients branch on it); the message is for people. Faults of
//! our own (database, bugs) are logged with their cause and answered with an opaque
//! 500 `internal`: nothing internal ever reaches the body.

use axum::Json;
use axum::response::{IntoResponse, Response};
use bank_domain::account::AccountError;
use bank_domain::transfer::TransferError;
use eventstore::{ExecuteError, StoreError};
use http::{HeaderName, HeaderValue, StatusCode};
use serde_json::{Map, Value, json};

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Declares [`ErrorCode`]: each code's variant, its string, its HTTP status and what it
/// means, in one place. The OpenAPI documents, the README's table and the answers are
/// all derived from it, so they cannot drift apart.
macro_rules! error_codes {
    ($($variant:ident = ($code:literal, $status:ident, $meaning:literal),)*) => {
        /// Every error code a service answers.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $(#[doc = $meaning] $variant,)*
        }

        impl ErrorCode {
            /// Every code, in the order of the table.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            /// The stable, machine-readable string clients branch on.
            pub const fn as_str(self) -> &'static str {
                match self { $(ErrorCode::$variant => $code,)* }
            }

            /// The HTTP status this code is always answered with.
            pub const fn status(self) -> StatusCode {
                match self { $(ErrorCode::$variant => StatusCode::$status,)* }
            }

            /// What the code means, for people.
            pub const fn meaning(self) -> &'static str {
                match self { $(ErrorCode::$variant => $meaning,)* }
            }
        }
    };
}

error_codes! {
    MalformedJson = ("malformed_json", BAD_REQUEST, "the body is missing or not JSON"),
    InvalidBody = ("invalid_body", BAD_REQUEST, "the JSON body has the wrong shape: a missing, unknown or mistyped field"),
    InvalidId = ("invalid_id", BAD_REQUEST, "an id in the path is not a UUID"),
    InvalidQuery = ("invalid_query", BAD_REQUEST, "a query parameter is malformed or out of range"),
    InvalidAmount = ("invalid_amount", BAD_REQUEST, "the amount is not a positive whole number of minor units"),
    AmountTooLarge = ("amount_too_large", BAD_REQUEST, "the amount is above MAX_AMOUNT_MINOR"),
    InvalidCurrency = ("invalid_currency", BAD_REQUEST, "the currency is not one the bank holds"),
    InvalidMemo = ("invalid_memo", BAD_REQUEST, "the memo is longer than 140 characters or contains a control character"),
    InvalidIdempotencyKey = ("invalid_idempotency_key", BAD_REQUEST, "Idempotency-Key is not 1 to 255 visible ASCII characters"),
    InvalidEventType = ("invalid_event_type", BAD_REQUEST, "an event type or topic is not 1 to 3 dot-separated segments of [A-Za-z][A-Za-z0-9_-]*"),
    InvalidSource = ("invalid_source", BAD_REQUEST, "source is not 1 to 64 characters of [A-Za-z0-9_.-] starting with a letter"),
    InvalidData = ("invalid_data", BAD_REQUEST, "an event's data must be a JSON object"),
    InvalidTags = ("invalid_tags", BAD_REQUEST, "tags are at most 16 pairs of a name (1 to 64 characters) and a string value (at most 256)"),
    InvalidPartitionKey = ("invalid_partition_key", BAD_REQUEST, "partition_key is not 1 to 256 characters"),
    InvalidRiver = ("invalid_river", BAD_REQUEST, "a river's name is not 1 to 64 characters of [A-Za-z0-9_-] starting with a letter"),
    InvalidTopic = ("invalid_topic", BAD_REQUEST, "a subscription is not an event type, a prefix `entity.*`, or `*`"),
    MissingToken = ("missing_token", UNAUTHORIZED, "no Authorization: Bearer token"),
    InvalidToken = ("invalid_token", UNAUTHORIZED, "the token is malformed, badly signed or lacks a claim"),
    TokenExpired = ("token_expired", UNAUTHORIZED, "the token has expired"),
    Forbidden = ("forbidden", FORBIDDEN, "the caller may not act on or read this resource"),
    ReservedEventType = ("reserved_event_type", FORBIDDEN, "account.* and transfer.* events come only from the bank's aggregates"),
    ReservedSource = ("reserved_source", FORBIDDEN, "the bank's own domains (account, transfer, ledger, bank) post no events to the bus"),
    TopicNotAdvertised = ("topic_not_advertised", FORBIDDEN, "a customer posts only advertised topics and the bank's tasks (POST /topics advertises one)"),
    NotFound = ("not_found", NOT_FOUND, "no such route"),
    AccountNotFound = ("account_not_found", NOT_FOUND, "no such account"),
    TransferNotFound = ("transfer_not_found", NOT_FOUND, "no such transfer"),
    StatementNotFound = ("statement_not_found", NOT_FOUND, "no statement of this account for that month and format (the statements job writes them)"),
    RiverNotFound = ("river_not_found", NOT_FOUND, "no such generic river (subscribe it to a topic first)"),
    MethodNotAllowed = ("method_not_allowed", METHOD_NOT_ALLOWED, "the route does not take this method"),
    AlreadyExists = ("already_exists", CONFLICT, "the resource exists already"),
    VersionConflict = ("version_conflict", CONFLICT, "expected_version does not match, or the stream kept changing concurrently; retry"),
    ViewOutOfDate = ("view_out_of_date", CONFLICT, "the view has not reached min_version within wait_ms; retry after Retry-After"),
    VersionNotReached = ("version_not_reached", CONFLICT, "the transfer has not reached min_version within wait_ms; retry after Retry-After"),
    TransferNotReady = ("transfer_not_ready", CONFLICT, "a saga step arrived before the step it follows"),
    RiverManaged = ("river_managed", CONFLICT, "a built-in river (accounts, transfers, views): the saga depends on its topics, which only its code changes"),
    RiverServed = ("river_served", CONFLICT, "a river read by a service of its own, not a queue: receive and ack are refused"),
    PayloadTooLarge = ("payload_too_large", PAYLOAD_TOO_LARGE, "the body is larger than BODY_LIMIT_BYTES"),
    UnsupportedMediaType = ("unsupported_media_type", UNSUPPORTED_MEDIA_TYPE, "the body is not application/json"),
    InsufficientFunds = ("insufficient_funds", UNPROCESSABLE_ENTITY, "the balance does not cover the withdrawal"),
    AccountClosed = ("account_closed", UNPROCESSABLE_ENTITY, "the account is closed"),
    CurrencyMismatch = ("currency_mismatch", UNPROCESSABLE_ENTITY, "the account holds another currency"),
    BalanceNotZero = ("balance_not_zero", UNPROCESSABLE_ENTITY, "an account closes only at a zero balance"),
    BalanceLimitExceeded = ("balance_limit_exceeded", UNPROCESSABLE_ENTITY, "the balance would pass the largest amount an account holds"),
    SameAccount = ("same_account", UNPROCESSABLE_ENTITY, "a transfer needs two different accounts"),
    EventIdReused = ("event_id_reused", UNPROCESSABLE_ENTITY, "this event_id was posted with another type, source or data"),
    RateLimited = ("rate_limited", TOO_MANY_REQUESTS, "this caller sent more requests than its rate allows; retry after Retry-After"),
    IdempotencyKeyReused = ("idempotency_key_reused", UNPROCESSABLE_ENTITY, "this Idempotency-Key was used for a different request"),
    Internal = ("internal", INTERNAL_SERVER_ERROR, "a fault of ours; it was logged, the answer says nothing of it"),
    BadGateway = ("bad_gateway", BAD_GATEWAY, "a service behind the gateway gave an answer that is not HTTP"),
    UpstreamUnavailable = ("upstream_unavailable", SERVICE_UNAVAILABLE, "the service behind the gateway is not reachable; retry"),
    Unavailable = ("unavailable", SERVICE_UNAVAILABLE, "the database is busy or unreachable; retry"),
    NotReady = ("not_ready", SERVICE_UNAVAILABLE, "a dependency of the service is unavailable"),
    Overloaded = ("overloaded", SERVICE_UNAVAILABLE, "the service is running MAX_IN_FLIGHT requests already; retry after Retry-After"),
    Timeout = ("timeout", SERVICE_UNAVAILABLE, "the request ran past REQUEST_TIMEOUT_MS; retry a command with the same Idempotency-Key"),
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error answer: a code (which fixes the status), a message, optional details and
/// headers.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
    pub details: Map<String, Value>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    /// The answer with `code`: 401s carry `WWW-Authenticate: Bearer`, 503s `Retry-After: 1`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        let error = ApiError { code, message: message.into(), details: Map::new(), headers: Vec::new() };
        match code.status() {
            StatusCode::UNAUTHORIZED => {
                error.with_header(http::header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                error.with_header(http::header::RETRY_AFTER, HeaderValue::from_static("1"))
            }
            _ => error,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.code.status()
    }

    /// A fault of ours: the cause is logged, the client learns nothing of it.
    #[track_caller]
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        let at = std::panic::Location::caller();
        tracing::error!(error = %cause, at = %at, "internal error");
        Self::new(ErrorCode::Internal, "internal error; it was logged")
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
        error.insert("code".into(), json!(self.code.as_str()));
        error.insert("message".into(), json!(self.message));
        for (k, v) in &self.details {
            error.insert(k.clone(), v.clone());
        }
        json!({ "error": error })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status().as_u16(), self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.body())).into_response();
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
                ApiError::new(ErrorCode::VersionConflict, "the stream was changed concurrently; retry")
            }
            StoreError::Database(sqlx::Error::PoolTimedOut) | StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "database unavailable");
                ApiError::new(
                    ErrorCode::Unavailable,
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
            ExecuteError::VersionMismatch { current, expected } => ApiError::new(
                ErrorCode::VersionConflict,
                format!("expected version {expected}, but it is at {current}"),
            )
            .with_detail("current_version", current)
            .with_detail("expected_version", expected),
            ExecuteError::Conflict { attempts } => ApiError::new(
                ErrorCode::VersionConflict,
                format!("the stream kept changing concurrently ({attempts} attempts); retry"),
            ),
            ExecuteError::IdempotencyMismatch => ApiError::new(
                ErrorCode::IdempotencyKeyReused,
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
            M::NotPositive | M::NotInteger => ErrorCode::InvalidAmount,
            M::TooLarge { .. } => ErrorCode::AmountTooLarge,
            M::UnknownCurrency => ErrorCode::InvalidCurrency,
            M::Overflow => ErrorCode::BalanceLimitExceeded,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<AccountError> for ApiError {
    fn from(e: AccountError) -> Self {
        let message = e.to_string();
        match e {
            AccountError::NotFound => ApiError::new(ErrorCode::AccountNotFound, message),
            AccountError::NotOwner | AccountError::StaffOnly => ApiError::new(ErrorCode::Forbidden, message),
            AccountError::AlreadyOpened => ApiError::new(ErrorCode::AlreadyExists, message),
            AccountError::Closed => ApiError::new(ErrorCode::AccountClosed, message),
            AccountError::CurrencyMismatch { account, .. } => {
                ApiError::new(ErrorCode::CurrencyMismatch, message).with_detail("account_currency", account.as_str())
            }
            AccountError::InsufficientFunds { balance, .. } => {
                ApiError::new(ErrorCode::InsufficientFunds, message).with_detail("balance", balance)
            }
            AccountError::BalanceNotZero { balance } => {
                ApiError::new(ErrorCode::BalanceNotZero, message).with_detail("balance", balance)
            }
            AccountError::BalanceLimit => ApiError::new(ErrorCode::BalanceLimitExceeded, message),
        }
    }
}

impl From<TransferError> for ApiError {
    fn from(e: TransferError) -> Self {
        let message = e.to_string();
        match e {
            TransferError::AlreadyExists => ApiError::new(ErrorCode::AlreadyExists, message),
            TransferError::SameAccount => ApiError::new(ErrorCode::SameAccount, message),
            TransferError::NotFound => ApiError::new(ErrorCode::TransferNotFound, message),
            TransferError::NotYet { .. } => ApiError::new(ErrorCode::TransferNotReady, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's table of codes is the user's reference: it must list every code
    /// under its status, and no code that does not exist.
    #[test]
    fn the_readme_lists_every_error_code_under_its_status() {
        let readme = include_str!("../../README.md");
        let table: Vec<&str> = readme.lines().filter(|l| l.starts_with("| 4") || l.starts_with("| 5")).collect();
        for code in ErrorCode::ALL {
            let status = code.status().as_u16().to_string();
            let row = table
                .iter()
                .find(|row| row.contains(&format!("`{}`", code.as_str())))
                .unwrap_or_else(|| panic!("README does not list `{code}`"));
            assert!(row.contains(&status), "README lists `{code}` away from its status {status}: {row}");
        }
        let listed = table.iter().flat_map(|row| row.split('`').skip(1).step_by(2)).filter(|w| {
            w.chars().all(|c| c.is_ascii_lowercase() || c == '_') && w.contains('_')
                || *w == "forbidden"
                || *w == "internal"
                || *w == "timeout"
                || *w == "unavailable"
        });
        for word in listed {
            assert!(ErrorCode::ALL.iter().any(|c| c.as_str() == word), "README lists `{word}`, which is no error code");
        }
    }
}
