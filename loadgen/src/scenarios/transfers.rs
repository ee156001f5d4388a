//! `loadgen transfers`: transfers among M accounts at R per second from C clients for
//! T seconds, each followed until it is completed or failed; prints transfers/s,
//! completion latency (created → settled as the following client sees it) and the
//! tailer's commit → Kinesis lag over the same time, PutRecords calls, and each river's
//! delivery latency and GetRecords calls. `--warmup W` runs the same load for W seconds
//! first and prints its figures apart.

use crate::client::{self, Target, TransferSource, histograms, tailer_histogram};
use crate::load::slots;
use crate::procs::{CpuSample, Watched, rss_figures};
use crate::prom::{Histogram, since};
use crate::report::{bound_ms, bound_text, percentile};
use bank_client::{BankClient, Urls};
use futures::StreamExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use uuid::Uuid;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// transfer-service base URL.
    #[arg(long, env = "TRANSFER_SERVICE_URL", default_value = "http://127.0.0.1:8082")]
    pub transfers_url: String,
    /// The tailer's base URL (its /metrics).
    #[arg(long, default_value = "http://127.0.0.1:8085")]
    pub tailer: String,
    /// Accounts the transfers run between (M).
    #[arg(long, default_value_t = 200)]
    pub accounts: usize,
    /// Clients creating transfers at once (C).
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Transfers created per second (R), spread evenly.
    #[arg(long, default_value_t = 200)]
    pub rate: u64,
    /// Seconds of creating transfers (T).
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Seconds of the same load first, not counted (connection pools, caches, the
    /// emulator's JIT warm up); its figures are printed apart.
    #[arg(long, default_value_t = 0)]
    pub warmup: u64,
    /// How often a client polls a transfer's state (without --long-poll-url).
    #[arg(long, default_value_t = 25)]
    pub poll_ms: u64,
    /// Follow transfers by long-polling `/transfers/{id}` at this base URL
    /// (transfer-service or query-service) instead: `min_version` = the next
    /// version, so each request returns when the transfer moves on.
    #[arg(long)]
    pub long_poll_url: Option<String>,
    /// Base URLs of services running rivers (their /metrics): prints each river's
    /// delivery latency and GetRecords durations over the run.
    #[arg(long = "river-metrics")]
    pub river_metrics: Vec<String>,
    /// A process of the system under load, `NAME=PID` (repeatable): its CPU seconds per
    /// transfer over the measured run and its peak resident memory are printed.
    #[arg(long = "process", value_name = "NAME=PID")]
    pub processes: Vec<Watched>,
    /// A process whose CPU seconds per transfer are printed too, not a service of the
    /// system (e.g. the Kinesis emulator), `NAME=PID` (repeatable). With any
    /// `--process`, the load generator itself is counted this way.
    #[arg(long = "cpu-of", value_name = "NAME=PID")]
    pub others: Vec<Watched>,
    /// Right when creating at R ends (its transfers still settling), create at this
    /// rate for `--then-seconds`: how the system recovers from R (`then`, with the
    /// completion p99 of each second of it).
    #[arg(long, requires = "then_seconds")]
    pub then_rate: Option<u64>,
    #[arg(long)]
    pub then_seconds: Option<u64>,
}

