//! query-service's view cache (query-service/src/cache.rs) against the real system:
//! rows served from memory only at a version the read may use, dropped by
//! view-updater's announcements, forgotten when the LISTEN connection drops, and
//! access still checked on every answer.
#![allow(clippy::unwrap_used)]

use eventstore::watches::Announced;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::sync::Arc;
use std::time::Duration;
use tests::{Bank, Customer, Teller, token};
use tokio::sync::watch;
use uuid::Uuid;

async fn open(bank: &Bank, owner: &str, deposit: i64) -> Uuid {
    bank.accounts.api().open_account(&token(owner, Customer), "EUR", deposit).await
}

/// A teller takes `amount` of cash in for the account; its new version.
async fn deposit(bank: &Bank, id: Uuid, amount: i64) -> i64 {
    bank.accounts.api().deposit(id, amount).await
}

/// The highest version query-service was told of for a stream: its waiters' watch,
/// which it updates after the cache has seen the announcement. Only announcements
/// made while the watch is held are recorded.
type Watch = Arc<watch::Sender<Announced>>;

fn announced(watch: &Watch) -> i64 {
    watch.borrow().1
}

async fn until_announced(watch: &Watch, version: i64) {
    tests::wait_for(Duration::from_secs(30), &format!("version {version} to be announced"), || {
        let seen = announced(watch);
        async move { (seen >= version).then_some(()) }
    })
    .await;
}

/// An account of `owner` whose latest version the service has been told of: no
/// announcement is left to drop what a read caches next. Answers its id, version and
/// the watch of its announcements.
async fn settled_account(bank: &Bank, owner: &str) -> (Uuid, i64, Watch) {
    let id = open(bank, owner, 1000).await;
    let watch = bank.query_state.waiters.watch(id);
    let version = deposit(bank, id, 1).await;
    until_announced(&watch, version).await;
    (id, version, watch)
}

async fn get(bank: &Bank, path: &str, who: &str) -> Value {
    bank.queries.api().get(path).token(who).send().await.expect(200).clone()
}

fn counts(bank: &Bank) -> (u64, u64) {
    let metrics = &bank.query_state.cache().metrics;
    (metrics.hits.get(), metrics.misses.get())
}

