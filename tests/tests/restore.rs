//! The stream outlives the database: pointed at a fresh database (or a restored one,
//! which `bankctl store-identity --renew` gives a new identity), the rivers meet the
//! envelopes of the earlier store. Each envelope names its store; the events of another
//! store that this one does not hold are counted and skipped at once, without the wait
//! for a commit not yet visible, and nothing is parked.
#![allow(clippy::unwrap_used)]

use eventstore::envelope::Envelope;
use serde_json::json;
use sqlx::PgPool;
use std::time::Duration;
use tests::{Api, Customer, counter_sum, start_bank, token, wait_for};
use uuid::Uuid;

/// An event of the earlier store, as its tailer published it.
fn earlier(store: Uuid, event_type: &str, n: i32) -> Envelope {
    let data = json!({"amount": 5, "currency": "EUR", "balance_after": 5});
    Envelope {
        position: i64::from(n),
        store: Some(store),
        traceparent: None,
        ..tests::aggregate_envelope(event_type, Uuid::now_v7(), n, data)
    }
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn the_events_of_another_store_on_the_stream_are_skipped_at_once_and_the_bank_goes_on(pool: PgPool) {
    let bank = start_bank(&pool).await;
    let ours = eventstore::identity::identity(&pool).await.unwrap();

    // the stream still holds an earlier database's events: 100 deposits (read by the
    // views and the transfers rivers) and 100 transfers (the views and the accounts)
    let other = Uuid::now_v7();
    for n in 1..=100 {
        tests::put_envelope(&bank.rapids, &earlier(other, "account.deposited", n)).await;
        tests::put_envelope(&bank.rapids, &earlier(other, "transfer.created", n)).await;
    }
    // and the bank goes on: a deposit and a transfer made now settle and show
    let alice = token("alice", Customer);
    let accounts = Api::new(&bank.accounts.base);
    let from = accounts.open_account(&alice, "EUR", 100).await;
    let to = accounts.open_account(&alice, "EUR", 0).await;
    let transfer = Api::new(&bank.transfers.base)
        .post("/transfers")
        .token(&alice)
        .json(json!({"from": from, "to": to, "amount": 30, "currency": "EUR"}))
        .send()
        .await;
    let transfer = transfer.expect(201)["id"].as_str().unwrap().to_owned();
    let queries = Api::new(&bank.queries.base);
    let settled = queries.get(&format!("/transfers/{transfer}?min_version=3&wait_ms=10000")).token(&alice).send().await;
    assert_eq!(settled.expect(200)["state"], "completed");
    let view = queries.get(&format!("/accounts/{to}?min_version=2&wait_ms=10000")).token(&alice).send().await;
    assert_eq!(view.expect(200)["balance"], 30);

    // every river counted the earlier store's events it reads, none was looked for
    // again (no wait), called forged or parked
    wait_for(Duration::from_secs(20), "every river to count the other store's events", || async {
        let counts = (
            counter_sum(&bank.view_metrics.other_store),
            counter_sum(&bank.transfer_state.river_metrics.other_store),
            counter_sum(&bank.account_state.river_metrics.other_store),
        );
        (counts == (200, 100, 100)).then_some(())
    })
    .await;
    for metrics in [&bank.view_metrics, &bank.transfer_state.river_metrics, &bank.account_state.river_metrics] {
        assert_eq!(counter_sum(&metrics.unseen), 0, "a river waited for another store's event");
        assert_eq!(counter_sum(&metrics.forged), 0);
    }
    let parked: i64 =
        sqlx::query_scalar("select count(*) from rapids.river_dead_letters").fetch_one(&pool).await.unwrap();
    assert_eq!(parked, 0);

    // the tailer names this store in every envelope it publishes
    let published: Vec<Envelope> = tests::read_shards(&bank.rapids).await.into_iter().flatten().collect();
    let own: Vec<&Envelope> = published.iter().filter(|e| e.store != Some(other)).collect();
    assert!(own.len() >= 5, "{}", own.len());
    assert!(own.iter().all(|e| e.store == Some(ours)), "an envelope without this store's identity");

    // a restore takes a new identity (what `bankctl store-identity --renew` runs), with
    // the tailers stopped: refused while one leads
    assert!(matches!(eventstore::identity::renew(&pool).await, Err(eventstore::identity::RenewError::TailerRunning)));
    assert_eq!(eventstore::identity::identity(&pool).await.unwrap(), ours);
    drop(bank);
    let renewed = wait_for(Duration::from_secs(20), "the tailer to let its lock go", || async {
        eventstore::identity::renew(&pool).await.ok()
    })
    .await;
    assert_ne!(renewed, ours);
    assert_eq!(eventstore::identity::identity(&pool).await.unwrap(), renewed);
}