/// Figures: `follow`, `transfers_created`, `transfers_created_per_s`,
/// `transfer_create_p50_ms` / `_p99_ms`, `transfers_completed`, `transfers_failed`,
/// `transfers_not_settled_within_60s`, `transfer_create_errors`,
/// `transfer_completion_p50_ms` / `_p99_ms`, `events_published`,
/// `publish_lag_p50_ms` / `_p99_ms` (bucket upper bounds; null beyond the last),
/// `put_records` [{`labels`, `calls`, `mean_ms`}], `rivers` [{`metrics_url`, `labels`,
/// `delivery_p50_ms`, `delivery_p99_ms`, `get_records_calls`, `get_records_mean_ms`}],
/// with a warm-up `warmup` {`seconds`, `transfers_created`,
/// `transfer_completion_p50_ms` / `_p99_ms`, `publish_lag_p99_ms`}, and with `--process`
/// `cpu_s_per_transfer` (the whole machine's busy CPU while transfers were created, load
/// generator included, per transfer created), `cpu_s_per_transfer_by_process` {name: s}
/// (the services, `--cpu-of` processes, `loadgen`, and `rest`: the machine's CPU that none
/// of them used, mostly Postgres's), and the services' `rss_mb`
/// {name: peak MiB} and `rss_mb_max`.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let Args {
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
        processes,
        others,
        then_rate,
        then_seconds,
    } = args;
    // a transfer needs two distinct accounts
    anyhow::ensure!(accounts >= 2, "--accounts must be at least 2");
    // long-polling transfer-service's own URL reads the event store; any other, the views
    let poll = match &long_poll_url {
        Some(url) if *url == transfers_url => Poll::Long(TransferSource::Transfers),
        Some(_) => Poll::Long(TransferSource::Views),
        None => Poll::Every(Duration::from_millis(poll_ms)),
    };
    let http = reqwest::Client::builder().pool_max_idle_per_host(connections * 4).build()?;
    let urls = Urls {
        transfers: transfers_url.clone(),
        queries: long_poll_url.clone().unwrap_or_else(|| Urls::dev().queries),
        ..target.urls()
    };
    let bank = BankClient::anonymous(urls).with_http(http);
    let ids = open_funded_accounts(&bank, &target, accounts, connections).await?;
    let mut warmup_figures = None;
    if warmup > 0 {
        let lag_before = tailer_histogram(&tailer).await?;
        let outcome = transfers(&ids, connections, rate, warmup, &poll, &[]).await?;
        let lag = tailer_histogram(&tailer).await?.minus(&lag_before);
        let lag_p99 = lag.quantile_bound(0.99);
        println!(
            "warm-up, not counted: {}s, {} transfers, completion p50 / p99 {:.1} / {:.1} ms, publish lag p99 {}",
            warmup,
            outcome.created,
            outcome.settle_p50,
            outcome.settle_p99,
            bound_text(lag_p99)
        );
        warmup_figures = Some(json!({
            "seconds": warmup,
            "transfers_created": outcome.created,
            "transfer_completion_p50_ms": outcome.settle_p50,
            "transfer_completion_p99_ms": outcome.settle_p99,
            "publish_lag_p99_ms": bound_ms(lag_p99),
        }));
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
    // the services, then the other processes whose CPU is counted
    let mut watched = processes.clone();
    if !processes.is_empty() {
        watched.extend(others);
        watched.push(Watched { name: "loadgen".into(), pid: std::process::id() });
    }
    let overload = seconds;
    let then = async {
        let (Some(rate), Some(seconds)) = (then_rate, then_seconds) else { return Ok(None) };
        tokio::time::sleep(Duration::from_secs(overload)).await;
        transfers(&ids, connections, rate, seconds, &poll, &[]).await.map(Some)
    };
    let (outcome, then) = tokio::join!(transfers(&ids, connections, rate, seconds, &poll, &watched), then);
    let (outcome, then) = (outcome?, then?);
    let lag = tailer_histogram(&tailer).await?.minus(&before);
    let (lag_p50, lag_p99) = (lag.quantile_bound(0.50), lag.quantile_bound(0.99));
    let how = match &long_poll_url {
        Some(url) if *url == transfers_url => "long-polling transfer-service with min_version".to_string(),
        Some(_) => "long-polling query-service with min_version".to_string(),
        None => format!("polling transfer-service every {poll_ms} ms"),
    };
    let created_per_s = outcome.created as f64 / outcome.elapsed;
    println!("transfers: M={accounts} accounts, C={connections}, R={rate}/s asked, T={seconds}s, {how}");
    println!("  created/s                 {created_per_s:>10.1}");
    println!("  create p50 / p99          {:>7.1} / {:.1} ms", outcome.create_p50, outcome.create_p99);
    println!("  completed                 {:>10}", outcome.completed);
    println!("  failed                    {:>10}", outcome.failed);
    println!("  not settled within 60 s   {:>10}", outcome.stuck);
    println!("  create errors             {:>10}", outcome.errors);
    println!("  completion p50            {:>10.1} ms", outcome.settle_p50);
    println!("  completion p99            {:>10.1} ms", outcome.settle_p99);
    println!("  events published          {:>10}", lag.count);
    println!("  publish lag p50           {:>10}", bound_text(lag_p50));
    println!("  publish lag p99           {:>10}", bound_text(lag_p99));
    let mut put_records = Vec::new();
    for (labels, put) in since(histograms(&tailer, "tailer_put_records_seconds").await?, &put_before) {
        println!("  PutRecords calls, mean    {:>10}  {:.1} ms", put.count, put.mean_ms());
        put_records.push(json!({"labels": labels, "calls": put.count, "mean_ms": put.mean_ms()}));
    }
    let mut rivers = Vec::new();
    for (url, (delivery_before, reads_before)) in river_metrics.iter().zip(&rivers_before) {
        let reads = since(histograms(url, "river_get_records_seconds").await?, reads_before);
        for (labels, delivery) in since(histograms(url, "river_delivery_seconds").await?, delivery_before) {
            let read = reads.iter().find(|(l, _)| *l == labels).map(|(_, h)| h);
            let (p50, p99) = (delivery.quantile_bound(0.50), delivery.quantile_bound(0.99));
            let calls = read.map(|h| h.count).unwrap_or(0);
            let mean_ms = read.map(Histogram::mean_ms).unwrap_or(0.0);
            println!(
                "  river {labels}: arrival → handled p50 {}, p99 {}; GetRecords calls {calls}, mean {mean_ms:.1} ms",
                bound_text(p50),
                bound_text(p99),
            );
            rivers.push(json!({
                "metrics_url": url,
                "labels": labels,
                "delivery_p50_ms": bound_ms(p50),
                "delivery_p99_ms": bound_ms(p99),
                "get_records_calls": calls,
                "get_records_mean_ms": mean_ms,
            }));
        }
    }
    let mut figures = json!({
        "follow": how,
        "transfers_created": outcome.created,
        "transfers_created_per_s": created_per_s,
        "transfer_create_p50_ms": outcome.create_p50,
        "transfer_create_p99_ms": outcome.create_p99,
        "transfers_completed": outcome.completed,
        "transfers_failed": outcome.failed,
        "transfers_not_settled_within_60s": outcome.stuck,
        "transfer_create_errors": outcome.errors,
        "transfer_completion_p50_ms": outcome.settle_p50,
        "transfer_completion_p99_ms": outcome.settle_p99,
        "events_published": lag.count,
        "publish_lag_p50_ms": bound_ms(lag_p50),
        "publish_lag_p99_ms": bound_ms(lag_p99),
        "put_records": put_records,
        "rivers": rivers,
    });
    if let Some(warmup) = warmup_figures {
        figures["warmup"] = warmup;
    }
    if let (Some(then), Some(then_rate)) = (&then, then_rate) {
        println!(
            "then at {then_rate}/s right after: {} created, completion p99 {:.1} ms; p99 of each second: {}",
            then.created,
            then.settle_p99,
            then.p99_by_second.iter().map(|(s, p)| format!("{s}:{p:.0}")).collect::<Vec<_>>().join(" ")
        );
        figures["then"] = json!({
            "rate": then_rate,
            "seconds": then_seconds,
            "transfers_created": then.created,
            "transfers_not_settled_within_60s": then.stuck,
            "transfer_completion_p99_ms": then.settle_p99,
            "completion_p99_ms_by_second": then.p99_by_second,
        });
    }
    if let Some((cpu_machine, cpu_each)) = &outcome.cpu {
        // over the seconds of creating transfers, the system in its steady state at
        // this rate (the tail of settling the last ones is left out)
        let per = |cpu: f64| cpu / outcome.created.max(1) as f64;
        println!(
            "  CPU per transfer          {:>10.2} ms  (the machine, load generator included)",
            per(*cpu_machine) * 1000.0
        );
        let mut by_process = serde_json::Map::new();
        for (w, cpu) in watched.iter().zip(cpu_each) {
            println!("  CPU per transfer          {:>10.2} ms  {}", per(*cpu) * 1000.0, w.name);
            by_process.insert(w.name.clone(), json!(per(*cpu)));
        }
        // Postgres's processes, the kernel's work and anything else on the machine
        let rest = cpu_machine - cpu_each.iter().sum::<f64>();
        println!(
            "  CPU per transfer          {:>10.2} ms  the rest (Postgres, the kernel, others)",
            per(rest) * 1000.0
        );
        by_process.insert("rest".into(), json!(per(rest)));
        figures["cpu_s_per_transfer"] = json!(per(*cpu_machine));
        figures["cpu_s_per_transfer_by_process"] = by_process.into();
        let rss = rss_figures(&processes)?;
        figures["rss_mb"] = rss["rss_mb"].clone();
        figures["rss_mb_max"] = rss["rss_mb_max"].clone();
    }
    Ok(figures)
}

