//! `loadgen long-stream`: deposit latency on an account with N events next to a fresh
//! account's, S sequential deposits on each (what a long stream costs a command).

use crate::client::{self, Target};
use crate::report::percentile;
use anyhow::bail;
use bank_client::BankClient;
use futures::StreamExt;
use serde_json::{Value, json};
use std::time::Instant;
use uuid::Uuid;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// Events on the long account before measuring.
    #[arg(long, default_value_t = 10_000)]
    pub events: usize,
    /// Sequential deposits measured on each account.
    #[arg(long, default_value_t = 500)]
    pub samples: usize,
}

/// Figures: `long_events` (the long account's events when measured), `samples`,
/// `long_p50_ms`, `long_p99_ms`, `fresh_p50_ms`, `fresh_p99_ms`, `long_to_fresh_p50_ratio`.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let Args { target, events, samples } = args;
    let bank = BankClient::new(target.urls(), target.token("bench-long")?);
    let long = client::open(&bank).await?;
    let fresh = client::open(&bank).await?;
    // grow the long stream, 16 at a time
    let grown = futures::stream::iter(0..events)
        .map(|_| client::deposit(&bank, long))
        .buffer_unordered(16)
        .filter(|r| futures::future::ready(r.is_ok()))
        .count()
        .await;
    if grown != events {
        bail!("only {grown} of {events} deposits succeeded while growing the stream");
    }
    let long_ms = sequential_latencies(&bank, long, samples).await?;
    let fresh_ms = sequential_latencies(&bank, fresh, samples).await?;
    let (lp50, lp99) = (percentile(&long_ms, 0.50), percentile(&long_ms, 0.99));
    let (fp50, fp99) = (percentile(&fresh_ms, 0.50), percentile(&fresh_ms, 0.99));
    println!("deposit latency, {samples} sequential deposits each");
    println!("  account with {:>6} events: p50 {lp50:>7.2} ms  p99 {lp99:>7.2} ms", events + 1);
    println!("  fresh account:              p50 {fp50:>7.2} ms  p99 {fp99:>7.2} ms");
    println!("  ratio long/fresh (p50)      {:.2}", lp50 / fp50);
    Ok(json!({
        "long_events": events + 1,
        "samples": samples,
        "long_p50_ms": lp50,
        "long_p99_ms": lp99,
        "fresh_p50_ms": fp50,
        "fresh_p99_ms": fp99,
        "long_to_fresh_p50_ratio": lp50 / fp50,
    }))
}

/// `samples` deposits on `account`, one after the other; each one's latency in ms.
async fn sequential_latencies(bank: &BankClient, account: Uuid, samples: usize) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::with_capacity(samples);
    for _ in 0..samples {
        let started = Instant::now();
        client::deposit(bank, account).await?;
        out.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    Ok(out)
}
