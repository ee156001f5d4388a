//! `loadgen`: the benchmark command (not a test; it prints figures and asserts nothing).
//!
//! `loadgen deposits` opens M accounts and runs deposits over C connections for T
//! seconds against account-service, then prints commands/s, p50, p99 and errors; in
//! the same run it measures the raw single-row insert rate of the same Postgres with
//! pgbench (C clients, one insert per transaction into an events-like table) and
//! prints the ratio of the two.
//!
//! `loadgen long-stream` prints deposit latency on an account with N events next to a
//! fresh account's.

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use serde_json::json;
use service_kit::auth::{Role, issue_hs256};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(name = "loadgen", about = "Benchmarks of the bank's command side")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(clap::Args, Clone)]
struct Target {
    /// account-service base URL.
    #[arg(long, env = "ACCOUNT_SERVICE_URL", default_value = "http://127.0.0.1:8081")]
    url: String,
    /// Secret to mint the benchmark's tokens with.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
}

#[derive(Subcommand)]
enum Bench {
    /// Deposits over C connections for T seconds, next to pgbench's raw insert rate.
    Deposits {
        #[command(flatten)]
        target: Target,
        /// Accounts to spread the deposits over (M).
        #[arg(long, default_value_t = 1000)]
        accounts: usize,
        /// Concurrent connections (C), for the service and for pgbench.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Seconds of each measurement (T).
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// The service's database, for the pgbench baseline (skipped when absent).
        #[arg(long, env = "BENCH_DATABASE_URL")]
        database_url: Option<String>,
        /// pgbench binary.
        #[arg(long, env = "PGBENCH", default_value = "/usr/lib/postgresql/15/bin/pgbench")]
        pgbench: PathBuf,
    },
    /// Deposits for T seconds while a tailer publishes them; prints the tailer's
    /// commit → Kinesis lag from its metrics.
    PublishLag {
        #[command(flatten)]
        target: Target,
        /// The tailer's base URL (its /metrics).
        #[arg(long, default_value = "http://127.0.0.1:8085")]
        tailer: String,
        #[arg(long, default_value_t = 1000)]
        accounts: usize,
        #[arg(long, default_value_t = 16)]
        connections: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Deposit latency on an account with N events next to a fresh account's.
    LongStream {
        #[command(flatten)]
        target: Target,
        /// Events on the long account before measuring.
        #[arg(long, default_value_t = 10_000)]
        events: usize,
        /// Sequential deposits measured on each account.
        #[arg(long, default_value_t = 500)]
        samples: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Bench::Deposits { target, accounts, connections, seconds, database_url, pgbench } => {
            // each phase starts from a fresh checkpoint, so neither pays for the other's writes
            if let Some(url) = &database_url {
                checkpoint(&pgbench, url)?;
            }
            let service = deposits(&target, accounts, connections, seconds).await?;
            let raw = match &database_url {
                Some(url) => {
                    checkpoint(&pgbench, url)?;
                    Some(pgbench_insert_rate(&pgbench, url, connections, seconds)?)
                }
                None => None,
            };
            println!("deposits against account-service: M={accounts} accounts, C={connections}, T={seconds}s");
            println!("  commands/s   {:>10.0}", service.rate);
            println!("  p50          {:>10.2} ms", service.p50_ms);
            println!("  p99          {:>10.2} ms", service.p99_ms);
            println!("  ok           {:>10}", service.ok);
            println!("  errors       {:>10}", service.errors);
            if let Some(raw) = raw {
                println!("raw single-row inserts (pgbench, C={connections}, T={seconds}s, same Postgres)");
                println!("  inserts/s    {raw:>10.0}");
                println!("ratio deposits/s : raw inserts/s = {:.2}", service.rate / raw);
            }
        }
        Bench::PublishLag { target, tailer, accounts, connections, seconds } => {
            // the tailer may first be backfilling older events: measure from when it is idle
            let mut before = tailer_histogram(&tailer).await?;
            for _ in 0..600 {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let now = tailer_histogram(&tailer).await?;
                let settled = now.count == before.count;
                before = now;
                if settled {
                    break;
                }
            }
            let service = deposits(&target, accounts, connections, seconds).await?;
            // let the tailer drain what was committed
            let mut after = tailer_histogram(&tailer).await?;
            for _ in 0..100 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now = tailer_histogram(&tailer).await?;
                let settled = now.count == after.count;
                after = now;
                if settled && after.count >= before.count + service.ok {
                    break;
                }
            }
            let lag = after.minus(&before);
            println!(
                "deposits with the tailer publishing them: {:.0} commands/s, p99 {:.2} ms",
                service.rate, service.p99_ms
            );
            println!("  events published          {:>10}", lag.count);
            println!("  publish lag p50           {:>10}", lag.quantile(0.50));
            println!("  publish lag p99           {:>10}", lag.quantile(0.99));
        }
        Bench::LongStream { target, events, samples } => {
            let client = reqwest::Client::new();
            let token = issue_hs256(&target.jwt_secret, "bench-long", Role::Customer, 7200)?;
            let long = open(&client, &target.url, &token).await?;
            let fresh = open(&client, &target.url, &token).await?;
            // grow the long stream, 16 at a time
            let grown = futures::stream::iter(0..events)
                .map(|_| deposit(&client, &target.url, &token, &long))
                .buffer_unordered(16)
                .filter(|r| futures::future::ready(r.is_ok()))
                .count()
                .await;
            if grown != events {
                bail!("only {grown} of {events} deposits succeeded while growing the stream");
            }
            let long_ms = sequential_latencies(&client, &target.url, &token, &long, samples).await?;
            let fresh_ms = sequential_latencies(&client, &target.url, &token, &fresh, samples).await?;
            let (lp50, lp99) = (percentile(&long_ms, 0.50), percentile(&long_ms, 0.99));
            let (fp50, fp99) = (percentile(&fresh_ms, 0.50), percentile(&fresh_ms, 0.99));
            println!("deposit latency, {samples} sequential deposits each");
            println!("  account with {:>6} events: p50 {lp50:>7.2} ms  p99 {lp99:>7.2} ms", events + 1);
            println!("  fresh account:              p50 {fp50:>7.2} ms  p99 {fp99:>7.2} ms");
            println!("  ratio long/fresh (p50)      {:.2}", lp50 / fp50);
        }
    }
    Ok(())
}

