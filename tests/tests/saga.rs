//! The transfer saga end to end: the services append, the tailer publishes to a real
//! Kinesis API server, and the rivers of account-service and transfer-service move
//! each transfer on.
#![allow(clippy::unwrap_used)]

use futures::StreamExt;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;
use tests::{Api, Bank, Customer, token};
use uuid::Uuid;

async fn open(bank: &Bank, owner: &str, currency: &str, deposit: i64) -> Uuid {
    bank.accounts.api().open_account(&token(owner, Customer), currency, deposit).await
}

async fn transfer(bank: &Bank, owner: &str, from: Uuid, to: Uuid, amount: i64) -> Uuid {
    bank.transfers.api().create_transfer(&token(owner, Customer), None, from, to, amount).await
}

/// Waits until the transfer is `completed` or `failed`; returns its JSON.
async fn settled(api: &Api, owner: &str, id: Uuid) -> Value {
    api.settled_transfer(&token(owner, Customer), id).await
}

async fn balance(bank: &Bank, owner: &str, id: Uuid) -> i64 {
    let reply = bank.accounts.api().get(&format!("/accounts/{id}")).token(&token(owner, Customer)).send().await;
    reply.expect(200)["balance"].as_i64().unwrap()
}

fn types(events: &[(i32, String, Value)]) -> Vec<&str> {
    events.iter().map(|(_, t, _)| t.as_str()).collect()
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_transfer_debits_credits_and_completes(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let a = open(&bank, "alice", "EUR", 1000).await;
    let b = open(&bank, "bob", "EUR", 0).await;
    let id = transfer(&bank, "alice", a, b, 300).await;

    let done = settled(&bank.transfers.api(), "alice", id).await;
    assert_eq!((done["state"].as_str(), done["version"].as_i64()), (Some("completed"), Some(3)));
    assert_eq!(done["failure_reason"], Value::Null);
    assert_eq!((balance(&bank, "alice", a).await, balance(&bank, "bob", b).await), (700, 300));

    let transfer_events = tests::stream_events(&pool, id).await;
    assert_eq!(types(&transfer_events), ["transfer.created", "transfer.debited", "transfer.completed"]);
    let source = tests::stream_events(&pool, a).await;
    assert_eq!(types(&source), ["account.opened", "account.deposited", "account.debited"]);
    assert_eq!(source[2].2["transfer_id"], json!(id));
    assert_eq!((source[2].2["amount"].as_i64(), source[2].2["balance_after"].as_i64()), (Some(300), Some(700)));
    assert_eq!(source[2].2["counterparty"], json!(b));
    let target = tests::stream_events(&pool, b).await;
    assert_eq!(types(&target), ["account.opened", "account.credited"]);
    assert_eq!(target[1].2["balance_after"].as_i64(), Some(300));
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_waiting_read_on_transfer_service_returns_when_the_saga_moves_the_transfer_on(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let a = open(&bank, "alice", "EUR", 1000).await;
    let b = open(&bank, "bob", "EUR", 0).await;
    let api = bank.transfers.api();
    let alice = token("alice", Customer);

    // a first transfer settles before the waiting read is measured: the rivers have
    // then started (with enhanced fan-out a cold start registers a consumer and
    // subscribes; the read below waits for the saga's steps, not for that)
    let first = transfer(&bank, "alice", a, b, 100).await;
    assert_eq!(settled(&api, "alice", first).await["state"], "completed");

    // bad arguments and other customers are answered at once; an unknown id waits (a
    // task's transfer appears after the task) and ends in 409 at version 0, or is a
    // 404 at once without min_version
    let path = |id: Uuid, query: &str| format!("/transfers/{id}?{query}");
    let id = transfer(&bank, "alice", a, b, 300).await;
    for query in ["min_version=-1", "min_version=x", "min_version=3&wait_ms=-5", "min_version=99999999999"] {
        api.get(&path(id, query)).token(&alice).send().await.expect_error(400, "invalid_query");
    }
    let unknown = Uuid::now_v7();
    let waited = api.get(&path(unknown, "min_version=2&wait_ms=200")).token(&alice).send().await;
    waited.expect_error(409, "version_not_reached");
    assert_eq!(
        (waited.body["error"]["current_version"].as_i64(), waited.body["error"]["wanted_version"].as_i64()),
        (Some(0), Some(2))
    );
    api.get(&format!("/transfers/{unknown}")).token(&alice).send().await.expect_error(404, "transfer_not_found");
    api.get(&path(id, "min_version=2&wait_ms=30000"))
        .token(&token("mallory", Customer))
        .send()
        .await
        .expect_error(403, "forbidden");

    // one read, woken by the saga's appends in this instance (the bank rechecks the
    // store only every 10 minutes): the transfer at version 3, completed
    let reply = api.get(&path(id, "min_version=3&wait_ms=30000")).token(&alice).send().await;
    let body = reply.expect(200);
    assert_eq!((body["state"].as_str(), body["version"].as_i64()), (Some("completed"), Some(3)));
    assert_eq!((balance(&bank, "alice", a).await, balance(&bank, "bob", b).await), (600, 400));

    // a version the transfer never reaches: 409 after the wait, with where it is
    let reply = api.get(&path(id, "min_version=4&wait_ms=200")).token(&alice).send().await;
    reply.expect_error(409, "version_not_reached");
    assert_eq!(
        (reply.body["error"]["current_version"].as_i64(), reply.body["error"]["wanted_version"].as_i64()),
        (Some(3), Some(4))
    );
    assert_eq!(reply.headers.get("retry-after").and_then(|h| h.to_str().ok()), Some("1"));
    assert_eq!(bank.transfer_state.transfers.watches().waiters(), 0, "no waiter is left behind");
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn insufficient_funds_fail_the_transfer_and_move_nothing(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let a = open(&bank, "alice", "EUR", 100).await;
    let b = open(&bank, "bob", "EUR", 0).await;
    let id = transfer(&bank, "alice", a, b, 500).await;

    let done = settled(&bank.transfers.api(), "alice", id).await;
    assert_eq!(done["state"], "failed");
    assert_eq!(done["failure_reason"], "insufficient_funds");
    assert_eq!((balance(&bank, "alice", a).await, balance(&bank, "bob", b).await), (100, 0));
    assert_eq!(types(&tests::stream_events(&pool, id).await), ["transfer.created", "transfer.failed"]);
    let source = tests::stream_events(&pool, a).await;
    assert_eq!(types(&source), ["account.opened", "account.deposited", "account.debit_rejected"]);
    assert_eq!(source[2].2["reason"], "insufficient_funds");
    assert_eq!(types(&tests::stream_events(&pool, b).await), ["account.opened"]);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_credit_to_a_closed_account_is_refunded(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let a = open(&bank, "alice", "EUR", 1000).await;
    let b = open(&bank, "bob", "EUR", 0).await;
    let closed = bank
        .accounts
        .api()
        .post(&format!("/accounts/{b}/close"))
        .token(&token("bob", Customer))
        .json(json!({}))
        .send()
        .await;
    closed.expect(200);
    let id = transfer(&bank, "alice", a, b, 250).await;

    let done = settled(&bank.transfers.api(), "alice", id).await;
    assert_eq!((done["state"].as_str(), done["failure_reason"].as_str()), (Some("failed"), Some("account_closed")));
    assert_eq!(balance(&bank, "alice", a).await, 1000, "the debit came back");
    let transfer_events = tests::stream_events(&pool, id).await;
    assert_eq!(
        types(&transfer_events),
        ["transfer.created", "transfer.debited", "transfer.refund_requested", "transfer.failed"]
    );
    assert_eq!(transfer_events[3].2, json!({"reason": "account_closed", "refunded": true}));
    let source = tests::stream_events(&pool, a).await;
    assert_eq!(types(&source), ["account.opened", "account.deposited", "account.debited", "account.refunded"]);
    assert_eq!(source[3].2["balance_after"].as_i64(), Some(1000));
    let target = tests::stream_events(&pool, b).await;
    assert_eq!(types(&target), ["account.opened", "account.closed", "account.credit_rejected"]);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn saga_events_delivered_twice_move_money_once(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let a = open(&bank, "alice", "EUR", 1000).await;
    let b = open(&bank, "bob", "EUR", 0).await;
    let id = transfer(&bank, "alice", a, b, 400).await;
    settled(&bank.transfers.api(), "alice", id).await;
    let before = tests::total_events(&pool).await;

    // every event of the saga goes onto the rapids a second time, and each river
    // hands its own kind to its handler again
    let redelivered = tests::redeliver_saga_events(&bank, &[id, a, b]).await;
    assert_eq!(redelivered, (3, 5), "transfer.* and account.* events redelivered");
    assert_eq!(tests::total_events(&pool).await, before, "a redelivered step appends nothing");
    assert_eq!((balance(&bank, "alice", a).await, balance(&bank, "bob", b).await), (600, 400));
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn two_hundred_concurrent_transfers_keep_the_sum_of_balances(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let owners = ["alice", "bob", "carol", "dave"];
    let mut accounts = Vec::new();
    for i in 0..20 {
        let owner = owners[i % owners.len()];
        accounts.push((owner, open(&bank, owner, "EUR", 1000).await));
    }
    let plan: Vec<(usize, usize, i64)> = (0..200)
        .map(|_| {
            let from = rand::random_range(0..accounts.len());
            let to = (from + rand::random_range(1..accounts.len())) % accounts.len();
            (from, to, rand::random_range(1..=700))
        })
        .collect();
    let ids: Vec<Uuid> = futures::stream::iter(plan)
        .map(|(from, to, amount)| {
            let (owner, from) = accounts[from];
            let to = accounts[to].1;
            let bank = &bank;
            async move { transfer(bank, owner, from, to, amount).await }
        })
        .buffer_unordered(32)
        .collect()
        .await;

    let api = bank.transfers.api();
    let admin = tests::token("ops", tests::Admin);
    let mut states = std::collections::HashMap::new();
    for id in &ids {
        let done = tests::wait_for(Duration::from_secs(60), "every transfer to settle", || {
            let request = api.get(&format!("/transfers/{id}")).token(&admin).send();
            async move {
                let body = request.await.expect(200).clone();
                matches!(body["state"].as_str(), Some("completed" | "failed")).then_some(body)
            }
        })
        .await;
        *states.entry(done["state"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    assert_eq!(states.values().sum::<i32>(), 200, "{states:?}");
    assert!(states.get("completed").copied().unwrap_or(0) > 0, "{states:?}");

    let total = sum_of_balances(&pool, &accounts.iter().map(|a| a.1).collect::<Vec<_>>()).await;
    assert_eq!(total, 20 * 1000, "no money created or lost");
}

async fn sum_of_balances(pool: &PgPool, accounts: &[Uuid]) -> i64 {
    let store = eventstore::EventStore::new(pool.clone());
    let mut total = 0;
    for id in accounts {
        let account = store.load::<bank_domain::account::Account>(*id).await.unwrap().unwrap().state;
        assert!(account.balance >= 0, "no account is overdrawn");
        total += account.balance;
    }
    total
}
