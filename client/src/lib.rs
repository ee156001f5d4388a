//! `bank-client`: one typed async client of the bank's three services, shared by the
//! tests, loadgen and bankctl. It sends and reads the [`bank_api`] types (the same
//! ones the services decode and document), so a change of the contract is a compile
//! error here rather than a surprise at run time.
//!
//! ```no_run
//! # async fn demo() -> Result<(), bank_client::ClientError> {
//! use bank_client::{BankClient, Urls, api::accounts::OpenRequest};
//! let bank = BankClient::new(Urls::dev(), "a bearer token");
//! let account = bank.open_account(&OpenRequest { currency: "EUR".into(), initial_deposit: None, owner: None }).await?;
//! let view = bank.view_account(account.id, &bank_client::api::views::WaitQuery {
//!     min_version: Some(account.version.into()),
//!     wait_ms: Some(5000),
//! }).await?;
//! # Ok(()) }
//! ```
//!
//! A [`BankClient`] is cheap to clone; [`BankClient::with_token`] makes another caller
//! on the same connection pool. Every answer other than 2xx is a
//! [`ClientError::Http`] carrying the service's error code, message and details.
//!
//! [`bus::BusClient`] is the same for the event bus's control plane (events, topics,
//! river subscriptions, generic rivers' receive and ack).

#![forbid(unsafe_code)]

pub use bank_api as api;

pub mod bus;
pub use bus::BusClient;

use bank_api::accounts::{
    AccountDetail, AccountReply, AccountTransfers, AccountTransfersQuery, AmountRequest, HistoryPage, HistoryQuery,
    OpenRequest, ReadQuery,
};
use bank_api::transfers::{CreateTransferRequest, TransferReply};
use bank_api::views::{AccountList, AccountsQuery, TransactionPage, TransactionsQuery, TransferRow};
use bank_api::{ErrorBody, transfers, views};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::sync::Arc;
use uuid::Uuid;

/// The base URLs of the services (no trailing path, e.g. `http://127.0.0.1:8081`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Urls {
    /// account-service.
    pub accounts: String,
    /// transfer-service.
    pub transfers: String,
    /// query-service.
    pub queries: String,
}

impl Urls {
    /// The development ports: account-service 8081, transfer-service 8082,
    /// query-service 8083, on 127.0.0.1.
    pub fn dev() -> Urls {
        Urls {
            accounts: "http://127.0.0.1:8081".into(),
            transfers: "http://127.0.0.1:8082".into(),
            queries: "http://127.0.0.1:8083".into(),
        }
    }
}

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The service answered, with a status other than 2xx. `code`, `message` and
    /// `details` come from its error body; an answer without one (a proxy's page, an
    /// empty 404) has an empty `code` and the body's text as `message`.
    #[error("HTTP {status} {code}: {message}")]
    Http { status: u16, code: String, message: String, details: Map<String, Value> },
    /// No answer: the service is unreachable, the connection broke, a timeout.
    #[error("no answer: {}", with_causes(.0))]
    Transport(#[source] reqwest::Error),
    /// A 2xx answer whose body is not the contract's type.
    #[error("an answer that does not decode: {0}")]
    Decode(#[source] serde_json::Error),
}

impl ClientError {
    /// The error of an answer with a status other than 2xx, from its status and body.
    pub fn from_answer(status: u16, body: &[u8]) -> ClientError {
        match serde_json::from_slice::<ErrorBody>(body) {
            Ok(ErrorBody { error }) => {
                ClientError::Http { status, code: error.code, message: error.message, details: error.details }
            }
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let message: String = text.trim().chars().take(200).collect();
                ClientError::Http { status, code: String::new(), message, details: Map::new() }
            }
        }
    }

    /// The HTTP status, when the service answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The error code (e.g. `view_out_of_date`), when the service answered one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Http { code, .. } if !code.is_empty() => Some(code),
            _ => None,
        }
    }
}

/// `Result` of a call.
pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// A `/ready` answer, whatever its status: 200 with the checks, or 503 with the
/// error body (`not_ready`). A body that is not JSON is its text as a string.
#[derive(Debug, Clone, PartialEq)]
pub struct Readiness {
    pub status: u16,
    pub body: Value,
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        self.status == 200
    }
}