/// The tailer's `tailer_publish_lag_seconds` histogram: cumulative counts per bucket.
struct Histogram {
    buckets: Vec<(f64, u64)>,
    count: u64,
}

impl Histogram {
    fn minus(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|(le, n)| (*le, n - earlier.buckets.iter().find(|(l, _)| l == le).map(|(_, m)| *m).unwrap_or(0)))
            .collect();
        Histogram { buckets, count: self.count - earlier.count }
    }

    /// The upper bound of the bucket holding quantile `q` (histograms know no more).
    fn quantile(&self, q: f64) -> String {
        let want = (self.count as f64 * q).ceil() as u64;
        match self.buckets.iter().find(|(_, n)| *n >= want.max(1)) {
            Some((le, _)) if le.is_finite() => format!("<= {:.1} ms", le * 1000.0),
            _ => "beyond the last bucket".to_owned(),
        }
    }
}

async fn tailer_histogram(url: &str) -> anyhow::Result<Histogram> {
    let text = reqwest::get(format!("{url}/metrics")).await?.text().await?;
    let mut buckets = Vec::new();
    let mut count = 0;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("tailer_publish_lag_seconds_bucket{le=\"") {
            let (le, n) = rest.split_once("\"} ").context("bucket line")?;
            let le = if le == "+Inf" { f64::INFINITY } else { le.parse()? };
            buckets.push((le, n.trim().parse()?));
        } else if let Some(n) = line.strip_prefix("tailer_publish_lag_seconds_count ") {
            count = n.trim().parse()?;
        }
    }
    Ok(Histogram { buckets, count })
}

struct Outcome {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
    ok: u64,
    errors: u64,
}

