//! The HTTP calls the benchmarks make: which account-service to load and as whom
//! (`Target`), opening accounts, deposits, creating and reading transfers, reading an
//! account back from query-service, and scraping a histogram from a `/metrics` page.
//!
//! Timing and counting are the scenarios'; these only speak to the services.

use crate::prom::{self, Histogram, Histograms};
use anyhow::{Context, bail};
use serde_json::{Value, json};
use service_kit::auth::{Role, issue_hs256};

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
    /// A customer's token for `subject`, valid for two hours (longer than any run).
    pub fn token(&self, subject: &str) -> anyhow::Result<String> {
        Ok(issue_hs256(&self.jwt_secret, subject, Role::Customer, 7200)?)
    }
}

/// Opens an empty EUR account; its id.
pub async fn open(client: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<String> {
    let response = client
        .post(format!("{url}/accounts"))
        .bearer_auth(token)
        .json(&json!({"currency": "EUR"}))
        .send()
        .await
        .context("account-service unreachable")?;
    if response.status() != 201 {
        bail!("opening an account answered {}", response.status());
    }
    let body: Value = response.json().await?;
    Ok(body["id"].as_str().context("no id")?.to_owned())
}

/// Opens a EUR account with `initial_deposit` (minor units); its id.
pub async fn open_funded(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    initial_deposit: i64,
) -> anyhow::Result<String> {
    let response = client
        .post(format!("{url}/accounts"))
        .bearer_auth(token)
        .json(&json!({"currency": "EUR", "initial_deposit": initial_deposit}))
        .send()
        .await?;
    let body: Value = response.json().await?;
    Ok(body["id"].as_str().context("opening an account failed")?.to_owned())
}

/// Deposits 1 EUR cent. The answer's body is not read: the benchmarks that only
/// count deposits do not pay for parsing it.
pub async fn deposit(client: &reqwest::Client, url: &str, token: &str, account: &str) -> anyhow::Result<()> {
    let response = client
        .post(format!("{url}/accounts/{account}/deposits"))
        .bearer_auth(token)
        .json(&json!({"amount": 1, "currency": "EUR"}))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("deposit answered {}", response.status());
    }
    Ok(())
}

/// Deposits 1 EUR cent; the account's version after it, from the answer.
pub async fn deposit_version(client: &reqwest::Client, url: &str, token: &str, account: &str) -> anyhow::Result<i64> {
    let response = client
        .post(format!("{url}/accounts/{account}/deposits"))
        .bearer_auth(token)
        .json(&json!({"amount": 1, "currency": "EUR"}))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("deposit answered {}", response.status());
    }
    let body: Value = response.json().await?;
    body["version"].as_i64().context("a deposit's answer without a version")
}

/// GET `<query_url>/accounts/{id}?min_version=..&wait_ms=..` (query-service answers
/// when the view reached the version, or 409 after the wait); the status.
pub async fn read_account(
    client: &reqwest::Client,
    query_url: &str,
    token: &str,
    account: &str,
    min_version: i64,
    wait_ms: u64,
) -> reqwest::Result<reqwest::StatusCode> {
    let response = client
        .get(format!("{query_url}/accounts/{account}?min_version={min_version}&wait_ms={wait_ms}"))
        .bearer_auth(token)
        .send()
        .await?;
    Ok(response.status())
}

/// POST /transfers; the new transfer's id, or `None` unless it was created (201 with an id).
pub async fn create_transfer(client: &reqwest::Client, url: &str, token: &str, body: &Value) -> Option<String> {
    match client.post(format!("{url}/transfers")).bearer_auth(token).json(body).send().await {
        Ok(r) if r.status() == 201 => {
            let body: Value = r.json().await.unwrap_or_default();
            body["id"].as_str().map(str::to_owned)
        }
        _ => None,
    }
}

/// GET `<base>/transfers/{id}`, long-polling for `min_version` when given. `Ok(None)`
/// for an answer other than 200 (409 `view_out_of_date` / `version_not_reached`);
/// an unreadable body reads as `{}`.
pub async fn get_transfer(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    id: &str,
    min_version: Option<i64>,
) -> reqwest::Result<Option<Value>> {
    let request = match min_version {
        Some(next) => client.get(format!("{base}/transfers/{id}?min_version={next}&wait_ms=5000")),
        None => client.get(format!("{base}/transfers/{id}")),
    };
    let response = request.bearer_auth(token).send().await?;
    if response.status() != 200 {
        return Ok(None);
    }
    Ok(Some(response.json().await.unwrap_or_default()))
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
