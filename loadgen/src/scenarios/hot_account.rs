//! `loadgen hot-account`: one account taking deposits from C connections while
//! transfers run among M other accounts, with Kinesis as far away as the bench puts
//! it (a delay proxy between the services and the emulator). Three runs of T seconds
//! on the same system: transfers alone (their completion p99, the baseline); deposits
//! spread over M accounts (deposits/s, the baseline); deposits to one account with the
//! same transfers at the same time. The hot account's publish lag is read from the
//! stream itself (each of its records' arrival on Kinesis minus its commit time, the
//! last copy of a record counting), and its records on the shard are checked: a
//! reader applying only each next version applies every version once.

use crate::client::Target;
use crate::report::percentile;
use crate::scenarios::{deposits, transfers};
use aws_sdk_kinesis::types::ShardIteratorType;
use bank_client::{BankClient, Urls};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::time::Duration;
use uuid::Uuid;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub target: Target,
    /// transfer-service base URL.
    #[arg(long, env = "TRANSFER_SERVICE_URL", default_value = "http://127.0.0.1:8082")]
    pub transfers_url: String,
    /// The Kinesis API server the stream is read from (directly, not through the delay).
    #[arg(long)]
    pub kinesis_endpoint: String,
    #[arg(long)]
    pub kinesis_stream: String,
    /// Accounts of the transfers and of the spread deposits (M).
    #[arg(long, default_value_t = 200)]
    pub accounts: usize,
    /// Connections of the deposits (C).
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Transfers a second among the other accounts (R).
    #[arg(long, default_value_t = 100)]
    pub rate: u64,
    /// Seconds of each run (T).
    #[arg(long, default_value_t = 15)]
    pub seconds: u64,
}

/// Figures: `others_completion_p99_ms_alone`, `others_completion_p99_ms_with_hot`,
/// `hot_account_others_p99_ratio`, `spread_deposits_per_s`, `hot_account_deposits_per_s`,
/// `hot_account_to_spread_deposit_ratio`, `hot_account_publish_lag_p50_ms` / `_p99_ms`,
/// `hot_account_events`, `hot_account_records_on_stream`, `hot_account_in_order`.
pub async fn run(args: Args) -> anyhow::Result<Value> {
    let Args { target, transfers_url, kinesis_endpoint, kinesis_stream, accounts, connections, rate, seconds } = args;
    let poll = transfers::Poll::Every(Duration::from_millis(25));
    let http = reqwest::Client::builder().pool_max_idle_per_host(connections * 4).build()?;
    let bank = BankClient::anonymous(Urls { transfers: transfers_url, ..target.urls() }).with_http(http);
    let others = transfers::open_funded_accounts(&bank, &target, accounts, connections).await?;

    let alone = transfers::transfers(&others, connections, rate, seconds, &poll, &[]).await?;
    println!("transfers among {accounts} accounts at {rate}/s alone: completion p99 {:.1} ms", alone.settle_p99);
    let spread = deposits::drive(&target, accounts, connections, seconds).await?;
    println!("deposits spread over {accounts} accounts: {:.0}/s", spread.rate);

    let hot = deposits::open_accounts(&target, 1, 1).await?;
    let hot_id = hot[0].0;
    let (hot_deposits, with_hot) = tokio::join!(
        deposits::drive_on(hot, connections, seconds),
        transfers::transfers(&others, connections, rate, seconds, &poll, &[])
    );
    let (hot_deposits, with_hot) = (hot_deposits?, with_hot?);
    println!("deposits to one account: {:.0}/s ({} errors)", hot_deposits.rate, hot_deposits.errors);
    println!("  with transfers among the others at {rate}/s: completion p99 {:.1} ms", with_hot.settle_p99);

    let published = read_stream_of(&kinesis_endpoint, &kinesis_stream, hot_id, hot_deposits.ok + 1).await?;
    let lag: Vec<f64> = published.lag_ms.values().copied().collect();
    let (lag_p50, lag_p99) = (percentile(&lag, 0.50), percentile(&lag, 0.99));
    println!(
        "  the hot account on the stream: {} events in {} records, lag p50 / p99 {lag_p50:.0} / {lag_p99:.0} ms, in order: {}",
        published.lag_ms.len(),
        published.records,
        published.in_order
    );
    let others_ratio = with_hot.settle_p99 / alone.settle_p99;
    let deposit_ratio = hot_deposits.rate / spread.rate;
    println!("  others' p99 with : without the hot account = {others_ratio:.2}");
    println!("  deposits/s to one account : spread = {deposit_ratio:.2}");
    Ok(json!({
        "accounts": accounts,
        "connections": connections,
        "transfer_rate": rate,
        "seconds": seconds,
        "others_completion_p99_ms_alone": alone.settle_p99,
        "others_completion_p99_ms_with_hot": with_hot.settle_p99,
        "others_not_settled_within_60s": with_hot.stuck,
        "hot_account_others_p99_ratio": others_ratio,
        "spread_deposits_per_s": spread.rate,
        "hot_account_deposits_per_s": hot_deposits.rate,
        "hot_account_deposit_errors": hot_deposits.errors,
        "hot_account_to_spread_deposit_ratio": deposit_ratio,
        "hot_account_publish_lag_p50_ms": lag_p50,
        "hot_account_publish_lag_p99_ms": lag_p99,
        "hot_account_events": published.lag_ms.len(),
        "hot_account_records_on_stream": published.records,
        "hot_account_in_order": published.in_order,
    }))
}

