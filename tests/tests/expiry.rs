//! Idempotency records expire without making a saga step repeatable: the cleanup job
//! deletes every HTTP Idempotency-Key record (a TTL of zero), keeps the saga's step
//! records, and then every saga event delivered again moves no money and appends
//! nothing. A request repeated with an expired key is a new request.
#![allow(clippy::unwrap_used)]

use eventstore::expiry::ExpiryConfig;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;
use tests::{Bank, Customer, token};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Opens `owner`'s account: with an initial deposit, a teller opens it (cash is staff's).
async fn open(bank: &Bank, owner: &str, key: &str, deposit: i64) -> Uuid {
    let by = if deposit > 0 { tests::teller_token() } else { token(owner, Customer) };
    let reply = bank
        .accounts
        .api()
        .post("/accounts")
        .token(&by)
        .idempotency_key(key)
        .json(json!({"currency": "EUR", "initial_deposit": deposit, "owner": owner}))
        .send()
        .await;
    reply.expect(201);
    reply.id()
}

/// A teller takes cash in for `account` with an Idempotency-Key.
async fn deposit(bank: &Bank, key: &str, account: Uuid, amount: i64) -> tests::Reply {
    let reply = bank
        .accounts
        .api()
        .post(&format!("/accounts/{account}/deposits"))
        .token(&tests::teller_token())
        .idempotency_key(key)
        .json(json!({"amount": amount, "currency": "EUR"}))
        .send()
        .await;
    reply.expect(200);
    reply
}

async fn transfer(bank: &Bank, owner: &str, key: &str, from: Uuid, to: Uuid, amount: i64) -> Uuid {
    bank.transfers.api().create_transfer(&token(owner, Customer), Some(key), from, to, amount).await
}

/// Waits until the transfer is `completed` or `failed`; returns its state.
async fn settled(bank: &Bank, id: Uuid) -> String {
    let body = bank.transfers.api().settled_transfer(&token("ops", tests::Admin), id).await;
    body["state"].as_str().unwrap_or_default().to_owned()
}

