//! `loadgen queries`: `GET /accounts/{id}` over C connections for T seconds against
//! query-service, then the same service's `/health` the same way (the HTTP floor), and
//! the ratio of the two rates.

use crate::client::{self, Target};
use crate::load::{Outcome, hammer};
use anyhow::bail;
use bank_client::{BankClient, Urls};
use serde_json::{Value, json};
use std::sync::Arc;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    #[arg(long, env = "QUERY_SERVICE_URL", default_value = "http://127.0.0.1:8083")]
    pub query_url: String,
    #[arg(long, default_value_t = 100)]
    pub accounts: usize,
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

/// Figures: `queries_per_s`, `queries_p50_ms`, `queries_p99_ms`, `queries_ok`,
/// `queries_errors`, the same with `health_`, and `query_to_health_ratio`.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let Args { target, query_url, accounts, connections, seconds } = args;
    let (reads, health) = measure(&target, &query_url, accounts, connections, seconds).await?;
    println!("query-service over C={connections} connections, T={seconds}s each");
    println!(
        "  GET /accounts/{{id}}/s     {:>10.0}  (p50 {:.2} ms, p99 {:.2} ms, errors {})",
        reads.rate, reads.p50_ms, reads.p99_ms, reads.errors
    );
    println!(
        "  GET /health/s             {:>10.0}  (p50 {:.2} ms, p99 {:.2} ms)",
        health.rate, health.p50_ms, health.p99_ms
    );
    println!("  ratio reads : health      {:>10.2}", reads.rate / health.rate);
    let mut figures = reads.figures("queries");
    if let (Some(all), Value::Object(h)) = (figures.as_object_mut(), health.figures("health")) {
        all.extend(h);
    }
    figures["query_to_health_ratio"] = json!(reads.rate / health.rate);
    Ok(figures)
}

/// GET /accounts/{id} (accounts opened first and read back once visible), then
/// /health, each over `connections` for `seconds`.
async fn measure(
    target: &Target,
    query_url: &str,
    accounts: usize,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<(Outcome, Outcome)> {
    anyhow::ensure!(accounts > 0, "--accounts must be at least 1");
    let client = reqwest::Client::builder().pool_max_idle_per_host(connections).build()?;
    let token = target.token("bench-queries")?;
    let bank = BankClient::anonymous(Urls { queries: query_url.to_owned(), ..target.urls() })
        .with_http(client.clone())
        .with_token(token.clone());
    let mut ids = Vec::new();
    for _ in 0..accounts {
        let id = client::open(&bank).await?;
        // visible in the views before the measurement starts
        let seen = client::read_account(&bank, id, 1, 10_000).await?;
        if seen != 200 {
            bail!("account {id} did not reach the views: {seen}");
        }
        ids.push(id);
    }
    let reads = hammer(&client, seconds, connections, {
        let (ids, query_url) = (Arc::new(ids), query_url.to_owned());
        move |n| (format!("{query_url}/accounts/{}", ids[n % ids.len()]), Some(token.clone()))
    })
    .await;
    let health = hammer(&client, seconds, connections, {
        let query_url = query_url.to_owned();
        move |_| (format!("{query_url}/health"), None)
    })
    .await;
    Ok((reads, health))
}
