//! `loadgen publish-lag`: deposits for T seconds while a tailer publishes them, and the
//! tailer's commit → Kinesis lag over exactly that load, from its
//! `tailer_publish_lag_seconds` histogram (scraped once the tailer is idle, and again
//! once it has drained what was committed).

use crate::client::{Target, tailer_histogram};
use crate::report::{bound_ms, bound_text};
use crate::scenarios::deposits;
use serde_json::{Value, json};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// The tailer's base URL (its /metrics).
    #[arg(long, default_value = "http://127.0.0.1:8085")]
    pub tailer: String,
    #[arg(long, default_value_t = 1000)]
    pub accounts: usize,
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
}

/// Figures: `deposits_per_s`, `deposits_p50_ms`, `deposits_p99_ms`, `deposits_ok`,
/// `deposits_errors`, `events_published`, `publish_lag_p50_ms`, `publish_lag_p99_ms`
/// (the upper bound of the histogram bucket the quantile falls in; null beyond the
/// last bucket).
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let Args { target, tailer, accounts, connections, seconds } = args;
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
    let service = deposits::drive(&target, accounts, connections, seconds).await?;
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
    let (p50, p99) = (lag.quantile_bound(0.50), lag.quantile_bound(0.99));
    println!("deposits with the tailer publishing them: {:.0} commands/s, p99 {:.2} ms", service.rate, service.p99_ms);
    println!("  events published          {:>10}", lag.count);
    println!("  publish lag p50           {:>10}", bound_text(p50));
    println!("  publish lag p99           {:>10}", bound_text(p99));
    let mut figures = service.figures("deposits");
    figures["events_published"] = json!(lag.count);
    figures["publish_lag_p50_ms"] = bound_ms(p50);
    figures["publish_lag_p99_ms"] = bound_ms(p99);
    Ok(figures)
}