/// An HTTP client builder that reaches `https://` services: rustls with the system's
/// root certificates, plus every CA certificate in the PEM file `ca_file` when given
/// (a private CA in front of the services). The file is read now: a missing or
/// malformed one is an error naming it.
pub fn http_builder(ca_file: Option<&std::path::Path>) -> Result<reqwest::ClientBuilder, std::io::Error> {
    let builder = reqwest::Client::builder().use_rustls_tls();
    let Some(path) = ca_file else { return Ok(builder) };
    let pem = std::fs::read(path)
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot read the CA file {}: {e}", path.display())))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .ok()
        .filter(|c| !c.is_empty())
        .ok_or_else(|| std::io::Error::other(format!("{} holds no PEM certificate", path.display())))?;
    Ok(certificates.into_iter().fold(builder, reqwest::ClientBuilder::add_root_certificate))
}

/// The client: base URLs, a connection pool, and the caller's bearer token.
#[derive(Debug, Clone)]
pub struct BankClient {
    http: reqwest::Client,
    urls: Arc<Urls>,
    token: Option<Arc<str>>,
}

impl BankClient {
    /// A client calling as the holder of `token`, on a pool of its own.
    pub fn new(urls: Urls, token: impl Into<String>) -> BankClient {
        BankClient::anonymous(urls).with_token(token)
    }

    /// A client without a token: for `/health` and `/ready`, or a service's 401s.
    pub fn anonymous(urls: Urls) -> BankClient {
        BankClient { http: reqwest::Client::new(), urls: Arc::new(urls), token: None }
    }

    /// The same client over `http` (e.g. one with a larger pool, or shared).
    pub fn with_http(mut self, http: reqwest::Client) -> BankClient {
        self.http = http;
        self
    }

    /// Another caller on the same pool and URLs.
    pub fn with_token(&self, token: impl Into<String>) -> BankClient {
        BankClient { token: Some(token.into().into()), ..self.clone() }
    }

    pub fn urls(&self) -> &Urls {
        &self.urls
    }

    /// The underlying pool, for requests outside the contract (e.g. `/metrics`).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    // ---- account-service

    /// `POST /accounts`: opens an account for the caller (201).
    pub async fn open_account(&self, request: &OpenRequest) -> Result<AccountReply> {
        self.call(self.http.post(url(&self.urls.accounts, "/accounts")).json(request)).await
    }

    /// `POST /accounts/{id}/deposits`.
    pub async fn deposit(&self, account: Uuid, request: &AmountRequest) -> Result<AccountReply> {
        let path = format!("/accounts/{account}/deposits");
        self.call(self.http.post(url(&self.urls.accounts, &path)).json(request)).await
    }

    /// `POST /accounts/{id}/withdrawals`.
    pub async fn withdraw(&self, account: Uuid, request: &AmountRequest) -> Result<AccountReply> {
        let path = format!("/accounts/{account}/withdrawals");
        self.call(self.http.post(url(&self.urls.accounts, &path)).json(request)).await
    }

    /// `POST /accounts/{id}/close` (no body).
    pub async fn close(&self, account: Uuid) -> Result<AccountReply> {
        let path = format!("/accounts/{account}/close");
        self.call(self.http.post(url(&self.urls.accounts, &path))).await
    }

    /// `GET /accounts/{id}` of account-service: the event store's state and the 20
    /// newest transactions.
    pub async fn account(&self, account: Uuid) -> Result<AccountDetail> {
        self.call(self.http.get(url(&self.urls.accounts, &format!("/accounts/{account}")))).await
    }

    /// `GET /accounts/{id}?as_of=…|at_version=…` of account-service: the account as it
    /// was at a time or a version, folded from the event store (an empty query: now).
    pub async fn account_at(&self, account: Uuid, query: &ReadQuery) -> Result<AccountDetail> {
        self.call(self.http.get(url(&self.urls.accounts, &format!("/accounts/{account}"))).query(query)).await
    }

    /// `GET /accounts/{id}/history`: a page of the account's events, oldest first; the
    /// next page is `after_version = next_after_version` until that is `None`.
    pub async fn account_history(&self, account: Uuid, query: &HistoryQuery) -> Result<HistoryPage> {
        let path = format!("/accounts/{account}/history");
        self.call(self.http.get(url(&self.urls.accounts, &path)).query(query)).await
    }

