//! `loadgen deposits`: deposits over C connections for T seconds on M accounts against
//! account-service, next to pgbench's raw single-row insert rate on the same Postgres
//! (C clients, T seconds), and the ratio of the two. Also owns the closed-loop deposit
//! driver that `publish-lag` runs too.

use crate::client::{self, Target};
use crate::load::Outcome;
use crate::pgbench;
use bank_client::BankClient;
use futures::StreamExt;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// Accounts to spread the deposits over (M).
    #[arg(long, default_value_t = 1000)]
    pub accounts: usize,
    /// Concurrent connections (C), for the service and for pgbench.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Seconds of each measurement (T).
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// The service's database, for the pgbench baseline (skipped when absent).
    #[arg(long, env = "BENCH_DATABASE_URL")]
    pub database_url: Option<String>,
    /// pgbench binary.
    #[arg(long, env = "PGBENCH", default_value = "/usr/lib/postgresql/15/bin/pgbench")]
    pub pgbench: PathBuf,
}

/// Figures: `deposits_per_s`, `deposits_p50_ms`, `deposits_p99_ms`, `deposits_ok`,
/// `deposits_errors`; with a database also `pgbench_inserts_per_s` and
/// `deposits_to_insert_ratio`.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let Args { target, accounts, connections, seconds, database_url, pgbench } = args;
    // each phase starts from a fresh checkpoint, so neither pays for the other's writes
    if let Some(url) = &database_url {
        pgbench::checkpoint(&pgbench, url)?;
    }
    let service = drive(&target, accounts, connections, seconds).await?;
    let raw = match &database_url {
        Some(url) => {
            pgbench::checkpoint(&pgbench, url)?;
            Some(pgbench::insert_rate(&pgbench, url, connections, seconds)?)
        }
        None => None,
    };
    println!("deposits against account-service: M={accounts} accounts, C={connections}, T={seconds}s");
    println!("  commands/s   {:>10.0}", service.rate);
    println!("  p50          {:>10.2} ms", service.p50_ms);
    println!("  p99          {:>10.2} ms", service.p99_ms);
    println!("  ok           {:>10}", service.ok);
    println!("  errors       {:>10}", service.errors);
    let mut figures = service.figures("deposits");
    if let Some(raw) = raw {
        println!("raw single-row inserts (pgbench, C={connections}, T={seconds}s, same Postgres)");
        println!("  inserts/s    {raw:>10.0}");
        println!("ratio deposits/s : raw inserts/s = {:.2}", service.rate / raw);
        figures["pgbench_inserts_per_s"] = json!(raw);
        figures["deposits_to_insert_ratio"] = json!(service.rate / raw);
    }
    Ok(figures)
}

/// Opens `accounts` accounts (a customer per 50, as a bank would have), then deposits
/// on random ones from `connections` workers for `seconds`, each sending its next
/// deposit when the last is answered.
pub async fn drive(target: &Target, accounts: usize, connections: usize, seconds: u64) -> anyhow::Result<Outcome> {
    let ids = open_accounts(target, accounts, connections).await?;
    drive_on(ids, connections, seconds).await
}

/// Opens `accounts` accounts (a customer per 50); each with a client of its owner.
pub async fn open_accounts(
    target: &Target,
    accounts: usize,
    connections: usize,
) -> anyhow::Result<Arc<Vec<(Uuid, BankClient)>>> {
    anyhow::ensure!(accounts > 0, "--accounts must be at least 1");
    let http = reqwest::Client::builder().pool_max_idle_per_host(connections).build()?;
    let bank = BankClient::anonymous(target.urls()).with_http(http);
    let mut customers = Vec::new();
    for c in 0..accounts.div_ceil(50) {
        customers.push(bank.with_token(target.token(&format!("bench-{c}"))?));
    }
    let ids: Vec<(Uuid, BankClient)> = futures::stream::iter(0..accounts)
        .map(|i| {
            let customer = customers[i / 50].clone();
            async move { client::open(&customer).await.map(|id| (id, customer)) }
        })
        .buffer_unordered(connections)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    Ok(Arc::new(ids))
}

/// Deposits on random accounts of `ids` from `connections` closed-loop workers for
/// `seconds`.
pub async fn drive_on(ids: Arc<Vec<(Uuid, BankClient)>>, connections: usize, seconds: u64) -> anyhow::Result<Outcome> {
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|w| {
            let (ids, errors) = (ids.clone(), errors.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = w;
                while Instant::now() < deadline {
                    let (account, customer) = &ids[n % ids.len()];
                    n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) >> 1;
                    let t = Instant::now();
                    match client::deposit(customer, *account).await {
                        Ok(()) => latencies.push(t.elapsed().as_secs_f64() * 1000.0),
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for w in workers {
        latencies.extend(w.await?);
    }
    let elapsed = started.elapsed().as_secs_f64();
    Ok(Outcome::from_latencies(&latencies, errors.load(Ordering::Relaxed), elapsed))
}