pub struct TransferOutcome {
    pub created: u64,
    errors: u64,
    pub completed: u64,
    pub failed: u64,
    pub stuck: u64,
    elapsed: f64,
    create_p50: f64,
    create_p99: f64,
    pub settle_p50: f64,
    pub settle_p99: f64,
    /// Completion p99 of the transfers created in each second of the run, from its start.
    pub p99_by_second: Vec<(u64, f64)>,
    /// CPU seconds while transfers were being created: the machine's, each watched
    /// process's (when processes are watched).
    cpu: Option<(f64, Vec<f64>)>,
}

/// How one transfer ended, as its client saw it.
enum Settled {
    Completed(f64),
    Failed(f64),
    Stuck,
}

/// Opens `accounts` accounts with enough money that transfers rarely fail (a customer
/// per 50); returns each one's id and a client calling as its owner.
pub async fn open_funded_accounts(
    bank: &BankClient,
    target: &Target,
    accounts: usize,
    connections: usize,
) -> anyhow::Result<Arc<Vec<(Uuid, BankClient)>>> {
    let mut customers = Vec::new();
    for c in 0..accounts.div_ceil(50) {
        customers.push(bank.with_token(target.token(&format!("bench-t{c}"))?));
    }
    let ids: Vec<(Uuid, BankClient)> = futures::stream::iter(0..accounts)
        .map(|i| {
            let customer = customers[i / 50].clone();
            async move {
                let id = client::open_funded(&customer, 100_000_000).await?;
                anyhow::Ok((id, customer))
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
/// clients, and follows each one until it settled; with `watched` processes, measures
/// CPU time over the seconds of creating.
pub async fn transfers(
    ids: &Arc<Vec<(Uuid, BankClient)>>,
    connections: usize,
    rate: u64,
    seconds: u64,
    poll: &Poll,
    watched: &[Watched],
) -> anyhow::Result<TransferOutcome> {
    let cpu_before = if watched.is_empty() { None } else { Some(CpuSample::take(watched)?) };
    let start = Instant::now();
    // a ticker hands out R slots a second; C clients take them
    let (ticker, taken) = slots(rate, seconds, connections);
    let errors = Arc::new(AtomicU64::new(0));
    let clients: Vec<_> = (0..connections)
        .map(|_| {
            let (taken, ids, errors, poll) = (taken.clone(), ids.clone(), errors.clone(), *poll);
            tokio::spawn(async move {
                let mut created = Vec::new();
                let mut pollers = Vec::new();
                loop {
                    // the lock is held only while waiting for a slot, not for the request
                    let next = taken.lock().await.recv().await;
                    let Some(n) = next else { break };
                    let (from, to, amount) = pick(n, ids.len());
                    let (source, customer) = &ids[from];
                    let t = Instant::now();
                    let Some(id) = client::create_transfer(customer, *source, ids[to].0, amount).await else {
                        errors.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    created.push(t.elapsed().as_secs_f64() * 1000.0);
                    let customer = customer.clone();
                    let second = t.duration_since(start).as_secs();
                    pollers.push((second, tokio::spawn(async move { settle(&customer, id, t, poll).await })));
                }
                let mut settled = Vec::new();
                for (second, p) in pollers {
                    settled.push((second, p.await.unwrap_or(Settled::Stuck)));
                }
                (created, settled)
            })
        })
        .collect();
    ticker.await?;
    let cpu = match cpu_before {
        Some(before) => Some(CpuSample::take(watched)?.since(&before)),
        None => None,
    };
    let mut create_ms = Vec::new();
    let mut settle_ms = Vec::new();
    let mut by_second: std::collections::BTreeMap<u64, Vec<f64>> = Default::default();
    let (mut completed, mut failed, mut stuck) = (0, 0, 0);
    for c in clients {
        let (created, settled) = c.await?;
        create_ms.extend(created);
        for (second, s) in settled {
            let ms = match s {
                Settled::Completed(ms) => {
                    completed += 1;
                    ms
                }
                Settled::Failed(ms) => {
                    failed += 1;
                    ms
                }
                Settled::Stuck => {
                    stuck += 1;
                    60_000.0
                }
            };
            if !matches!(s, Settled::Stuck) {
                settle_ms.push(ms);
            }
            by_second.entry(second).or_default().push(ms);
        }
    }
    let p99_by_second = by_second.iter().map(|(s, ms)| (*s, percentile(ms, 0.99))).collect();
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
        p99_by_second,
        cpu,
    })
}

/// Slot `n`'s transfer among `accounts` (at least 2) accounts: a pseudo-random source,
/// a different destination, and an amount of 1..=100 minor units.
fn pick(n: u64, accounts: usize) -> (usize, usize, u64) {
    let n = n.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) >> 17;
    let from = (n as usize) % accounts;
    let to = (from + 1 + (n as usize / accounts) % (accounts - 1)) % accounts;
    (from, to, 1 + n % 100)
}

/// How a client follows a transfer.
#[derive(Debug, Clone, Copy)]
pub enum Poll {
    /// GET transfer-service's `/transfers/{id}` at this interval.
    Every(Duration),
    /// GET `/transfers/{id}?min_version=<next>&wait_ms=5000` of this service.
    Long(TransferSource),
}

/// Follows a transfer until it is completed or failed (or 60 s passed).
async fn settle(bank: &BankClient, id: Uuid, created: Instant, poll: Poll) -> Settled {
    let mut next = 2; // creation answered version 1
    while created.elapsed() < Duration::from_secs(60) {
        let answer = match poll {
            Poll::Every(interval) => {
                tokio::time::sleep(interval).await;
                client::transfer_state(bank, TransferSource::Transfers, id, None).await
            }
            Poll::Long(source) => client::transfer_state(bank, source, id, Some(next)).await,
        };
        let (state, version) = match answer {
            Ok(Some(answer)) => answer,
            Ok(None) => continue, // 409 view_out_of_date / version_not_reached: ask again
            Err(_) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let ms = created.elapsed().as_secs_f64() * 1000.0;
        match state.as_str() {
            "completed" => return Settled::Completed(ms),
            "failed" => return Settled::Failed(ms),
            _ => next = version + 1,
        }
    }
    Settled::Stuck
}

#[cfg(test)]
mod tests {
    use super::pick;

    #[test]
    fn a_transfer_never_goes_to_its_own_source_and_stays_in_range() {
        for accounts in [2, 3, 200] {
            for n in 0..10_000 {
                let (from, to, amount) = pick(n, accounts);
                assert!(from < accounts && to < accounts, "{from} {to} of {accounts}");
                assert_ne!(from, to);
                assert!((1..=100).contains(&amount));
            }
        }
        // the same slot always makes the same transfer
        assert_eq!(pick(42, 200), pick(42, 200));
    }
}