    /// `GET /accounts/{id}/transfers`: the transfers that moved the account, newest first.
    pub async fn account_transfers(&self, account: Uuid, query: &AccountTransfersQuery) -> Result<AccountTransfers> {
        let path = format!("/accounts/{account}/transfers");
        self.call(self.http.get(url(&self.urls.accounts, &path)).query(query)).await
    }

    // ---- transfer-service

    /// `POST /transfers` (201, state `initiated`); with an `Idempotency-Key`, a repeat
    /// answers the first answer.
    pub async fn create_transfer(
        &self,
        request: &CreateTransferRequest,
        idempotency_key: Option<&str>,
    ) -> Result<TransferReply> {
        let mut builder = self.http.post(url(&self.urls.transfers, "/transfers")).json(request);
        if let Some(key) = idempotency_key {
            builder = builder.header("Idempotency-Key", key);
        }
        self.call(builder).await
    }

    /// `GET /transfers/{id}` of transfer-service; with `min_version` it waits up to
    /// `wait_ms`, then 409 `version_not_reached`.
    pub async fn transfer(&self, id: Uuid, wait: &transfers::WaitQuery) -> Result<TransferReply> {
        self.call(self.http.get(url(&self.urls.transfers, &format!("/transfers/{id}"))).query(wait)).await
    }

    // ---- query-service

    /// `GET /accounts/{id}` of query-service; with `min_version` it waits up to
    /// `wait_ms`, then 409 `view_out_of_date`.
    pub async fn view_account(&self, account: Uuid, wait: &views::WaitQuery) -> Result<views::AccountDetail> {
        self.call(self.http.get(url(&self.urls.queries, &format!("/accounts/{account}"))).query(wait)).await
    }

    /// `GET /accounts/{id}/transactions`: a page, newest first.
    pub async fn view_transactions(&self, account: Uuid, query: &TransactionsQuery) -> Result<TransactionPage> {
        let path = format!("/accounts/{account}/transactions");
        self.call(self.http.get(url(&self.urls.queries, &path)).query(query)).await
    }

    /// `GET /accounts`: the caller's accounts (staff: anyone's).
    pub async fn view_accounts(&self, query: &AccountsQuery) -> Result<AccountList> {
        self.call(self.http.get(url(&self.urls.queries, "/accounts")).query(query)).await
    }

    /// `GET /transfers/{id}` of query-service; waits like [`BankClient::view_account`].
    pub async fn view_transfer(&self, id: Uuid, wait: &views::WaitQuery) -> Result<TransferRow> {
        self.call(self.http.get(url(&self.urls.queries, &format!("/transfers/{id}"))).query(wait)).await
    }

    // ---- any service

    /// `GET <base>/health`: `{"status": "ok", "service": ...}` when alive.
    pub async fn health(&self, base: &str) -> Result<Value> {
        let response = self.http.get(url(base, "/health")).send().await.map_err(ClientError::Transport)?;
        answer(response).await
    }

    /// `GET <base>/ready`: the answer whatever its status (an error only without one).
    pub async fn ready(&self, base: &str) -> Result<Readiness> {
        let response = self.http.get(url(base, "/ready")).send().await.map_err(ClientError::Transport)?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await.map_err(ClientError::Transport)?;
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Ok(Readiness { status, body })
    }

    /// Sends with the caller's token; the decoded 2xx body, or the error.
    async fn call<T: DeserializeOwned>(&self, builder: reqwest::RequestBuilder) -> Result<T> {
        let builder = match &self.token {
            Some(token) => builder.bearer_auth(token),
            None => builder,
        };
        answer(builder.send().await.map_err(ClientError::Transport)?).await
    }
}

/// `error: its cause: its cause's cause` (reqwest's own text leaves out why, e.g.
/// "connection refused").
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text = format!("{text}: {c}");
        cause = c.source();
    }
    text
}

/// `base` (with or without a trailing slash) joined with `path`.
fn url(base: &str, path: &str) -> String {
    format!("{}{path}", base.trim_end_matches('/'))
}

/// A 2xx answer decoded as `T`; any other status as [`ClientError::Http`].
async fn answer<T: DeserializeOwned>(response: reqwest::Response) -> Result<T> {
    let status = response.status();
    let body = response.bytes().await.map_err(ClientError::Transport)?;
    if !status.is_success() {
        return Err(ClientError::from_answer(status.as_u16(), &body));
    }
    serde_json::from_slice(&body).map_err(ClientError::Decode)
}

#[cfg(test)]
mod tests;