/// `(actor, key)` of the idempotency records, HTTP keys (`false`) or the saga's (`true`).
async fn records(pool: &PgPool, saga: bool) -> Vec<(String, String)> {
    sqlx::query_as("select actor, key from es.idempotency where (actor like ($1 || '%')) = $2 order by actor, key")
        .bind(eventstore::store::SAGA_ACTOR_PREFIX)
        .bind(saga)
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Each stream's event count and each account's balance, as the store has them.
async fn ledger(pool: &PgPool, accounts: &[Uuid]) -> (Vec<(Uuid, i64)>, Vec<i64>) {
    let counts = sqlx::query_as("select stream_id, count(*) from es.events group by stream_id order by stream_id")
        .fetch_all(pool)
        .await
        .unwrap();
    let store = eventstore::EventStore::new(pool.clone());
    let mut balances = Vec::new();
    for id in accounts {
        balances.push(store.load::<bank_domain::account::Account>(*id).await.unwrap().unwrap().state.balance);
    }
    (counts, balances)
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn expired_http_keys_leave_every_saga_step_idempotent(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;

    // HTTP commands with keys, and transfers of every kind: completed, refused by the
    // source (insufficient funds), and refunded (the target is closed)
    let a = open(&bank, "alice", "open-a", 1000).await;
    let b = open(&bank, "bob", "open-b", 0).await;
    let c = open(&bank, "carol", "open-c", 0).await;
    let first = deposit(&bank, "dep-a", a, 500).await;
    let replayed = deposit(&bank, "dep-a", a, 500).await;
    assert_eq!(first.body, replayed.body, "within the TTL a repeat is replayed");
    let closed = bank
        .accounts
        .api()
        .post(&format!("/accounts/{c}/close"))
        .token(&token("carol", Customer))
        .idempotency_key("close-c")
        .json(json!({}))
        .send()
        .await;
    closed.expect(200);
    let mut transfers = Vec::new();
    for (key, to, amount) in [("t1", b, 300), ("t2", b, 200), ("t3", b, 5000), ("t4", c, 100)] {
        transfers.push(transfer(&bank, "alice", key, a, to, amount).await);
    }
    let mut states = Vec::new();
    for id in &transfers {
        states.push(settled(&bank, *id).await);
    }
    assert_eq!(states, ["completed", "completed", "failed", "failed"]);
    let accounts = [a, b, c];
    let before = ledger(&pool, &accounts).await;
    assert_eq!(before.1, [1000, 500, 0], "alice 1000 + 500 - 300 - 200; the refused and the refunded moved nothing");

    let http = records(&pool, false).await;
    let saga = records(&pool, true).await;
    assert_eq!(http.len(), 9, "3 opens, a deposit, a close, 4 transfers: {http:?}");
    // debits of t1, t2, t3 (refused), t4; credits of t1, t2, t4 (refused); t4's refund
    assert_eq!(saga.len(), 8, "{saga:?}");

    // the cleanup job with a TTL of zero, in batches of two, until no HTTP record is left
    let expired = prometheus::IntCounter::new("expired", "expired").unwrap();
    let stop = CancellationToken::new();
    let config = ExpiryConfig { ttl: Duration::ZERO, every: Duration::from_millis(50), batch: 2 };
    let job = tokio::spawn(eventstore::expiry::run(
        eventstore::EventStore::new(pool.clone()),
        config,
        expired.clone(),
        stop.clone(),
    ));
    tests::wait_for(Duration::from_secs(10), "the cleanup to expire every HTTP key", || {
        let pool = pool.clone();
        async move { records(&pool, false).await.is_empty().then_some(()) }
    })
    .await;
    stop.cancel();
    job.await.unwrap();
    assert_eq!(expired.get(), http.len() as u64, "the counter counts each expired record once");
    assert_eq!(records(&pool, true).await, saga, "the saga's step records never expire");
    let store = eventstore::EventStore::new(pool.clone());
    assert_eq!(store.expire_idempotency(Duration::ZERO, 100).await.unwrap(), 0, "nothing else is deleted");

    // every saga event of the store goes onto the rapids again, and the accounts river
    // (it reads transfer.*) and the transfers river (account.*) handle them
    let streams: Vec<Uuid> = sqlx::query_scalar(
        "select stream_id from es.events where stream_type in ('account', 'transfer')
         group by stream_id order by min(position)",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let redelivered = tests::redeliver_saga_events(&bank, &streams).await;
    assert!(redelivered.0 >= 12 && redelivered.1 >= 12, "{redelivered:?}");
    // a sentinel transfer after them still completes: the rivers are not stuck on them
    let sentinel = transfer(&bank, "alice", "sentinel", a, b, 1).await;
    assert_eq!(settled(&bank, sentinel).await, "completed");
    let after = ledger(&pool, &accounts).await;
    assert_eq!(after.1, [999, 501, 0], "no money moved twice: only the sentinel's 1 moved");
    let new_streams: Vec<(Uuid, i64)> = after.0.iter().filter(|s| !before.0.contains(s)).copied().collect();
    let grown: Vec<Uuid> = new_streams.iter().map(|s| s.0).filter(|id| ![a, b, sentinel].contains(id)).collect();
    assert!(grown.is_empty(), "only the sentinel's streams changed, not {grown:?}");
    let count = |id: Uuid| after.0.iter().find(|s| s.0 == id).map(|s| s.1);
    let was = |id: Uuid| before.0.iter().find(|s| s.0 == id).map(|s| s.1);
    assert_eq!((count(a), count(b)), (was(a).map(|n| n + 1), was(b).map(|n| n + 1)), "one debit, one credit");
    assert_eq!(count(sentinel), Some(3), "created, debited, completed");
    assert_eq!(records(&pool, true).await.len(), saga.len() + 2, "the sentinel's two steps are recorded, nothing else");

    // keys are honoured for the TTL only: the same deposit with its expired key is new
    let again = deposit(&bank, "dep-a", a, 500).await;
    assert!(again.headers.get("idempotent-replayed").is_none());
    assert_ne!(again.body, first.body, "{}", again.body);
    assert_eq!(again.body["balance"], Value::from(1499), "{}", again.body);
}
