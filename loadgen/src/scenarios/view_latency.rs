//! `loadgen view-latency`: deposits at R per second, each read back from query-service
//! with `min_version` = the deposit's version: the time from the command's answer
//! until the view shows it (and from sending the command).

use crate::client::{self, Target};
use crate::load::slots;
use crate::report::percentile;
use bank_client::{BankClient, Urls};
use futures::StreamExt;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Instant;
use uuid::Uuid;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// query-service base URL.
    #[arg(long, env = "QUERY_SERVICE_URL", default_value = "http://127.0.0.1:8083")]
    pub query_url: String,
    #[arg(long, default_value_t = 1000)]
    pub accounts: usize,
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Deposits per second (R).
    #[arg(long, default_value_t = 500)]
    pub rate: u64,
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
}

/// Figures: `view_deposits_per_s`, `view_visible_p50_ms` / `view_visible_p99_ms`
/// (answered → visible), `view_visible_from_send_p50_ms` / `_p99_ms` (sent → visible),
/// `view_not_visible_within_5s`, `view_errors`.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let Args { target, query_url, accounts, connections, rate, seconds } = args;
    let out = measure(&target, &query_url, accounts, connections, rate, seconds).await?;
    let deposits_per_s = out.done as f64 / seconds as f64;
    let (a50, a99) = (percentile(&out.after_answer, 0.50), percentile(&out.after_answer, 0.99));
    let (s50, s99) = (percentile(&out.after_send, 0.50), percentile(&out.after_send, 0.99));
    println!("deposits read back from the views: M={accounts}, R={rate}/s asked, T={seconds}s");
    println!("  deposits/s                {deposits_per_s:>10.1}");
    println!("  answered → visible p50    {a50:>10.1} ms");
    println!("  answered → visible p99    {a99:>10.1} ms");
    println!("  sent → visible p50        {s50:>10.1} ms");
    println!("  sent → visible p99        {s99:>10.1} ms");
    println!("  not visible within 5 s    {:>10}", out.late);
    println!("  errors                    {:>10}", out.errors);
    Ok(json!({
        "view_deposits_per_s": deposits_per_s,
        "view_visible_p50_ms": a50,
        "view_visible_p99_ms": a99,
        "view_visible_from_send_p50_ms": s50,
        "view_visible_from_send_p99_ms": s99,
        "view_not_visible_within_5s": out.late,
        "view_errors": out.errors,
    }))
}

#[derive(Default)]
struct ViewLatency {
    done: u64,
    errors: u64,
    late: u64,
    after_answer: Vec<f64>,
    after_send: Vec<f64>,
}

async fn measure(
    target: &Target,
    query_url: &str,
    accounts: usize,
    connections: usize,
    rate: u64,
    seconds: u64,
) -> anyhow::Result<ViewLatency> {
    anyhow::ensure!(accounts > 0, "--accounts must be at least 1");
    let http = reqwest::Client::builder().pool_max_idle_per_host(connections * 2).build()?;
    let bank = BankClient::anonymous(Urls { queries: query_url.to_owned(), ..target.urls() })
        .with_http(http)
        .with_token(target.token("bench-views")?);
    let ids: Vec<Uuid> = futures::stream::iter(0..accounts)
        .map(|_| client::open(&bank))
        .buffer_unordered(connections)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let ids = Arc::new(ids);
    let (ticker, taken) = slots(rate, seconds, connections);
    let workers: Vec<_> = (0..connections)
        .map(|_| {
            let (bank, taken, ids) = (bank.clone(), taken.clone(), ids.clone());
            tokio::spawn(async move {
                let mut out = ViewLatency::default();
                let mut reads = Vec::new();
                loop {
                    let next = taken.lock().await.recv().await;
                    let Some(n) = next else { break };
                    let account = ids[(n as usize).wrapping_mul(7919) % ids.len()];
                    let sent = Instant::now();
                    let Ok(version) = client::deposit_version(&bank, account).await else {
                        out.errors += 1;
                        continue;
                    };
                    let answered = Instant::now();
                    // the read-back runs on its own, so that it does not slow the deposits down
                    let bank = bank.clone();
                    reads.push(tokio::spawn(async move {
                        let status = client::read_account(&bank, account, version, 5000).await;
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
    let mut all = ViewLatency::default();
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
