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
//!
//! `loadgen publish-lag` runs deposits while a tailer publishes them and prints the
//! tailer's commit → Kinesis lag.
//!
//! `loadgen view-latency` runs deposits at R per second and reads each one back from
//! query-service with `min_version` = the deposit's version: the time from the
//! command's answer until the view shows it (and from sending the command).
//!
//! `loadgen queries` reads `GET /accounts/{id}` over C connections for T seconds, and
//! the same service's `/health` the same way (the HTTP floor), and prints both rates.
//!
//! `loadgen transfers` creates transfers among M accounts at R per second from C
//! clients for T seconds, polls each until it is completed or failed, and prints
//! transfers/s, completion latency (created → settled as the polling client sees it)
//! and the tailer's commit → Kinesis lag over the same time; `--warmup W` runs the
//! same load for W seconds first and prints its figures apart.

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
    /// Transfers at a fixed rate; completion latency and publish lag.
    Transfers {
        #[command(flatten)]
        target: Target,
        /// transfer-service base URL.
        #[arg(long, env = "TRANSFER_SERVICE_URL", default_value = "http://127.0.0.1:8082")]
        transfers_url: String,
        /// The tailer's base URL (its /metrics).
        #[arg(long, default_value = "http://127.0.0.1:8085")]
        tailer: String,
        /// Accounts the transfers run between (M).
        #[arg(long, default_value_t = 200)]
        accounts: usize,
        /// Clients creating transfers at once (C).
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Transfers created per second (R), spread evenly.
        #[arg(long, default_value_t = 200)]
        rate: u64,
        /// Seconds of creating transfers (T).
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Seconds of the same load first, not counted (connection pools, caches, the
        /// emulator's JIT warm up); its figures are printed apart.
        #[arg(long, default_value_t = 0)]
        warmup: u64,
        /// How often a client polls a transfer's state (without --long-poll-url).
        #[arg(long, default_value_t = 25)]
        poll_ms: u64,
        /// Follow transfers by long-polling `/transfers/{id}` at this base URL
        /// (transfer-service or query-service) instead: `min_version` = the next
        /// version, so each request returns when the transfer moves on.
        #[arg(long)]
        long_poll_url: Option<String>,
        /// Base URLs of services running rivers (their /metrics): prints each river's
        /// delivery latency and GetRecords durations over the run.
        #[arg(long = "river-metrics")]
        river_metrics: Vec<String>,
    },
    /// Deposits at a fixed rate, each read back from the views with min_version.
    ViewLatency {
        #[command(flatten)]
        target: Target,
        /// query-service base URL.
        #[arg(long, env = "QUERY_SERVICE_URL", default_value = "http://127.0.0.1:8083")]
        query_url: String,
        #[arg(long, default_value_t = 1000)]
        accounts: usize,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Deposits per second (R).
        #[arg(long, default_value_t = 500)]
        rate: u64,
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// GET /accounts/{id} throughput next to /health's, same connections, same run.
    Queries {
        #[command(flatten)]
        target: Target,
        #[arg(long, env = "QUERY_SERVICE_URL", default_value = "http://127.0.0.1:8083")]
        query_url: String,
        #[arg(long, default_value_t = 100)]
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
        Bench::Transfers {
            target,
            transfers_url,
            tailer,
            accounts,
            connections,
            rate,
            seconds,
            warmup,
            poll_ms,
            long_poll_url,
            river_metrics,
        } => {
            let poll = match &long_poll_url {
                Some(url) => Poll::Long(url.clone()),
                None => Poll::Every(Duration::from_millis(poll_ms)),
            };
            let client = reqwest::Client::builder().pool_max_idle_per_host(connections * 4).build()?;
            let ids = open_funded_accounts(&client, &target, accounts, connections).await?;
            if warmup > 0 {
                let lag_before = tailer_histogram(&tailer).await?;
                let outcome = transfers(&client, &ids, &transfers_url, connections, rate, warmup, &poll).await?;
                let lag = tailer_histogram(&tailer).await?.minus(&lag_before);
                println!(
                    "warm-up, not counted: {}s, {} transfers, completion p50 / p99 {:.1} / {:.1} ms, publish lag p99 {}",
                    warmup,
                    outcome.created,
                    outcome.settle_p50,
                    outcome.settle_p99,
                    lag.quantile(0.99)
                );
            }
            let before = tailer_histogram(&tailer).await?;
            let put_before = histograms(&tailer, "tailer_put_records_seconds").await?;
            let mut rivers_before = Vec::new();
            for url in &river_metrics {
                rivers_before.push((
                    histograms(url, "river_delivery_seconds").await?,
                    histograms(url, "river_get_records_seconds").await?,
                ));
            }
            let outcome = transfers(&client, &ids, &transfers_url, connections, rate, seconds, &poll).await?;
            let lag = tailer_histogram(&tailer).await?.minus(&before);
            let how = match &long_poll_url {
                Some(url) if *url == transfers_url => "long-polling transfer-service with min_version".to_string(),
                Some(_) => "long-polling query-service with min_version".to_string(),
                None => format!("polling transfer-service every {poll_ms} ms"),
            };
            println!("transfers: M={accounts} accounts, C={connections}, R={rate}/s asked, T={seconds}s, {how}");
            println!("  created/s                 {:>10.1}", outcome.created as f64 / outcome.elapsed);
            println!("  create p50 / p99          {:>7.1} / {:.1} ms", outcome.create_p50, outcome.create_p99);
            println!("  completed                 {:>10}", outcome.completed);
            println!("  failed                    {:>10}", outcome.failed);
            println!("  not settled within 60 s   {:>10}", outcome.stuck);
            println!("  create errors             {:>10}", outcome.errors);
            println!("  completion p50            {:>10.1} ms", outcome.settle_p50);
            println!("  completion p99            {:>10.1} ms", outcome.settle_p99);
            println!("  events published          {:>10}", lag.count);
            println!("  publish lag p50           {:>10}", lag.quantile(0.50));
            println!("  publish lag p99           {:>10}", lag.quantile(0.99));
            for (_, put) in since(histograms(&tailer, "tailer_put_records_seconds").await?, &put_before) {
                println!("  PutRecords calls, mean    {:>10}  {:.1} ms", put.count, put.mean_ms());
            }
            for (url, (delivery_before, reads_before)) in river_metrics.iter().zip(&rivers_before) {
                let reads = since(histograms(url, "river_get_records_seconds").await?, reads_before);
                for (labels, delivery) in since(histograms(url, "river_delivery_seconds").await?, delivery_before) {
                    let read = reads.iter().find(|(l, _)| *l == labels).map(|(_, h)| h);
                    println!(
                        "  river {labels}: arrival → handled p50 {}, p99 {}; GetRecords calls {}, mean {:.1} ms",
                        delivery.quantile(0.50),
                        delivery.quantile(0.99),
                        read.map(|h| h.count).unwrap_or(0),
                        read.map(Histogram::mean_ms).unwrap_or(0.0),
                    );
                }
            }
        }
        Bench::ViewLatency { target, query_url, accounts, connections, rate, seconds } => {
            let out = view_latency(&target, &query_url, accounts, connections, rate, seconds).await?;
            println!("deposits read back from the views: M={accounts}, R={rate}/s asked, T={seconds}s");
            println!("  deposits/s                {:>10.1}", out.done as f64 / seconds as f64);
            println!("  answered → visible p50    {:>10.1} ms", percentile(&out.after_answer, 0.50));
            println!("  answered → visible p99    {:>10.1} ms", percentile(&out.after_answer, 0.99));
            println!("  sent → visible p50        {:>10.1} ms", percentile(&out.after_send, 0.50));
            println!("  sent → visible p99        {:>10.1} ms", percentile(&out.after_send, 0.99));
            println!("  not visible within 5 s    {:>10}", out.late);
            println!("  errors                    {:>10}", out.errors);
        }
        Bench::Queries { target, query_url, accounts, connections, seconds } => {
            let (reads, health) = queries(&target, &query_url, accounts, connections, seconds).await?;
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

/// A Prometheus histogram read from a /metrics page: cumulative counts per bucket.
#[derive(Default, Clone)]
struct Histogram {
    buckets: Vec<(f64, u64)>,
    count: u64,
    sum: f64,
}

impl Histogram {
    fn minus(&self, earlier: &Histogram) -> Histogram {
        let buckets = self
            .buckets
            .iter()
            .map(|(le, n)| (*le, n - earlier.buckets.iter().find(|(l, _)| l == le).map(|(_, m)| *m).unwrap_or(0)))
            .collect();
        Histogram { buckets, count: self.count - earlier.count, sum: self.sum - earlier.sum }
    }

    fn mean_ms(&self) -> f64 {
        if self.count == 0 { 0.0 } else { self.sum / self.count as f64 * 1000.0 }
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
    let mut all = histograms(url, "tailer_publish_lag_seconds").await?;
    Ok(all.pop().map(|(_, h)| h).unwrap_or_default())
}

/// The series of histogram `name` on `url`'s /metrics page, keyed by their labels
/// (without `le`, e.g. `river="accounts"`; empty for an unlabelled one).
async fn histograms(url: &str, name: &str) -> anyhow::Result<Histograms> {
    let text = reqwest::get(format!("{url}/metrics")).await?.text().await?;
    let mut all = Histograms::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else { continue };
        let (kind, rest) = rest.split_at(rest.find(['{', ' ']).unwrap_or(rest.len()));
        let (labels, value) = match rest.strip_prefix('{') {
            Some(rest) => rest.split_once("} ").context("a labelled sample")?,
            None => ("", rest.trim()),
        };
        let mut le = None;
        let series: Vec<&str> = labels
            .split(',')
            .filter(|l| !l.is_empty())
            .filter(|l| match l.strip_prefix("le=") {
                Some(v) => {
                    le = Some(v.trim_matches('"').to_owned());
                    false
                }
                None => true,
            })
            .collect();
        let series = series.join(",");
        let at = match all.iter().position(|(l, _)| *l == series) {
            Some(at) => at,
            None => {
                all.push((series, Histogram::default()));
                all.len() - 1
            }
        };
        let histogram = &mut all[at].1;
        match (kind, le) {
            ("_bucket", Some(le)) => {
                let le = if le == "+Inf" { f64::INFINITY } else { le.parse()? };
                histogram.buckets.push((le, value.trim().parse()?));
            }
            ("_count", _) => histogram.count = value.trim().parse()?,
            ("_sum", _) => histogram.sum = value.trim().parse()?,
            _ => {}
        }
    }
    Ok(all)
}

/// A histogram's series, keyed by their labels.
type Histograms = Vec<(String, Histogram)>;

/// Each series of `now` minus its value in `earlier` (a series new since then is kept whole).
fn since(now: Histograms, earlier: &Histograms) -> Histograms {
    now.into_iter()
        .map(|(labels, h)| {
            let before = earlier.iter().find(|(l, _)| *l == labels).map(|(_, h)| h.clone()).unwrap_or_default();
            let diff = h.minus(&before);
            (labels, diff)
        })
        .collect()
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

struct ViewLatency {
    done: u64,
    errors: u64,
    late: u64,
    after_answer: Vec<f64>,
    after_send: Vec<f64>,
}

async fn view_latency(
    target: &Target,
    query_url: &str,
    accounts: usize,
    connections: usize,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<ViewLatency> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(connections * 2).build()?;
    let token = issue_hs256(&target.jwt_secret, "bench-views", Role::Customer, 7200)?;
    let ids: Vec<String> = futures::stream::iter(0..accounts)
        .map(|_| open(&client, &target.url, &token))
        .buffer_unordered(connections)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let ids = Arc::new(ids);
    let (ticker, taken) = slots(rate, seconds, connections);
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (client, taken, ids, token) = (client.clone(), taken.clone(), ids.clone(), token.clone());
            let (url, query_url) = (target.url.clone(), query_url.to_owned());
            tokio::spawn(async move {
                let mut out =
                    ViewLatency { done: 0, errors: 0, late: 0, after_answer: Vec::new(), after_send: Vec::new() };
                let mut reads = Vec::new();
                loop {
                    let next = taken.lock().await.recv().await;
                    let Some(n) = next else { break };
                    let account = &ids[(n as usize).wrapping_mul(7919) % ids.len()];
                    let sent = Instant::now();
                    let answer = client
                        .post(format!("{url}/accounts/{account}/deposits"))
                        .bearer_auth(&token)
                        .json(&json!({"amount": 1, "currency": "EUR"}))
                        .send()
                        .await;
                    let version = match answer {
                        Ok(r) if r.status().is_success() => {
                            r.json::<serde_json::Value>().await.ok().and_then(|b| b["version"].as_i64())
                        }
                        _ => None,
                    };
                    let Some(version) = version else {
                        out.errors += 1;
                        continue;
                    };
                    let answered = Instant::now();
                    // the read-back runs on its own, so that it does not slow the deposits down
                    let read = client
                        .get(format!("{query_url}/accounts/{account}?min_version={version}&wait_ms=5000"))
                        .bearer_auth(&token)
                        .send();
                    reads.push(tokio::spawn(async move {
                        let status = read.await.map(|r| r.status().as_u16());
                        (status, answered.elapsed().as_secs_f64() * 1000.0, sent.elapsed().as_secs_f64() * 1000.0)
                    }));
                }
                for read in reads {
                    match read.await {
                        Ok((Ok(200), after_answer, after_send)) => {
                            out.done += 1;
                            out.after_answer.push(after_answer);
                            out.after_send.push(after_send);
                        }
                        Ok((Ok(409), _, _)) => out.late += 1,
                        _ => out.errors += 1,
                    }
                }
                out
            })
        })
        .collect();
    ticker.await?;
    let mut all = ViewLatency { done: 0, errors: 0, late: 0, after_answer: Vec::new(), after_send: Vec::new() };
    for w in workers {
        let out = w.await?;
        all.done += out.done;
        all.errors += out.errors;
        all.late += out.late;
        all.after_answer.extend(out.after_answer);
        all.after_send.extend(out.after_send);
    }
    Ok(all)
}

/// GET /accounts/{id} (accounts opened first and read back once visible), then
/// /health, each over `connections` for `seconds`.
async fn queries(
    target: &Target,
    query_url: &str,
    accounts: usize,
    connections: usize,
    seconds: u64,
) -> anyhow::Result<(Outcome, Outcome)> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(connections).build()?;
    let token = issue_hs256(&target.jwt_secret, "bench-queries", Role::Customer, 7200)?;
    let mut ids = Vec::new();
    for _ in 0..accounts {
        let id = open(&client, &target.url, &token).await?;
        // visible in the views before the measurement starts
        let seen = client
            .get(format!("{query_url}/accounts/{id}?min_version=1&wait_ms=10000"))
            .bearer_auth(&token)
            .send()
            .await?;
        if seen.status() != 200 {
            bail!("account {id} did not reach the views: {}", seen.status());
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

/// GETs from `connections` workers for `seconds`; `request(n)` names the URL and token.
async fn hammer(
    client: &reqwest::Client,
    seconds: u64,
    connections: usize,
    request: impl Fn(usize) -> (String, Option<String>) + Send + Sync + 'static,
) -> Outcome {
    let request = Arc::new(request);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let workers: Vec<_> = (0..connections)
        .map(|w| {
            let (client, request) = (client.clone(), request.clone());
            tokio::spawn(async move {
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                let mut n = w;
                while Instant::now() < deadline {
                    let (url, token) = request(n);
                    n += connections;
                    let t = Instant::now();
                    let mut get = client.get(url);
                    if let Some(token) = token {
                        get = get.bearer_auth(token);
                    }
                    match get.send().await {
                        Ok(r) if r.status() == 200 => {
                            let _ = r.bytes().await;
                            latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let (mut latencies, mut errors) = (Vec::new(), 0);
    for w in workers {
        if let Ok((l, e)) = w.await {
            latencies.extend(l);
            errors += e;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    Outcome {
        rate: latencies.len() as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        ok: latencies.len() as u64,
        errors,
    }
}

struct TransferOutcome {
    created: u64,
    errors: u64,
    completed: u64,
    failed: u64,
    stuck: u64,
    elapsed: f64,
    create_p50: f64,
    create_p99: f64,
    settle_p50: f64,
    settle_p99: f64,
}

/// How one transfer ended, as its client saw it.
enum Settled {
    Completed(f64),
    Failed(f64),
    Stuck,
}

/// Opens `accounts` accounts with enough money that transfers rarely fail; returns
/// each one's id and its owner's token.
async fn open_funded_accounts(
    client: &reqwest::Client,
    target: &Target,
    accounts: usize,
    connections: usize,
) -> anyhow::Result<Arc<Vec<(String, String)>>> {
    let mut tokens = Vec::new();
    for c in 0..accounts.div_ceil(50) {
        tokens.push(issue_hs256(&target.jwt_secret, &format!("bench-t{c}"), Role::Customer, 7200)?);
    }
    let ids: Vec<(String, String)> = futures::stream::iter(0..accounts)
        .map(|i| {
            let (client, url, token) = (client.clone(), target.url.clone(), tokens[i / 50].clone());
            async move {
                let response = client
                    .post(format!("{url}/accounts"))
                    .bearer_auth(&token)
                    .json(&json!({"currency": "EUR", "initial_deposit": 100_000_000}))
                    .send()
                    .await?;
                let body: serde_json::Value = response.json().await?;
                let id = body["id"].as_str().context("opening an account failed")?.to_owned();
                anyhow::Ok((id, token))
            }
        })
        .buffer_unordered(connections)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    Ok(Arc::new(ids))
}

/// Creates transfers among `ids` at `rate` a second for `seconds` from `connections`
/// clients, and follows each one until it settled.
async fn transfers(
    client: &reqwest::Client,
    ids: &Arc<Vec<(String, String)>>,
    transfers_url: &str,
    connections: usize,
    rate: u64,
    seconds: u64,
    poll: &Poll,
) -> anyhow::Result<TransferOutcome> {
    // a ticker hands out R slots a second; C clients take them
    let (ticker, taken) = slots(rate, seconds, connections);
    let errors = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..connections)
        .map(|_| {
            let (client, taken, ids, errors) = (client.clone(), taken.clone(), ids.clone(), errors.clone());
            let (url, poll) = (transfers_url.to_owned(), poll.clone());
            tokio::spawn(async move {
                let mut created = Vec::new();
                let mut pollers = Vec::new();
                loop {
                    // the lock is held only while waiting for a slot, not for the request
                    let next = taken.lock().await.recv().await;
                    let Some(n) = next else { break };
                    let n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) >> 17;
                    let from = (n as usize) % ids.len();
                    let to = (from + 1 + (n as usize / ids.len()) % (ids.len() - 1)) % ids.len();
                    let (source, token) = &ids[from];
                    let body = json!({"from": source, "to": ids[to].0, "amount": 1 + n % 100, "currency": "EUR"});
                    let t = Instant::now();
                    let response = client.post(format!("{url}/transfers")).bearer_auth(token).json(&body).send().await;
                    let id = match response {
                        Ok(r) if r.status() == 201 => {
                            let body: serde_json::Value = r.json().await.unwrap_or_default();
                            body["id"].as_str().map(str::to_owned)
                        }
                        _ => None,
                    };
                    let Some(id) = id else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    created.push(t.elapsed().as_secs_f64() * 1000.0);
                    let (client, url, token, poll) = (client.clone(), url.clone(), token.clone(), poll.clone());
                    pollers.push(tokio::spawn(async move { settle(&client, &url, &token, &id, t, &poll).await }));
                }
                let mut settled = Vec::new();
                for p in pollers {
                    settled.push(p.await.unwrap_or(Settled::Stuck));
                }
                (created, settled)
            })
        })
        .collect();
    ticker.await?;
    let mut create_ms = Vec::new();
    let mut settle_ms = Vec::new();
    let (mut completed, mut failed, mut stuck) = (0, 0, 0);
    for c in clients {
        let (created, settled) = c.await?;
        create_ms.extend(created);
        for s in settled {
            match s {
                Settled::Completed(ms) => {
                    completed += 1;
                    settle_ms.push(ms);
                }
                Settled::Failed(ms) => {
                    failed += 1;
                    settle_ms.push(ms);
                }
                Settled::Stuck => stuck += 1,
            }
        }
    }
    Ok(TransferOutcome {
        created: create_ms.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        completed,
        failed,
        stuck,
        elapsed: seconds as f64,
        create_p50: percentile(&create_ms, 0.50),
        create_p99: percentile(&create_ms, 0.99),
        settle_p50: percentile(&settle_ms, 0.50),
        settle_p99: percentile(&settle_ms, 0.99),
    })
}

/// Slots handed out `rate` times a second for `seconds` (numbered from 0), from a
/// channel the clients share; the ticker task ends when the time is up.
fn slots(
    rate: u64,
    seconds: u64,
    clients: usize,
) -> (tokio::task::JoinHandle<()>, Arc<tokio::sync::Mutex<tokio::sync::mpsc::Receiver<u64>>>) {
    let (slots, taken) = tokio::sync::mpsc::channel(clients.max(1));
    let ticker = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
        // a late tick (a busy machine, all clients busy) is made up for: the rate asked
        // is the rate offered, on average
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let end = Instant::now() + Duration::from_secs(seconds);
        let mut n: u64 = 0;
        while Instant::now() < end {
            interval.tick().await;
            if slots.send(n).await.is_err() {
                break;
            }
            n += 1;
        }
    });
    (ticker, Arc::new(tokio::sync::Mutex::new(taken)))
}

/// How a client follows a transfer.
#[derive(Debug, Clone)]
enum Poll {
    /// GET transfer-service's `/transfers/{id}` at this interval.
    Every(Duration),
    /// GET `<base>/transfers/{id}?min_version=<next>&wait_ms=5000`.
    Long(String),
}

/// Follows a transfer until it is completed or failed (or 60 s passed).
async fn settle(client: &reqwest::Client, url: &str, token: &str, id: &str, created: Instant, poll: &Poll) -> Settled {
    let mut next = 2; // creation answered version 1
    while created.elapsed() < Duration::from_secs(60) {
        let request = match poll {
            Poll::Every(interval) => {
                tokio::time::sleep(*interval).await;
                client.get(format!("{url}/transfers/{id}"))
            }
            Poll::Long(query) => client.get(format!("{query}/transfers/{id}?min_version={next}&wait_ms=5000")),
        };
        let Ok(response) = request.bearer_auth(token).send().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        if response.status() != 200 {
            continue; // 409 view_out_of_date / version_not_reached: ask again
        }
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        let ms = created.elapsed().as_secs_f64() * 1000.0;
        match body["state"].as_str() {
            Some("completed") => return Settled::Completed(ms),
            Some("failed") => return Settled::Failed(ms),
            _ => next = body["version"].as_i64().unwrap_or(next - 1) + 1,
        }
    }
    Settled::Stuck
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