/// One stream's records as Kinesis holds them.
struct Published {
    /// Per version: arrival (the record's last copy) minus commit, ms.
    lag_ms: BTreeMap<i64, f64>,
    /// Records of the stream on the shard, copies included.
    records: usize,
    /// Whether a reader applying only each next version applies versions 1 to the
    /// last, each once.
    in_order: bool,
}

/// Reads every shard until `stream_id` has `events` versions on it (or 120 s passed).
async fn read_stream_of(endpoint: &str, stream: &str, stream_id: Uuid, events: u64) -> anyhow::Result<Published> {
    let args = rapids::config::KinesisArgs {
        kinesis_endpoint: endpoint.to_owned(),
        kinesis_stream: stream.to_owned(),
        ..rapids::config::KinesisArgs::default()
    };
    let rapids = rapids::Rapids::connect(&args.rapids_config()).await;
    let client = rapids.client();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let mut copies: Vec<(i64, f64)> = Vec::new(); // (version, lag ms), in shard order
        let shards = client.list_shards().stream_name(stream).send().await?;
        for shard in shards.shards() {
            let mut iterator = client
                .get_shard_iterator()
                .stream_name(stream)
                .shard_id(shard.shard_id())
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await?
                .shard_iterator
                .unwrap_or_default();
            loop {
                let page = client.get_records().shard_iterator(&iterator).limit(10_000).send().await?;
                for record in page.records() {
                    let envelope: Value = serde_json::from_slice(record.data().as_ref())?;
                    if envelope["stream_id"].as_str() != Some(&stream_id.to_string()) {
                        continue;
                    }
                    let version = envelope["version"].as_i64().unwrap_or_default();
                    let committed = envelope["timestamp"].as_i64().unwrap_or_default() as f64;
                    let arrived = record.approximate_arrival_timestamp().map_or(0.0, |t| t.as_secs_f64() * 1000.0);
                    copies.push((version, arrived - committed));
                }
                let caught_up = page.records().is_empty() && page.millis_behind_latest().unwrap_or(0) == 0;
                match page.next_shard_iterator {
                    Some(next) if !caught_up => iterator = next,
                    _ => break,
                }
            }
        }
        let mut lag_ms = BTreeMap::new();
        let mut applied = 0;
        for &(version, lag) in &copies {
            lag_ms.insert(version, lag); // a later copy replaces an earlier one
            if version == applied + 1 {
                applied = version;
            }
        }
        let in_order = applied == lag_ms.len() as i64;
        if lag_ms.len() as u64 >= events || tokio::time::Instant::now() > deadline {
            return Ok(Published { lag_ms, records: copies.len(), in_order });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
