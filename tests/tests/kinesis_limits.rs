//! Kinesis within AWS's limits, against a real Kinesis API server: the stream's
//! retention is set by ensure-stream's call, and with a GetRecords budget every river
//! together stays within it on each shard while the saga runs, and every transfer
//! settles.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use tests::{Customer, fast_river, start_bank_with, token};

#[tokio::test]
async fn ensure_stream_sets_the_retention() {
    let rapids = tests::fresh_stream(1).await;
    assert_eq!(rapids.retention_hours().await.unwrap(), 24);
    rapids.set_retention(48, Duration::from_secs(30)).await.unwrap();
    assert_eq!(rapids.retention_hours().await.unwrap(), 48);
    rapids.set_retention(24, Duration::from_secs(30)).await.unwrap();
    assert_eq!(rapids.retention_hours().await.unwrap(), 24);
}

/// GetRecords calls so far, per shard, summed over the rivers.
fn reads_per_shard(metrics: &[&rapids::river::RiverMetrics]) -> HashMap<String, u64> {
    use prometheus::core::Collector;
    let mut per_shard = HashMap::new();
    for m in metrics {
        for family in m.reads.collect() {
            for metric in family.get_metric() {
                let shard = metric.get_label().iter().find(|l| l.name() == "shard").map(|l| l.value().to_owned());
                *per_shard.entry(shard.unwrap_or_default()).or_insert(0) += metric.get_counter().get_value() as u64;
            }
        }
    }
    per_shard
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn every_river_together_stays_within_the_get_records_budget_and_transfers_settle(pool: PgPool) {
    const BUDGET: f64 = 10.0;
    const RIVERS: u64 = 3; // accounts, transfers, views
    let river =
        rapids::config::RiverArgs { river_get_records_budget: BUDGET, river_read_interval_ms: 0, ..fast_river() };
    let bank = start_bank_with(&pool, river).await;
    let accounts = bank.accounts.api();
    let transfers = bank.transfers.api();
    let alice = token("alice", Customer);
    let from = accounts.open_account(&alice, "EUR", 100_000).await;
    let to = accounts.open_account(&alice, "EUR", 0).await;
    let metrics = [&bank.account_state.river_metrics, &bank.transfer_state.river_metrics, &bank.view_metrics];

    // a load of transfers for a few seconds, the rivers' reads sampled meanwhile
    let load = tokio::spawn({
        let (transfers, alice) = (transfers.clone(), alice.clone());
        async move {
            let mut ids = Vec::new();
            for _ in 0..60 {
                let reply = transfers
                    .post("/transfers")
                    .token(&alice)
                    .json(json!({"from": from, "to": to, "amount": 10, "currency": "EUR"}))
                    .send()
                    .await;
                ids.push(reply.id());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            ids
        }
    });
    // every river has its leases and its pace before the measurement starts
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window = Duration::from_secs(2);
    let mut worst = 0.0_f64;
    let mut before = reads_per_shard(&metrics);
    for _ in 0..3 {
        tokio::time::sleep(window).await;
        let now = reads_per_shard(&metrics);
        for (shard, calls) in &now {
            let delta = calls - before.get(shard).copied().unwrap_or(0);
            // a window's edges can cut one more read of each river in
            let allowed = BUDGET * window.as_secs_f64() + RIVERS as f64;
            assert!(
                delta as f64 <= allowed,
                "shard {shard}: {delta} GetRecords calls in {window:?} (budget {BUDGET}/s)"
            );
            worst = worst.max(delta as f64 / window.as_secs_f64());
        }
        before = now;
    }
    println!("the busiest shard had {worst:.1} GetRecords calls a second (budget {BUDGET})");
    assert!(worst > 0.0, "no reads measured");
    // every transfer settles, within the budget
    for id in load.await.unwrap() {
        let done = transfers.get(&format!("/transfers/{id}?min_version=3&wait_ms=9000")).token(&alice).send().await;
        assert_eq!(done.expect(200)["state"], "completed");
    }
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_lease_taken_again_fences_the_readers_of_the_earlier_take(pool: PgPool) {
    use rapids::river::lease::{Leases, Take};
    let a = Leases::new(pool.clone(), "fenced", "a", Duration::from_millis(200));
    let b = Leases::new(pool.clone(), "fenced", "b", Duration::from_millis(200));
    a.add_shards(&[("s1".into(), None, None)]).await.unwrap();
    let free = Take { shard_id: "s1".into(), from: None };
    let lease_expired = || {
        tests::wait_until_true(
            &pool,
            Duration::from_secs(5),
            "the lease to expire",
            "select lease_expires_at <= now() from rapids.river_shards where river = 'fenced'",
            &[],
        )
    };
    assert!(a.take(&free).await.unwrap());
    let (_, first) = a.checkpoint("s1").await.unwrap().expect("a holds s1");
    let mut tx = pool.begin().await.unwrap();
    assert!(a.advance(&mut tx, "s1", "100", first).await.unwrap());
    tx.commit().await.unwrap();
    // a pauses past its lease; b takes the shard (a conditional update on the expired lease)
    lease_expired().await;
    assert!(b.take(&free).await.unwrap());
    assert!(!b.take(&free).await.unwrap(), "a live lease is taken twice");
    let (checkpoint, second) = b.checkpoint("s1").await.unwrap().expect("b holds s1");
    assert_eq!((checkpoint.as_deref(), second), (Some("100"), first + 1));
    let mut tx = pool.begin().await.unwrap();
    assert!(!a.advance(&mut tx, "s1", "200", first).await.unwrap(), "a stale reader moved the checkpoint");
    tx.rollback().await.unwrap();
    // b's lease expires and a takes it back: a's reader of the first take is still fenced
    lease_expired().await;
    assert!(a.take(&free).await.unwrap());
    let (_, third) = a.checkpoint("s1").await.unwrap().expect("a holds s1 again");
    let mut tx = pool.begin().await.unwrap();
    assert!(
        !a.advance(&mut tx, "s1", "300", first).await.unwrap(),
        "the reader of a's first take moved the checkpoint"
    );
    assert!(a.advance(&mut tx, "s1", "300", third).await.unwrap());
    tx.commit().await.unwrap();
}
