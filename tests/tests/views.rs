//! The query side end to end: view-updater's river keeps views.* from the rapids,
//! query-service reads them with version-aware waits, and the views can be rebuilt
//! from the event store.
#![allow(clippy::unwrap_used)]

use eventstore::envelope::Envelope;
use futures::StreamExt;
use rapids::river::{Handler, RiverEvent};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::{Duration, Instant};
use tests::{Admin, Bank, Customer, Teller, token};
use uuid::Uuid;
use view_updater::rebuild;

/// Opens `owner`'s account; with an initial deposit, a teller opens it (cash is staff's).
async fn open(bank: &Bank, owner: &str, deposit: i64) -> (Uuid, i64) {
    let by = if deposit > 0 { tests::teller_token() } else { token(owner, Customer) };
    let reply = bank
        .accounts
        .api()
        .post("/accounts")
        .token(&by)
        .json(json!({"currency": "EUR", "initial_deposit": deposit, "owner": owner}))
        .send()
        .await;
    let body = reply.expect(201);
    (reply.id(), body["version"].as_i64().unwrap())
}

/// A teller takes `amount` of cash in for the account; its new version.
async fn deposit(bank: &Bank, id: Uuid, amount: i64) -> i64 {
    bank.accounts.api().deposit(id, amount).await
}

