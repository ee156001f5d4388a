//! The HTTP calls the benchmarks make: which account-service to load and as whom
//! (`Target`), opening accounts, deposits, creating and following transfers, reading an
//! account back from query-service (all through `bank-client`, the services' typed
//! client), and scraping a histogram from a `/metrics` page.
//!
//! Timing and counting are the scenarios'; these only speak to the services.

use crate::prom::{self, Histogram, Histograms};
use anyhow::Context;
use bank_client::api::accounts::{AmountRequest, OpenRequest};
use bank_client::api::transfers::CreateTransferRequest;
use bank_client::api::{transfers, views};
use bank_client::{BankClient, ClientError, Urls};
use service_kit::auth::{Role, issue_hs256};
use uuid::Uuid;

/// The account-service to load, and the secret its tokens are minted with.
#[derive(clap::Args, Clone)]
pub struct Target {
    /// account-service base URL.
    #[arg(long, env = "ACCOUNT_SERVICE_URL", default_value = "http://127.0.0.1:8081")]
    pub url: String,
    /// Secret to mint the benchmark's tokens with.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: String,
}

impl Target {
    /// A teller's token for `subject`, valid for two hours (longer than any run).
    pub fn token(&self, subject: &str) -> anyhow::Result<String> {
        // cash comes in only through staff: the load's identities are tellers, who own
        // the accounts they open (so they may also transfer from them)
        Ok(issue_hs256(&self.jwt_secret, subject, Role::Teller, 7200)?)
    }

    /// The services' base URLs: account-service at `--url`, the others at their dev
    /// ports unless a scenario names them.
    pub fn urls(&self) -> Urls {
        Urls { accounts: self.url.clone(), ..Urls::dev() }
    }
}

/// `what answered 409 Conflict` for a refusal, the error itself otherwise.
fn refused(what: &str, error: ClientError) -> anyhow::Error {
    match error.status().and_then(|s| reqwest::StatusCode::from_u16(s).ok()) {
        Some(status) => anyhow::anyhow!("{what} answered {status}"),
        None => error.into(),
    }
}

/// Opens an empty EUR account; its id.
pub async fn open(bank: &BankClient) -> anyhow::Result<Uuid> {
    let request = OpenRequest { currency: "EUR".into(), initial_deposit: None, owner: None };
    match bank.open_account(&request).await {
        Ok(account) => Ok(account.id),
        Err(e @ ClientError::Transport(_)) => Err(anyhow::Error::new(e).context("account-service unreachable")),
        Err(e) => Err(refused("opening an account", e)),
    }
}

/// Opens a EUR account with `initial_deposit` (minor units); its id.
pub async fn open_funded(bank: &BankClient, initial_deposit: i64) -> anyhow::Result<Uuid> {
    let request = OpenRequest { currency: "EUR".into(), initial_deposit: Some(initial_deposit.into()), owner: None };
    Ok(bank.open_account(&request).await.context("opening an account failed")?.id)
}

/// 1 EUR cent.
fn one_cent() -> AmountRequest {
    AmountRequest { amount: 1.into(), currency: "EUR".into(), expected_version: None }
}

/// Deposits 1 EUR cent (its answer, a few dozen bytes, is decoded and dropped).
pub async fn deposit(bank: &BankClient, account: Uuid) -> anyhow::Result<()> {
    bank.deposit(account, &one_cent()).await.map_err(|e| refused("deposit", e))?;
    Ok(())
}

/// Deposits 1 EUR cent; the account's version after it, from the answer.
pub async fn deposit_version(bank: &BankClient, account: Uuid) -> anyhow::Result<i64> {
    let account = bank.deposit(account, &one_cent()).await.map_err(|e| refused("deposit", e))?;
    Ok(i64::from(account.version))
}

/// GET `<queries>/accounts/{id}?min_version=..&wait_ms=..` (query-service answers
/// when the view reached the version, or 409 after the wait); the status.
pub async fn read_account(
    bank: &BankClient,
    account: Uuid,
    min_version: i64,
    wait_ms: u64,
) -> Result<u16, ClientError> {
    let wait =
        views::WaitQuery { min_version: Some(min_version), wait_ms: Some(i64::try_from(wait_ms).unwrap_or(i64::MAX)) };
    match bank.view_account(account, &wait).await {
        Ok(_) | Err(ClientError::Decode(_)) => Ok(200),
        Err(ClientError::Http { status, .. }) => Ok(status),
        Err(e) => Err(e),
    }
}

/// POST /transfers of `amount` EUR cents; the new transfer's id, or `None` unless it
/// was created.
pub async fn create_transfer(bank: &BankClient, from: Uuid, to: Uuid, amount: u64) -> Option<Uuid> {
    let request = CreateTransferRequest {
        from: from.to_string(),
        to: to.to_string(),
        amount: amount.into(),
        currency: "EUR".into(),
        memo: None,
    };
    bank.create_transfer(&request, None).await.ok().map(|t| t.id)
}

/// Which service a transfer is read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferSource {
    /// transfer-service (the event store).
    Transfers,
    /// query-service (the views).
    Views,
}

/// GET `/transfers/{id}` of `source`, long-polling for `min_version` (5 s) when given:
/// the transfer's state and version. `Ok(None)` for an answer other than 2xx (409
/// `view_out_of_date` / `version_not_reached`) or one that does not decode.
pub async fn transfer_state(
    bank: &BankClient,
    source: TransferSource,
    id: Uuid,
    min_version: Option<i64>,
) -> Result<Option<(String, i64)>, ClientError> {
    let wait_ms = min_version.map(|_| 5000);
    let answer = match source {
        TransferSource::Transfers => bank
            .transfer(id, &transfers::WaitQuery { min_version, wait_ms })
            .await
            .map(|t| (t.state, i64::from(t.version))),
        TransferSource::Views => bank
            .view_transfer(id, &views::WaitQuery { min_version, wait_ms })
            .await
            .map(|t| (t.state, i64::from(t.version))),
    };
    match answer {
        Ok(state) => Ok(Some(state)),
        Err(ClientError::Http { .. } | ClientError::Decode(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The series of histogram `name` on `url`'s /metrics page, keyed by their labels.
pub async fn histograms(url: &str, name: &str) -> anyhow::Result<Histograms> {
    let text = reqwest::get(format!("{url}/metrics")).await?.text().await?;
    prom::parse_histograms(&text, name)
}

/// The tailer's commit → Kinesis publish lag histogram (empty when it has none yet).
pub async fn tailer_histogram(url: &str) -> anyhow::Result<Histogram> {
    let mut all = histograms(url, "tailer_publish_lag_seconds").await?;
    Ok(all.pop().map(|(_, h)| h).unwrap_or_default())
}