/// Moves an account's view row on without an announcement, as a write whose NOTIFY
/// was missed would: only the database knows. (view-updater then skips the
/// account's next event, which it takes for applied: a test does no more real writes
/// to the account.)
async fn write_unannounced(pool: &PgPool, id: Uuid) -> i64 {
    sqlx::query_scalar(
        "update views.accounts set version = version + 1, balance = balance + 7 where id = $1 returning version::int8",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_second_read_is_served_from_memory_and_still_checked(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let (id, v, _watch) = settled_account(&bank, "alice").await;
    let (alice, bob, teller) = (token("alice", Customer), token("bob", Customer), token("tom", Teller));
    let path = format!("/accounts/{id}");

    let (hits, misses) = counts(&bank);
    let first = get(&bank, &path, &alice).await;
    assert_eq!(counts(&bank), (hits, misses + 1), "the first read loads");
    assert_eq!(bank.query_state.cache().version_of(id), Some(v));
    let second = get(&bank, &path, &alice).await;
    assert_eq!(counts(&bank), (hits + 1, misses + 1), "the second is served from memory");
    assert_eq!(first, second);
    assert_eq!((second["version"].as_i64(), second["balance"].as_i64()), (Some(v), Some(1001)));
    assert_eq!(second["recent_transactions"].as_array().unwrap().len(), 2);

    // the row is in memory, the access check still runs
    bank.queries.api().get(&path).token(&bob).send().await.expect_error(403, "forbidden");
    let waited = format!("{path}?min_version={v}&wait_ms=2000");
    bank.queries.api().get(&waited).token(&bob).send().await.expect_error(403, "forbidden");
    assert_eq!(get(&bank, &path, &teller).await, second);
    assert_eq!(counts(&bank), (hits + 4, misses + 1), "all from memory");

    // the counters are on the service's /metrics
    let metrics = reqwest::get(format!("{}/metrics", bank.queries.base)).await.unwrap().text().await.unwrap();
    assert!(metrics.contains(&format!("query_cache_hits_total {}", hits + 4)), "{metrics}");
    for name in ["query_cache_misses_total", "query_cache_evictions_total"] {
        assert!(metrics.contains(name), "{metrics}");
    }

    // transfers too: once its last announcement is in, a transfer is read from memory
    let other = open(&bank, "bob", 0).await;
    let t = bank
        .transfers
        .api()
        .post("/transfers")
        .token(&alice)
        .json(json!({"from": id, "to": other, "amount": 100, "currency": "EUR"}))
        .send()
        .await;
    let t = t.id();
    let transfer = format!("/transfers/{t}");
    let done = tests::wait_for(Duration::from_secs(30), "the transfer to complete", || {
        let api = bank.queries.api();
        let (transfer, alice) = (transfer.clone(), alice.clone());
        async move {
            let reply = api.get(&transfer).token(&alice).send().await;
            (reply.status == 200 && reply.body["state"] == "completed").then(|| reply.version())
        }
    })
    .await;
    tests::wait_for(Duration::from_secs(10), "a transfer read from memory", || {
        let (before, _) = counts(&bank);
        let (bank, transfer, alice) = (&bank, transfer.clone(), alice.clone());
        async move {
            let body = get(bank, &transfer, &alice).await;
            assert_eq!(body["version"].as_i64(), Some(done));
            (counts(bank).0 > before).then_some(())
        }
    })
    .await;
    let (hits, _) = counts(&bank);
    bank.queries.api().get(&transfer).token(&bob).send().await.expect_error(403, "forbidden");
    assert_eq!(counts(&bank).0, hits + 1, "refused, from memory");
    assert_eq!(get(&bank, &transfer, &teller).await["id"], json!(t));
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_read_with_min_version_never_uses_an_older_entry(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let (id, v, _watch) = settled_account(&bank, "alice").await;
    let alice = token("alice", Customer);
    let path = format!("/accounts/{id}");
    get(&bank, &path, &alice).await;
    assert_eq!(bank.query_state.cache().version_of(id), Some(v));

    // the view moves on, unannounced: a plain read may still use the entry (nothing
    // newer was announced) ...
    let newer = write_unannounced(&pool, id).await;
    assert_eq!(newer, v + 1);
    let (hits, misses) = counts(&bank);
    assert_eq!(get(&bank, &path, &alice).await["version"].as_i64(), Some(v));
    assert_eq!(counts(&bank), (hits + 1, misses));
    // ... one that asks for the newer version may not
    let body = get(&bank, &format!("{path}?min_version={newer}&wait_ms=2000"), &alice).await;
    assert_eq!((body["version"].as_i64(), body["balance"].as_i64()), (Some(newer), Some(1008)));
    assert_eq!(counts(&bank), (hits + 1, misses + 1));
    // and what it loaded replaced the older entry
    assert_eq!(bank.query_state.cache().version_of(id), Some(newer));
    assert_eq!(get(&bank, &format!("{path}?min_version={v}"), &alice).await["version"].as_i64(), Some(newer));
    assert_eq!(counts(&bank), (hits + 2, misses + 1));

    // a version not there yet: the wait ends in 409 with the current version, as without a cache
    let reply =
        bank.queries.api().get(&format!("{path}?min_version={}&wait_ms=200", newer + 1)).token(&alice).send().await;
    reply.expect_error(409, "view_out_of_date");
    assert_eq!(reply.body["error"]["current_version"].as_i64(), Some(newer));
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn an_announcement_drops_the_entry_it_makes_stale(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let (id, v, watch) = settled_account(&bank, "alice").await;
    let alice = token("alice", Customer);
    let path = format!("/accounts/{id}");
    get(&bank, &path, &alice).await;
    let newer = write_unannounced(&pool, id).await;
    assert_eq!(get(&bank, &path, &alice).await["version"].as_i64(), Some(v));

    // the announcement view-updater would have sent
    sqlx::query("select pg_notify('views_advanced', $1)").bind(format!("{id}:{newer}")).execute(&pool).await.unwrap();
    until_announced(&watch, newer).await;
    assert_eq!(bank.query_state.cache().version_of(id), None, "dropped on the announcement");
    let (hits, misses) = counts(&bank);
    assert_eq!(get(&bank, &path, &alice).await["version"].as_i64(), Some(newer));
    assert_eq!(get(&bank, &path, &alice).await["version"].as_i64(), Some(newer));
    assert_eq!(counts(&bank), (hits + 1, misses + 1), "loaded once, then from memory");

    // the real thing: a deposit through account-service, announced by view-updater
    let (other, v, watch) = settled_account(&bank, "alice").await;
    let path = format!("/accounts/{other}");
    get(&bank, &path, &alice).await;
    assert_eq!(bank.query_state.cache().version_of(other), Some(v));
    let after = deposit(&bank, other, 5).await;
    until_announced(&watch, after).await;
    assert_eq!(bank.query_state.cache().version_of(other), None);
    let body = get(&bank, &path, &alice).await;
    assert_eq!((body["version"].as_i64(), body["balance"].as_i64()), (Some(after), Some(1006)));
    assert_eq!(body["recent_transactions"][0]["amount"], 5);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_burst_of_writes_and_reads_never_answers_behind_an_announcement(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let bank = Arc::new(tests::start_bank(&pool).await);
    let (id, _, watch) = settled_account(&bank, "alice").await;
    let alice = token("alice", Customer);
    let path = format!("/accounts/{id}");
    get(&bank, &path, &alice).await;
    let (hits, misses) = counts(&bank);

    const DEPOSITS: i64 = 60;
    let writer = tokio::spawn({
        let bank = bank.clone();
        async move {
            let mut last = 0;
            for _ in 0..DEPOSITS {
                last = deposit(&bank, id, 1).await;
            }
            last
        }
    });
    let stop = tokio_util::sync::CancellationToken::new();
    let mut readers = Vec::new();
    for _ in 0..12 {
        let (api, path, alice, watch, stop) =
            (bank.queries.api(), path.clone(), alice.clone(), watch.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            // (announced before the read began, the version answered)
            let mut answers = Vec::new();
            let mut after_the_writes = 0;
            while after_the_writes < 3 {
                let writes_done = stop.is_cancelled();
                let before = announced(&watch);
                let reply = api.get(&path).token(&alice).send().await;
                let body = reply.expect(200);
                let version = body["version"].as_i64().unwrap();
                // the balance is the version's: opened (1), 1000 deposited (2), then one per version
                assert_eq!(body["balance"].as_i64(), Some(1000 + version - 2), "{body}");
                answers.push((before, version));
                if writes_done {
                    after_the_writes += 1;
                }
            }
            answers
        }));
    }
    let last = writer.await.unwrap();
    assert_eq!(last, DEPOSITS + 3, "opened, 1000, 1, then the burst");
    until_announced(&watch, last).await;
    stop.cancel();
    let mut answers = Vec::new();
    for reader in readers {
        answers.extend(reader.await.unwrap());
    }
    let behind: Vec<_> = answers.iter().filter(|(before, version)| version < before).collect();
    assert!(
        behind.is_empty(),
        "{} answers older than an announcement received before the read, e.g. (announced, answered) {:?}",
        behind.len(),
        &behind[..behind.len().min(10)]
    );
    let versions: std::collections::BTreeSet<i64> = answers.iter().map(|(_, version)| *version).collect();
    assert!(versions.len() > 10, "the reads saw the writes: {versions:?}");
    let (now_hits, now_misses) = counts(&bank);
    assert!(now_hits > hits && now_misses > misses, "both hits and loads: {hits}→{now_hits}, {misses}→{now_misses}");
    eprintln!(
        "{} answers, {} from memory, {} loads, {} entries",
        answers.len(),
        now_hits - hits,
        now_misses - misses,
        bank.query_state.cache().len()
    );
    // after the burst: the last version, from memory
    assert_eq!(get(&bank, &path, &alice).await["version"].as_i64(), Some(last));
    assert_eq!(get(&bank, &path, &alice).await["version"].as_i64(), Some(last));
    assert_eq!(bank.query_state.cache().version_of(id), Some(last));
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_lost_listen_connection_empties_the_cache(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let (id, v, _watch) = settled_account(&bank, "alice").await;
    let alice = token("alice", Customer);
    let path = format!("/accounts/{id}");
    get(&bank, &path, &alice).await;
    get(&bank, &path, &alice).await;
    let cache = bank.query_state.cache();
    assert_eq!(cache.version_of(id), Some(v));
    let waiters = bank.query_state.waiters.clone();
    assert!(waiters.is_listening());

    let killed: Vec<bool> = sqlx::query_scalar(
        "select pg_terminate_backend(pid) from pg_stat_activity
         where query like 'LISTEN%' and query like '%views_advanced%' and datname = current_database()",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(killed, [true], "query-service's LISTEN connection");
    tests::wait_for(Duration::from_secs(5), "query-service to notice", || {
        let listening = waiters.is_listening();
        async move { (!listening).then_some(()) }
    })
    .await;
    assert!(cache.is_empty(), "emptied when the connection dropped");

    // while not listening, a write's announcement is lost: reads go to the database
    let newer = write_unannounced(&pool, id).await;
    let (hits, misses) = counts(&bank);
    let not_listening = !waiters.is_listening();
    assert_eq!(get(&bank, &path, &alice).await["version"].as_i64(), Some(newer));
    assert_eq!(get(&bank, &path, &alice).await["version"].as_i64(), Some(newer));
    if not_listening && !waiters.is_listening() {
        assert_eq!(counts(&bank), (hits, misses + 2), "nothing from memory while not listening");
        assert!(cache.is_empty(), "nor kept");
    }

    tests::wait_for(Duration::from_secs(10), "query-service to listen again", || {
        let listening = waiters.is_listening();
        async move { listening.then_some(()) }
    })
    .await;
    // nothing loaded while not listening was kept
    assert_eq!(cache.version_of(id), None);
    let (hits, misses) = counts(&bank);
    assert_eq!(get(&bank, &path, &alice).await["version"].as_i64(), Some(newer));
    assert_eq!(get(&bank, &path, &alice).await["version"].as_i64(), Some(newer));
    assert_eq!(counts(&bank), (hits + 1, misses + 1));

    // and announcements arrive again, on the new connection: they reach the cache
    // and wake a waiting read
    let (other, v, watch) = settled_account(&bank, "alice").await;
    let path = format!("/accounts/{other}");
    get(&bank, &path, &alice).await;
    assert_eq!(cache.version_of(other), Some(v));
    let waiting = {
        let (api, alice) = (bank.queries.api(), alice.clone());
        let path = format!("{path}?min_version={}&wait_ms=8000", v + 1);
        tokio::spawn(async move { api.get(&path).token(&alice).send().await })
    };
    tests::wait_for(Duration::from_secs(5), "the read to wait", || {
        let waiting = waiters.waiters();
        async move { (waiting == 1).then_some(()) }
    })
    .await;
    let after = deposit(&bank, other, 5).await;
    until_announced(&watch, after).await;
    let body = waiting.await.unwrap().expect(200).clone();
    assert_eq!((body["version"].as_i64(), body["balance"].as_i64()), (Some(after), Some(1006)));
    assert_eq!(get(&bank, &path, &alice).await, body);
}