/// Every row of the views, in a stable order (to compare before and after).
async fn snapshot(pool: &PgPool) -> Vec<String> {
    sqlx::query_scalar(
        "select x from (
             select 'a ' || row(a.*)::text as x from views.accounts a
             union all select 't ' || row(t.*)::text from views.account_transactions t
             union all select 'x ' || row(x.*)::text from views.transfers x) rows order by x",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_read_waits_for_the_version_a_command_answered(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let (id, _) = open(&bank, "alice", 1000).await;
    let v = deposit(&bank, id, 250).await;
    let alice = token("alice", Customer);
    let queries = bank.queries.api();

    let reply = queries.get(&format!("/accounts/{id}?min_version={v}&wait_ms=5000")).token(&alice).send().await;
    let body = reply.expect(200);
    assert_eq!((body["balance"].as_i64(), body["version"].as_i64()), (Some(1250), Some(v)));
    assert_eq!((body["owner"].as_str(), body["status"].as_str()), (Some("alice"), Some("open")));
    let kinds: Vec<&str> =
        body["recent_transactions"].as_array().unwrap().iter().map(|t| t["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["deposit", "deposit"], "newest first: the 250, then the opening 1000");
    assert_eq!(body["recent_transactions"][0]["balance_after"], 1250);

    let started = Instant::now();
    let reply = queries.get(&format!("/accounts/{id}?min_version={}&wait_ms=200", v + 5)).token(&alice).send().await;
    let waited = started.elapsed();
    reply.expect_error(409, "view_out_of_date");
    assert_eq!(
        (reply.body["error"]["current_version"].as_i64(), reply.body["error"]["wanted_version"].as_i64()),
        (Some(v), Some(v + 5))
    );
    assert_eq!(reply.headers.get("retry-after").and_then(|h| h.to_str().ok()), Some("1"));
    assert!(waited >= Duration::from_millis(200) && waited < Duration::from_secs(3), "{waited:?}");

    // a wait ends when the view gets there, not at the deadline
    let read = {
        let (queries, alice) = (queries.clone(), alice.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let reply =
                queries.get(&format!("/accounts/{id}?min_version={}&wait_ms=10000", v + 1)).token(&alice).send().await;
            (reply, started.elapsed())
        })
    };
    let waiters = bank.query_state.waiters.clone();
    tests::wait_for(Duration::from_secs(10), "the read to wait", || {
        let waiting = waiters.waiters();
        async move { (waiting == 1).then_some(()) }
    })
    .await;
    deposit(&bank, id, 1).await;
    let (reply, waited) = read.await.unwrap();
    assert_eq!(reply.expect(200)["balance"], 1251);
    assert!(waited < Duration::from_secs(8), "{waited:?}");
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn transactions_page_newest_first(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let (id, _) = open(&bank, "alice", 1).await;
    let mut v = 0;
    for amount in 2..=6 {
        v = deposit(&bank, id, amount).await;
    }
    let alice = token("alice", Customer);
    let queries = bank.queries.api();
    let path = format!("/accounts/{id}/transactions?limit=4&min_version={v}&wait_ms=5000");
    let page = queries.get(&path).token(&alice).send().await;
    let page = page.expect(200);
    let amounts: Vec<i64> = page["items"].as_array().unwrap().iter().map(|t| t["amount"].as_i64().unwrap()).collect();
    assert_eq!(amounts, [6, 5, 4, 3]);
    let cursor = page["next_before_version"].as_i64().unwrap();
    let next =
        queries.get(&format!("/accounts/{id}/transactions?limit=4&before_version={cursor}")).token(&alice).send().await;
    let next = next.expect(200);
    let amounts: Vec<i64> = next["items"].as_array().unwrap().iter().map(|t| t["amount"].as_i64().unwrap()).collect();
    assert_eq!(amounts, [2, 1]);
    assert_eq!(next["next_before_version"], Value::Null);
    let bad = queries.get(&format!("/accounts/{id}/transactions?limit=abc")).token(&alice).send().await;
    bad.expect_error(400, "invalid_query");
    let bad = queries.get(&format!("/accounts/{id}?min_version=-1")).token(&alice).send().await;
    bad.expect_error(400, "invalid_query");
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn customers_read_only_their_own(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let (a, va) = open(&bank, "alice", 500).await;
    let (b, _) = open(&bank, "bob", 0).await;
    let transfer = bank
        .transfers
        .api()
        .post("/transfers")
        .token(&token("alice", Customer))
        .json(json!({"from": a, "to": b, "amount": 100, "currency": "EUR"}))
        .send()
        .await;
    let t = transfer.id();
    let queries = bank.queries.api();
    let (alice, bob) = (token("alice", Customer), token("bob", Customer));
    queries.get(&format!("/accounts/{a}?min_version={va}&wait_ms=5000")).token(&alice).send().await.expect(200);
    queries.get(&format!("/transfers/{t}?min_version=1&wait_ms=5000")).token(&alice).send().await.expect(200);

    queries.get(&format!("/accounts/{a}")).token(&bob).send().await.expect_error(403, "forbidden");
    queries.get(&format!("/accounts/{a}/transactions")).token(&bob).send().await.expect_error(403, "forbidden");
    queries.get(&format!("/transfers/{t}")).token(&bob).send().await.expect_error(403, "forbidden");
    queries.get("/accounts?owner=alice").token(&bob).send().await.expect_error(403, "forbidden");
    // not even a wait reveals another's account
    let reply = queries.get(&format!("/accounts/{a}?min_version=99&wait_ms=5000")).token(&bob).send().await;
    reply.expect_error(403, "forbidden");

    let unknown = Uuid::now_v7();
    queries.get(&format!("/accounts/{unknown}")).token(&alice).send().await.expect_error(404, "account_not_found");
    queries.get(&format!("/transfers/{unknown}")).token(&alice).send().await.expect_error(404, "transfer_not_found");
    queries.get("/accounts/not-a-uuid").token(&alice).send().await.expect_error(400, "invalid_id");
    queries.get(&format!("/accounts/{a}")).send().await.expect_error(401, "missing_token");

    queries.get(&format!("/accounts/{a}")).token(&token("tom", Teller)).send().await.expect(200);
    queries.get(&format!("/transfers/{t}")).token(&token("ops", Admin)).send().await.expect(200);
    let mine = queries.get("/accounts").token(&alice).send().await;
    let ids: Vec<&str> =
        mine.expect(200)["items"].as_array().unwrap().iter().map(|x| x["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [a.to_string()]);
    let theirs = queries.get("/accounts?owner=bob").token(&token("tom", Teller)).send().await;
    assert_eq!(theirs.expect(200)["items"][0]["id"], json!(b));
}

/// The store's events of `stream`, as the rapids would carry them.
async fn envelopes(pool: &PgPool, stream: Uuid) -> Vec<RiverEvent> {
    let store = eventstore::EventStore::new(pool.clone());
    let events = store.read_stream(stream, 0, None).await.unwrap();
    events.into_iter().map(|e| RiverEvent::new("test".into(), "0".into(), Envelope::from(e))).collect()
}

async fn handle(pool: &PgPool, events: &[RiverEvent]) {
    let mut tx = pool.begin().await.unwrap();
    view_updater::store::ViewsHandler.handle(&mut tx, events).await.unwrap();
    tx.commit().await.unwrap();
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn duplicates_change_nothing_and_a_gap_is_filled_from_the_store(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    // the command side only: the views are fed by hand here
    let accounts = tests::start_accounts(&pool, |_| {}).await;
    let opened = accounts
        .api()
        .post("/accounts")
        .token(&tests::teller_token())
        .json(json!({"currency": "EUR", "initial_deposit": 10, "owner": "alice"}))
        .send()
        .await;
    let id = opened.id();
    for amount in [5, 7, 11] {
        let path = format!("/accounts/{id}/deposits");
        accounts
            .api()
            .post(&path)
            .token(&tests::teller_token())
            .json(json!({"amount": amount, "currency": "EUR"}))
            .send()
            .await
            .expect(200);
    }
    let events = envelopes(&pool, id).await;
    assert_eq!(events.len(), 5);

    // version 4 arrives before 3 (and 1, 2): the gap is filled from the store
    handle(&pool, &events[3..4]).await;
    let (balance, version): (i64, i32) = sqlx::query_as("select balance, version from views.accounts where id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((balance, version), (22, 4));
    let versions: Vec<i32> =
        sqlx::query_scalar("select version from views.account_transactions where account_id = $1 order by version")
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(versions, [2, 3, 4]);

    handle(&pool, &events[4..]).await;
    let settled = snapshot(&pool).await;
    // every event again, twice, in one page and one by one
    handle(&pool, &events).await;
    for event in &events {
        handle(&pool, std::slice::from_ref(event)).await;
    }
    assert_eq!(snapshot(&pool).await, settled, "duplicates change nothing");
    let balance: i64 =
        sqlx::query_scalar("select balance from views.accounts where id = $1").bind(id).fetch_one(&pool).await.unwrap();
    assert_eq!(balance, 33);
}

/// Waits until the store holds at least `n` deposits.
async fn deposits_at_least(pool: &PgPool, n: i64) {
    tests::wait_for(Duration::from_secs(30), &format!("{n} deposits"), || async move {
        let done: i64 = sqlx::query_scalar("select count(*) from es.events where type = 'account.deposited'")
            .fetch_one(pool)
            .await
            .unwrap();
        (done >= n).then_some(())
    })
    .await;
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_rebuild_during_writes_matches_the_store_and_verify_finds_a_corrupted_row(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(open(&bank, "alice", 100).await.0);
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let load = tokio::spawn({
        let (api, stop, ids) = (bank.accounts.api(), stop.clone(), ids.clone());
        async move {
            let teller = tests::teller_token();
            let mut n = 0usize;
            while !stop.is_cancelled() {
                let path = format!("/accounts/{}/deposits", ids[n % ids.len()]);
                api.post(&path).token(&teller).json(json!({"amount": 1, "currency": "EUR"})).send().await.expect(200);
                n += 1;
            }
            n
        }
    });
    // query-service has its statements prepared against the live tables before the swap
    let alice = token("alice", Customer);
    let read = |id: Uuid| bank.queries.api().get(&format!("/accounts/{id}")).token(&alice).send();
    let first = bank.queries.api().get(&format!("/accounts/{}?min_version=1&wait_ms=20000", ids[0])).token(&alice);
    first.send().await.expect(200);
    deposits_at_least(&pool, 30).await;
    let rebuilt = rebuild::rebuild(&pool, false).await.unwrap();
    // and goes on reading the swapped-in ones
    for id in &ids {
        assert_eq!(read(*id).await.expect(200)["id"], json!(id));
    }
    assert!(rebuilt.events > 20, "{rebuilt:?}");
    // writes go on after the swap too
    deposits_at_least(&pool, rebuilt.events as i64 + 30).await;
    stop.cancel();
    let deposits = load.await.unwrap();
    assert!(deposits > 0);

    tests::views_caught_up(&pool).await;
    let verified = rebuild::verify(&pool, false).await.unwrap();
    assert!(verified.differences.is_empty(), "{:?}", verified.differences);
    assert!(verified.compared >= 10 + 10 + deposits as i64, "{verified:?}");
    let total: i64 =
        sqlx::query_scalar("select sum(balance)::int8 from views.accounts").fetch_one(&pool).await.unwrap();
    assert_eq!(total, 10 * 100 + deposits as i64);
    // the bank's cash account (rows of the rebuild and of the river's shards after it)
    // holds minus what the tellers took in, through the same read as any account
    let cash = bank_domain::ledger::BankAccount::Cash.id(bank_domain::Currency::parse("EUR").unwrap());
    let read_cash = bank.queries.api().get(&format!("/accounts/{cash}")).token(&tests::teller_token()).send().await;
    assert_eq!(
        (read_cash.expect(200)["balance"].as_i64(), read_cash.body["owner"].as_str()),
        (Some(-total), Some("bank:cash"))
    );
    bank.queries.api().get(&format!("/accounts/{cash}")).token(&alice).send().await.expect_error(403, "forbidden");

    // a corrupted row is reported, and rebuilding that account alone repairs it
    let victim = ids[3];
    sqlx::query("update views.accounts set balance = balance + 1 where id = $1")
        .bind(victim)
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("delete from views.account_transactions where account_id = $1 and version = 2")
        .bind(ids[4])
        .execute(&pool)
        .await
        .unwrap();
    let verified = rebuild::verify(&pool, false).await.unwrap();
    let keys: Vec<(&str, &str)> = verified.differences.iter().map(|d| (d.table, d.key.as_str())).collect();
    assert_eq!(
        keys,
        [("accounts", victim.to_string().as_str()), ("account_transactions", format!("{} v2", ids[4]).as_str())]
    );
    for id in [victim, ids[4]] {
        rebuild::rebuild_account(&pool, id).await.unwrap();
    }
    assert!(rebuild::verify(&pool, false).await.unwrap().differences.is_empty());
    // rebuilding an account counts its cash postings once: the bank's cash is as it was
    let read_cash = bank.queries.api().get(&format!("/accounts/{cash}")).token(&tests::teller_token()).send().await;
    assert_eq!(read_cash.expect(200)["balance"].as_i64(), Some(-total));
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn view_balances_sum_to_the_store_after_concurrent_transfers(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let mut ids = Vec::new();
    for _ in 0..20 {
        ids.push(open(&bank, "alice", 1000).await.0);
    }
    let alice = token("alice", Customer);
    let created: Vec<Uuid> = futures::stream::iter(0..100)
        .map(|_| {
            let from = rand::random_range(0..ids.len());
            let to = (from + rand::random_range(1..ids.len())) % ids.len();
            let body =
                json!({"from": ids[from], "to": ids[to], "amount": rand::random_range(1..=600), "currency": "EUR"});
            let request = bank.transfers.api().post("/transfers").token(&alice).json(body).send();
            async move { request.await.id() }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    tests::wait_for(Duration::from_secs(60), "every transfer to settle", || async {
        let settled: i64 = sqlx::query_scalar(
            "select count(*) from es.events where type in ('transfer.completed', 'transfer.failed')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (settled == created.len() as i64).then_some(())
    })
    .await;
    tests::views_caught_up(&pool).await;
    let (views_total, settled): (i64, i64) = sqlx::query_as(
        "select (select sum(balance)::int8 from views.accounts),
                (select count(*) from views.transfers where state in ('completed', 'failed'))",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(views_total, 20 * 1000);
    assert_eq!(settled, 100);
    let store = eventstore::EventStore::new(pool.clone());
    let mut store_total = 0;
    for id in &ids {
        store_total += store.load::<bank_domain::account::Account>(*id).await.unwrap().unwrap().state.balance;
    }
    assert_eq!(store_total, views_total);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_thousand_waiting_reads_hold_no_database_connection(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let (id, v) = open(&bank, "alice", 10).await;
    let alice = token("alice", Customer);
    let queries = bank.queries.api();
    queries.get(&format!("/accounts/{id}?min_version={v}&wait_ms=5000")).token(&alice).send().await.expect(200);

    let reads: Vec<_> = (0..1000)
        .map(|_| {
            let request =
                queries.get(&format!("/accounts/{id}?min_version={}&wait_ms=25000", v + 1)).token(&alice).send();
            tokio::spawn(request)
        })
        .collect();
    // all of them waiting, and the service's pool (16 connections at most) idle but for
    // the one LISTEN connection
    let (waiters, query_pool) = (bank.query_state.waiters.clone(), bank.query_state.kit.pool.clone());
    tests::wait_for(Duration::from_secs(60), "a thousand reads waiting on an idle pool", || {
        let (waiting, busy) = (waiters.waiters(), query_pool.size() as usize - query_pool.num_idle());
        async move { (waiting == 1000 && busy <= 1).then_some(()) }
    })
    .await;
    assert!(query_pool.size() <= 16, "{} connections", query_pool.size());

    deposit(&bank, id, 5).await;
    for read in reads {
        let reply = read.await.unwrap();
        assert_eq!(reply.expect(200)["balance"], 15);
    }
}