async fn open(client: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<String> {
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
    let body: serde_json::Value = response.json().await?;
    Ok(body["id"].as_str().context("no id")?.to_owned())
}

async fn deposit(client: &reqwest::Client, url: &str, token: &str, account: &str) -> anyhow::Result<()> {
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

async fn sequential_latencies(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    account: &str,
    samples: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        deposit(client, url, token, account).await?;
        out.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}

async fn deposits(target: &Target, accounts: usize, connections: usize, seconds: u64) -> anyhow::Result<Outcome> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(connections).build()?;
    // a customer per 50 accounts, as a bank would have
    let mut tokens = Vec::new();
    for c in 0..accounts.div_ceil(50) {
        tokens.push(issue_hs256(&target.jwt_secret, &format!("bench-{c}"), Role::Customer, 7200)?);
    }
    let ids: Vec<(String, String)> = futures::stream::iter(0..accounts)
        .map(|i| {
            let (client, url, token) = (client.clone(), target.url.clone(), tokens[i / 50].clone());
            async move { open(&client, &url, &token).await.map(|id| (id, token)) }
        })
        .buffer_unordered(connections)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let ids = Arc::new(ids);

    let ok = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|w| {
            let (client, url, ids, ok, errors) =
                (client.clone(), target.url.clone(), ids.clone(), ok.clone(), errors.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = w;
                while Instant::now() < deadline {
                    let (account, token) = &ids[n % ids.len()];
                    n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) >> 1;
                    let t = Instant::now();
                    match deposit(&client, &url, token, account).await {
                        Ok(()) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
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
    let ok = ok.load(Ordering::Relaxed);
    Ok(Outcome {
        rate: ok as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        ok,
        errors: errors.load(Ordering::Relaxed),
    })
}

fn percentile(samples: &[f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn checkpoint(pgbench: &std::path::Path, url: &str) -> anyhow::Result<()> {
    let status =
        Command::new(pgbench.with_file_name("psql")).args(["-q", "-X", "-d", url, "-c", "checkpoint"]).status()?;
    if !status.success() {
        bail!("checkpoint failed");
    }
    Ok(())
}

/// pgbench, C clients, T seconds, one insert per transaction into a table shaped like
/// es.events (identity position, two unique indexes, jsonb). Returns transactions/s.
fn pgbench_insert_rate(pgbench: &std::path::Path, url: &str, clients: usize, seconds: u64) -> anyhow::Result<f64> {
    let psql = pgbench.with_file_name("psql");
    let setup = "drop table if exists bench_events;
        create table bench_events (
            position bigint generated always as identity primary key,
            stream_id uuid not null, stream_type text not null, version int not null,
            event_id uuid not null unique, type text not null, schema_version smallint not null default 1,
            data jsonb not null, metadata jsonb not null default '{}', recorded_at timestamptz not null default now(),
            unique (stream_id, version));";
    let status = Command::new(&psql).args(["-q", "-X", "-d", url, "-c", setup]).status().context("psql")?;
    if !status.success() {
        bail!("creating the pgbench table failed");
    }
    let script = std::env::temp_dir().join(format!("bank-pgbench-{}.sql", std::process::id()));
    std::fs::write(
        &script,
        "insert into bench_events (stream_id, stream_type, version, event_id, type, data, metadata)
         values (gen_random_uuid(), 'account', 1, gen_random_uuid(), 'account.deposited',
                 '{\"amount\": 1, \"currency\": \"EUR\", \"balance_after\": 1}', '{\"actor\": \"bench\"}');\n",
    )?;
    let output = Command::new(pgbench)
        .args(["-n", "-c", &clients.to_string(), "-j", "2", "-T", &seconds.to_string(), "-f"])
        .arg(&script)
        .arg(url)
        .output()
        .context("pgbench")?;
    let _ = std::fs::remove_file(&script);
    let _ = Command::new(&psql).args(["-q", "-X", "-d", url, "-c", "drop table if exists bench_events"]).status();
    let text = String::from_utf8_lossy(&output.stdout);
    let tps = text
        .lines()
        .find(|l| l.starts_with("tps = "))
        .and_then(|l| l.trim_start_matches("tps = ").split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok());
    tps.with_context(|| format!("pgbench printed no tps: {}", String::from_utf8_lossy(&output.stderr)))
}
