//! The event store on a real Postgres: appends, conflicts, snapshots, NOTIFY,
//! idempotency records, migrations under concurrent start-up.
#![allow(clippy::unwrap_used)]

use bank_domain::account::{Account, AccountCommand, AccountEvent, AccountStatus, Actor};
use bank_domain::{Currency, Money};
use eventstore::metrics::StoreMetrics;
use eventstore::store::{Append, NewEvent};
use eventstore::{CommandContext, EventMetadata, EventStore, Repository, RepositoryConfig, StoreError};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use uuid::Uuid;

fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

fn deposited(amount: i64, balance_after: i64) -> NewEvent {
    NewEvent::from_domain(&AccountEvent::Deposited { amount, currency: eur(), balance_after }).unwrap()
}

fn append(stream_id: Uuid, expected_version: i32, events: Vec<NewEvent>) -> Append {
    Append {
        stream_id,
        stream_type: "account",
        expected_version,
        events,
        metadata: EventMetadata { actor: "test".into(), ..Default::default() },
        snapshot: None,
        idempotency: Vec::new(),
    }
}

fn repository(pool: &PgPool, snapshot_every: u32, cache_capacity: usize) -> Repository<Account> {
    let metrics = StoreMetrics::register(&prometheus::Registry::new()).unwrap();
    Repository::new(
        EventStore::new(pool.clone()),
        RepositoryConfig { snapshot_every, max_attempts: 5, cache_capacity, ..RepositoryConfig::default() },
        metrics,
    )
}

fn alice() -> Actor {
    Actor { id: "alice".into(), staff: false }
}

/// Takes cash in (customers cannot).
fn teller() -> Actor {
    Actor { id: "tess".into(), staff: true }
}

async fn open(repo: &Repository<Account>, id: Uuid) {
    let command = AccountCommand::Open { owner: "alice".into(), currency: eur(), initial_deposit: None, by: alice() };
    repo.create(id, command, CommandContext::default(), |_, v| serde_json::json!({"version": v})).await.unwrap();
}

async fn deposit(repo: &Repository<Account>, id: Uuid, minor: i64) -> i64 {
    let command = AccountCommand::Deposit { amount: Money::new(minor, eur(), i64::MAX).unwrap(), by: teller() };
    let reply =
        repo.execute(id, command, CommandContext::default(), |_, v| serde_json::json!({"version": v})).await.unwrap();
    reply.body["version"].as_i64().unwrap()
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn appends_are_versioned_and_a_stale_expected_version_is_a_typed_conflict(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let id = Uuid::now_v7();
    let opened = NewEvent::from_domain(&AccountEvent::Opened { owner: "alice".into(), currency: eur() }).unwrap();
    let first = store.append(&append(id, 0, vec![opened, deposited(5, 5)])).await.unwrap();
    assert_eq!(first.new_version, 2);
    assert_eq!(first.last_position - first.first_position, 1);

    // the same expected version again loses: a conflict, not a database error
    let again = store.append(&append(id, 0, vec![deposited(1, 6)])).await;
    assert!(matches!(again, Err(StoreError::Conflict { expected: 0, .. })), "{again:?}");
    let stale = store.append(&append(id, 1, vec![deposited(1, 6)])).await;
    assert!(matches!(stale, Err(StoreError::Conflict { expected: 1, .. })), "{stale:?}");
    // an expected version beyond the stream's end never leaves a gap
    let ahead = store.append(&append(id, 7, vec![deposited(1, 6)])).await;
    assert!(matches!(ahead, Err(StoreError::Conflict { expected: 7, .. })), "{ahead:?}");

    let events = tests::stream_events(&pool, id).await;
    assert_eq!(events.iter().map(|e| e.0).collect::<Vec<_>>(), vec![1, 2]);
    let loaded = store.load::<Account>(id).await.unwrap().unwrap();
    assert_eq!((loaded.version, loaded.state.balance, loaded.state.status), (2, 5, AccountStatus::Open));
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn concurrent_appends_at_one_version_have_exactly_one_winner(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let id = Uuid::now_v7();
    let opened = NewEvent::from_domain(&AccountEvent::Opened { owner: "alice".into(), currency: eur() }).unwrap();
    store.append(&append(id, 0, vec![opened])).await.unwrap();

    let racers = (0..10).map(|i| {
        let store = store.clone();
        async move { store.append(&append(id, 1, vec![deposited(i + 1, i + 1)])).await }
    });
    let results = futures::future::join_all(racers).await;
    let wins = results.iter().filter(|r| r.is_ok()).count();
    let conflicts = results.iter().filter(|r| matches!(r, Err(StoreError::Conflict { .. }))).count();
    assert_eq!((wins, conflicts), (1, 9));
    assert_eq!(tests::stream_events(&pool, id).await.len(), 2);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn loading_from_a_snapshot_equals_a_full_replay_over_thousands_of_events(pool: PgPool) {
    let repo = repository(&pool, 100, 0);
    let id = Uuid::now_v7();
    open(&repo, id).await;
    let mut expected_balance = 0;
    for i in 1..=2_500_i64 {
        let amount = (i * 7919) % 1000 + 1;
        expected_balance += amount;
        deposit(&repo, id, amount).await;
    }
    let store = repo.store();
    let (snapshot_version,): (i32,) = sqlx::query_as("select version from es.snapshots where stream_id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(snapshot_version, 2_500, "a snapshot every 100 events, the last at 2,500");

    let from_snapshot = store.load::<Account>(id).await.unwrap().unwrap();
    let replayed = store.load_full_replay::<Account>(id).await.unwrap().unwrap();
    assert_eq!(from_snapshot.version, 2_501);
    assert_eq!(from_snapshot.version, replayed.version);
    assert_eq!(from_snapshot.state, replayed.state);
    assert_eq!(replayed.state.balance, expected_balance);

    // a tail after the snapshot is folded on top of it
    for _ in 0..37 {
        expected_balance += 3;
        deposit(&repo, id, 3).await;
    }
    let from_snapshot = store.load::<Account>(id).await.unwrap().unwrap();
    let replayed = store.load_full_replay::<Account>(id).await.unwrap().unwrap();
    assert_eq!((from_snapshot.version, from_snapshot.state.balance), (2_538, expected_balance));
    assert_eq!(from_snapshot.state, replayed.state);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_snapshot_of_another_schema_version_is_ignored(pool: PgPool) {
    let repo = repository(&pool, 10, 0);
    let id = Uuid::now_v7();
    open(&repo, id).await;
    for _ in 0..12 {
        deposit(&repo, id, 10).await;
    }
    // a snapshot that claims another owner, under another schema version
    sqlx::query("update es.snapshots set schema_version = 99, state = jsonb_set(state, '{owner}', '\"mallory\"') where stream_id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let loaded = repo.store().load::<Account>(id).await.unwrap().unwrap();
    assert_eq!((loaded.version, loaded.state.balance, loaded.state.owner.as_str()), (13, 120, "alice"));

    // the same lie under the code's schema version would be believed: the check matters
    sqlx::query("update es.snapshots set schema_version = 1 where stream_id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let believed = repo.store().load::<Account>(id).await.unwrap().unwrap();
    assert_eq!((believed.version, believed.state.owner.as_str()), (13, "mallory"));
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn an_append_notifies_listeners(pool: PgPool) {
    let mut listener = PgListener::connect_with(&pool).await.unwrap();
    listener.listen("es_events").await.unwrap();
    let repo = repository(&pool, 100, 0);
    let id = Uuid::now_v7();
    open(&repo, id).await;
    let note = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv()).await.unwrap().unwrap();
    // the contract with the tailer: a wake-up, no payload
    assert_eq!(note.payload(), "");
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn an_idempotency_record_is_written_only_with_its_events(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let id = Uuid::now_v7();
    let opened = NewEvent::from_domain(&AccountEvent::Opened { owner: "alice".into(), currency: eur() }).unwrap();
    let mut first = append(id, 0, vec![opened.clone()]);
    first.idempotency = vec![eventstore::store::IdempotencyWrite {
        actor: "alice".into(),
        key: "k1".into(),
        request_hash: "h".into(),
        body: serde_json::json!({"id": id}),
    }];
    store.append(&first).await.unwrap();
    let stored = store.find_idempotent_response("alice", "k1").await.unwrap().unwrap();
    assert_eq!((stored.request_hash.as_str(), &stored.body), ("h", &serde_json::json!({"id": id})));

    // a second append with the same key is refused as a whole: no event, no record change
    let other = Uuid::now_v7();
    let mut second = append(other, 0, vec![NewEvent { event_id: Uuid::now_v7(), ..opened }]);
    second.idempotency = first.idempotency.clone();
    assert!(matches!(store.append(&second).await, Err(StoreError::IdempotencyKeyTaken)));
    assert!(tests::stream_events(&pool, other).await.is_empty());

    // a conflicting append writes no record either
    let mut stale = append(id, 0, vec![deposited(1, 1)]);
    stale.idempotency = vec![eventstore::store::IdempotencyWrite { key: "k2".into(), ..first.idempotency[0].clone() }];
    assert!(matches!(store.append(&stale).await, Err(StoreError::Conflict { .. })));
    assert!(store.find_idempotent_response("alice", "k2").await.unwrap().is_none());
}

#[sqlx::test(migrations = false)]
async fn services_starting_together_apply_the_migrations_once(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let runs = (0..6).map(|_| {
        let pool = pool.clone();
        async move { migrations::MIGRATOR.run(&pool).await }
    });
    for result in futures::future::join_all(runs).await {
        result.unwrap();
    }
    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations").fetch_one(&pool).await.unwrap();
    assert_eq!(applied, migrations::MIGRATOR.iter().count() as i64);
    let tables: i64 = sqlx::query_scalar("select count(*) from information_schema.tables where table_schema = 'es'")
        .fetch_one(&pool)
        .await
        .unwrap();
    // events, snapshots (and their history), idempotency records, the store's identity
    assert_eq!(tables, 5);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_cached_state_overtaken_by_another_writer_is_reloaded_not_trusted(pool: PgPool) {
    // two repositories = two service instances, each with its own cache
    let a = repository(&pool, 100, 1000);
    let b = repository(&pool, 100, 1000);
    let id = Uuid::now_v7();
    open(&a, id).await;
    assert_eq!(deposit(&a, id, 10).await, 2);
    assert_eq!(deposit(&b, id, 20).await, 3);
    // `a` still caches version 2; its append conflicts, it reloads and succeeds
    assert_eq!(deposit(&a, id, 30).await, 4);
    let loaded = a.store().load::<Account>(id).await.unwrap().unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (4, 60));
    let conflicts: Vec<_> =
        tests::stream_events(&pool, id).await.into_iter().map(|e| e.2["balance_after"].clone()).collect();
    assert_eq!(conflicts[1..], [serde_json::json!(10), serde_json::json!(30), serde_json::json!(60)]);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn in_a_batch_a_conflicting_append_fails_alone(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let opened = || NewEvent::from_domain(&AccountEvent::Opened { owner: "alice".into(), currency: eur() }).unwrap();
    let (a, b, c, d) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    store.append(&append(a, 0, vec![opened()])).await.unwrap();
    store.append(&append(b, 0, vec![opened(), deposited(1, 1)])).await.unwrap();

    // c is new; a is at 1 (fine); b is at 2, so expected 1 takes a version that exists
    // (a unique violation aborts the statement; each append is then tried alone);
    // d expects version 3 of a stream that does not exist
    let results = store
        .append_batch(&[
            append(c, 0, vec![opened(), deposited(5, 5)]),
            append(a, 1, vec![deposited(2, 2)]),
            append(b, 1, vec![deposited(3, 4)]),
            append(d, 3, vec![deposited(4, 4)]),
        ])
        .await
        .unwrap();
    assert_eq!(results[0].as_ref().unwrap().new_version, 2);
    assert_eq!(results[1].as_ref().unwrap().new_version, 2);
    assert!(matches!(results[2], Err(StoreError::Conflict { expected: 1, .. })), "{:?}", results[2]);
    assert!(matches!(results[3], Err(StoreError::Conflict { expected: 3, .. })), "{:?}", results[3]);
    assert_eq!(tests::stream_events(&pool, c).await.len(), 2);
    assert_eq!(tests::stream_events(&pool, a).await.len(), 2);
    assert_eq!(tests::stream_events(&pool, b).await.len(), 2);
    assert!(tests::stream_events(&pool, d).await.is_empty());

    // without a unique violation the batch is one statement: d still fails alone
    let results =
        store.append_batch(&[append(a, 2, vec![deposited(1, 3)]), append(d, 3, vec![deposited(4, 4)])]).await.unwrap();
    assert_eq!(results[0].as_ref().unwrap().new_version, 3);
    assert!(matches!(results[1], Err(StoreError::Conflict { .. })));
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn in_a_batch_a_taken_idempotency_key_fails_alone(pool: PgPool) {
    let store = EventStore::new(pool.clone());
    let opened = || NewEvent::from_domain(&AccountEvent::Opened { owner: "alice".into(), currency: eur() }).unwrap();
    let with_key = |stream, key: &str| {
        let mut a = append(stream, 0, vec![opened()]);
        a.idempotency = vec![eventstore::store::IdempotencyWrite {
            actor: "alice".into(),
            key: key.into(),
            request_hash: "h".into(),
            body: serde_json::json!({}),
        }];
        a
    };
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let results = store.append_batch(&[with_key(a, "k"), with_key(b, "k"), with_key(c, "other")]).await.unwrap();
    assert!(results[0].is_ok());
    assert!(matches!(results[1], Err(StoreError::IdempotencyKeyTaken)), "{:?}", results[1]);
    assert!(results[2].is_ok());
    assert!(tests::stream_events(&pool, b).await.is_empty());
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn group_commit_gives_each_of_many_concurrent_commands_its_own_result(pool: PgPool) {
    let repo = Repository::<Account>::new(
        EventStore::new(pool.clone()),
        RepositoryConfig { append_writers: 2, append_batch_max: 16, ..RepositoryConfig::default() },
        StoreMetrics::register(&prometheus::Registry::new()).unwrap(),
    );
    let ids: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
    futures::future::join_all(ids.iter().map(|id| open(&repo, *id))).await;
    // 40 streams x 5 deposits, all at once
    let deposits = ids.iter().flat_map(|id| (1..=5).map(move |i| (*id, i)));
    let versions = futures::future::join_all(deposits.map(|(id, i)| {
        let repo = repo.clone();
        async move { (id, deposit(&repo, id, i).await) }
    }))
    .await;
    for id in &ids {
        let mut mine: Vec<i64> = versions.iter().filter(|(s, _)| s == id).map(|(_, v)| *v).collect();
        mine.sort_unstable();
        assert_eq!(mine, vec![2, 3, 4, 5, 6]);
        let loaded = repo.store().load::<Account>(*id).await.unwrap().unwrap();
        assert_eq!((loaded.version, loaded.state.balance), (6, 15));
    }
    assert_eq!(tests::total_events(&pool).await, 240);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_refusal_is_never_decided_on_a_cached_state_another_instance_overtook(pool: PgPool) {
    let a = repository(&pool, 100, 1000);
    let b = repository(&pool, 100, 1000);
    let id = Uuid::now_v7();
    open(&a, id).await;
    // `a` caches a balance of 0; `b` deposits 20
    assert_eq!(deposit(&b, id, 20).await, 2);
    // on its cache `a` would refuse this withdrawal; it checks the store and carries it out
    let withdraw = AccountCommand::Withdraw { amount: Money::new(10, eur(), i64::MAX).unwrap(), by: alice() };
    let reply = a
        .execute(
            id,
            withdraw,
            CommandContext::default(),
            |s, v| serde_json::json!({"version": v, "balance": s.balance}),
        )
        .await
        .unwrap();
    assert_eq!(reply.body, serde_json::json!({"version": 3, "balance": 10}));
    // and an expected version is compared with the store's, not the cache's
    let b_cached_at_2 = AccountCommand::Deposit { amount: Money::new(1, eur(), i64::MAX).unwrap(), by: teller() };
    let ctx = CommandContext { expected_version: Some(3), ..Default::default() };
    let reply = b.execute(id, b_cached_at_2, ctx, |_, v| serde_json::json!({"version": v})).await.unwrap();
    assert_eq!(reply.body["version"], 4);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn an_optimistic_idempotency_key_catches_repeats_without_looking_first(pool: PgPool) {
    let repo = repository(&pool, 100, 1000);
    let id = Uuid::now_v7();
    open(&repo, id).await;
    deposit(&repo, id, 100).await;
    let transfer_id = Uuid::now_v7();
    let debit = |minor: i64| AccountCommand::Debit {
        transfer_id,
        amount: Money::new(minor, eur(), i64::MAX).unwrap(),
        counterparty: Uuid::now_v7(),
    };
    let ctx = |hash: &str| CommandContext {
        idempotency: Some(eventstore::IdempotencyRequest {
            actor: "saga:test".into(),
            key: format!("{transfer_id}:debit"),
            request_hash: hash.into(),
            optimistic: true,
        }),
        ..CommandContext::default()
    };
    let reply = |_: &Account, v: i32| serde_json::json!({"version": v});
    let first = repo.execute(id, debit(80), ctx("debit 80"), reply).await.unwrap();
    assert_eq!((first.body["version"].as_i64(), first.replayed), (Some(3), false));

    // the repeat decides a second debit (20 left: a rejection), its append meets the
    // key: the first answer, nothing appended
    let again = repo.execute(id, debit(80), ctx("debit 80"), reply).await.unwrap();
    assert_eq!((again.body["version"].as_i64(), again.replayed), (Some(3), true));
    // from the store's state too (the cache was dropped by the failed append)
    let third = repository(&pool, 100, 0).execute(id, debit(80), ctx("debit 80"), reply).await.unwrap();
    assert_eq!((third.body["version"].as_i64(), third.replayed), (Some(3), true));
    // the key used for another request is refused
    let other = repo.execute(id, debit(5), ctx("debit 5"), reply).await;
    assert!(matches!(other, Err(eventstore::ExecuteError::IdempotencyMismatch)), "{other:?}");

    let events = tests::stream_events(&pool, id).await;
    let types: Vec<&str> = events.iter().map(|(_, t, _)| t.as_str()).collect();
    assert_eq!(types, ["account.opened", "account.deposited", "account.debited"]);
    let loaded = EventStore::new(pool.clone()).load::<Account>(id).await.unwrap().unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (3, 20));

    // a repeat that the account now refuses (closed once: closing again is an error)
    // finds the first answer after the refusal
    let optimistic = |key: &str| CommandContext {
        idempotency: Some(eventstore::IdempotencyRequest {
            actor: "saga:test".into(),
            key: key.into(),
            request_hash: "close".into(),
            optimistic: true,
        }),
        ..CommandContext::default()
    };
    let empty = Uuid::now_v7();
    open(&repo, empty).await;
    let close = || AccountCommand::Close { by: alice() };
    let closed = repo.execute(empty, close(), optimistic("close-1"), reply).await.unwrap();
    assert_eq!((closed.body["version"].as_i64(), closed.replayed), (Some(2), false));
    let again = repo.execute(empty, close(), optimistic("close-1"), reply).await.unwrap();
    assert_eq!((again.body["version"].as_i64(), again.replayed), (Some(2), true));
    // without a record the same refusal is the domain's error
    let refused = repo.execute(empty, close(), optimistic("close-2"), reply).await;
    assert!(matches!(refused, Err(eventstore::ExecuteError::Domain(_))), "{refused:?}");
    assert_eq!(tests::stream_events(&pool, empty).await.len(), 2);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn an_accounts_first_event_and_its_closing_give_owner_currency_and_status_without_the_stream(pool: PgPool) {
    let repo = repository(&pool, 100, 0);
    let store = repo.store();
    let id = Uuid::now_v7();
    open(&repo, id).await;
    deposit(&repo, id, 5).await;
    let open_now = store.load_first_and::<Account>(id, "account.closed").await.unwrap().unwrap();
    assert_eq!(
        (open_now.owner.as_str(), open_now.currency, open_now.status),
        ("alice", Some(eur()), AccountStatus::Open)
    );
    // closed (its balance taken out first), then a saga step refused on it: an event
    // after the closing
    let withdraw = AccountCommand::Withdraw { amount: Money::new(5, eur(), i64::MAX).unwrap(), by: alice() };
    repo.execute(id, withdraw, CommandContext::default(), |_, v| serde_json::json!({"version": v})).await.unwrap();
    repo.execute(id, AccountCommand::Close { by: alice() }, CommandContext::default(), |_, v| serde_json::json!(v))
        .await
        .unwrap();
    let debit = AccountCommand::Debit {
        transfer_id: Uuid::now_v7(),
        amount: Money::new(1, eur(), i64::MAX).unwrap(),
        counterparty: Uuid::now_v7(),
    };
    repo.execute(id, debit, CommandContext::default(), |_, v| serde_json::json!(v)).await.unwrap();
    let full = store.load::<Account>(id).await.unwrap().unwrap();
    assert_eq!(full.version, 5, "opened, deposited, withdrawn, closed, debit refused");
    let facts = store.load_first_and::<Account>(id, "account.closed").await.unwrap().unwrap();
    assert_eq!((facts.owner.as_str(), facts.currency, facts.status), ("alice", Some(eur()), AccountStatus::Closed));
    assert_eq!((facts.owner, facts.currency, facts.status), (full.state.owner, full.state.currency, full.state.status));
    // no such account, or a stream of another type
    assert!(store.load_first_and::<Account>(Uuid::now_v7(), "account.closed").await.unwrap().is_none());
    let other = Uuid::now_v7();
    let mut transfer = append(other, 0, vec![deposited(1, 1)]);
    transfer.stream_type = "transfer";
    store.append(&transfer).await.unwrap();
    assert!(store.load_first_and::<Account>(other, "account.closed").await.unwrap().is_none());
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn commands_queued_on_one_stream_share_appends_and_each_keeps_its_answer_key_and_metadata(pool: PgPool) {
    let registry = prometheus::Registry::new();
    let metrics = StoreMetrics::register(&registry).unwrap();
    let repo = Repository::<Account>::new(EventStore::new(pool.clone()), RepositoryConfig::default(), metrics);
    let id = Uuid::now_v7();
    open(&repo, id).await;
    let before_appends = tests::counter_sum(&repo.metrics().appends);
    // 200 at once on one account: deposits of 1..=100 by a teller, each with a key and
    // a request id of its own; 100 withdrawals of 1,000 by alice (refused while the
    // balance is short)
    let key = |n: i64| eventstore::IdempotencyRequest {
        actor: "tess".into(),
        key: format!("dep-{n}"),
        request_hash: format!("h{n}"),
        optimistic: false,
    };
    let ctx = |n: i64| CommandContext {
        metadata: EventMetadata { actor: "tess".into(), request_id: Some(format!("req-{n}")), ..Default::default() },
        idempotency: Some(key(n)),
        ..Default::default()
    };
    let reply = |a: &Account, v: i32| serde_json::json!({"version": v, "balance": a.balance});
    let deposits = (1..=100).map(|n| {
        let repo = repo.clone();
        async move {
            let command = AccountCommand::Deposit { amount: Money::new(n, eur(), i64::MAX).unwrap(), by: teller() };
            (n, repo.execute(id, command, ctx(n), reply).await)
        }
    });
    let withdrawals = (0..100).map(|_| {
        let repo = repo.clone();
        async move {
            let command = AccountCommand::Withdraw { amount: Money::new(1000, eur(), i64::MAX).unwrap(), by: alice() };
            repo.execute(id, command, CommandContext::default(), reply).await
        }
    });
    let (deposited, withdrawn) =
        tokio::join!(futures::future::join_all(deposits), futures::future::join_all(withdrawals));
    // every deposit answered with its own version; withdrawals either took 1,000 or were refused
    let mut versions: Vec<i64> =
        deposited.iter().map(|(_, r)| r.as_ref().unwrap().body["version"].as_i64().unwrap()).collect();
    let taken = withdrawn.iter().filter(|r| r.is_ok()).count() as i64;
    let refused = withdrawn.iter().filter(|r| matches!(r, Err(eventstore::ExecuteError::Domain(_)))).count() as i64;
    assert_eq!(taken + refused, 100);
    versions.extend(withdrawn.iter().filter_map(|r| r.as_ref().ok()).map(|r| r.body["version"].as_i64().unwrap()));
    versions.sort_unstable();
    assert_eq!(versions, (2..=101 + taken).collect::<Vec<_>>(), "each accepted command has a version of its own");
    let loaded = repo.store().load::<Account>(id).await.unwrap().unwrap();
    assert_eq!((loaded.version as i64, loaded.state.balance), (101 + taken, 5050 - 1000 * taken));
    // each deposit's event carries its own request id and amount; each key its answer
    let rows: Vec<(serde_json::Value, serde_json::Value)> =
        sqlx::query_as("select data, metadata from es.events where stream_id = $1 and type = 'account.deposited'")
            .bind(id)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 100);
    for (data, metadata) in &rows {
        assert_eq!(metadata["request_id"], serde_json::json!(format!("req-{}", data["amount"])), "{metadata}");
    }
    for (n, answer) in &deposited {
        let stored = repo.store().find_idempotent_response("tess", &format!("dep-{n}")).await.unwrap().unwrap();
        assert_eq!(&stored.body, &answer.as_ref().unwrap().body);
        // a repeat replays the answer and appends nothing
        let command = AccountCommand::Deposit { amount: Money::new(*n, eur(), i64::MAX).unwrap(), by: teller() };
        let again = repo.execute(id, command, ctx(*n), reply).await.unwrap();
        assert_eq!((&again.body, again.replayed), (&answer.as_ref().unwrap().body, true));
    }
    assert_eq!(tests::total_events(&pool).await, 1 + 100 + taken);
    // and they shared appends: fewer appends than accepted commands
    let appends = tests::counter_sum(&repo.metrics().appends) - before_appends;
    assert!((appends as i64) < 100 + taken, "{appends} appends for {} commands", 100 + taken);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_read_of_the_past_over_an_unreadable_snapshot_folds_from_the_start(pool: PgPool) {
    // a snapshot every 2 versions; deposits of 1, 2, 3, 4, 5 after the opening
    let repo = repository(&pool, 2, 0);
    let id = Uuid::now_v7();
    open(&repo, id).await;
    for minor in 1..=5 {
        deposit(&repo, id, minor).await;
    }
    let store = EventStore::new(pool.clone());
    let past = store.load_at::<Account>(id, Some(5), None).await.unwrap();
    let loaded = past.loaded.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (5, 10));
    assert!(past.rows_read <= 3, "from the snapshot at 4: {} rows", past.rows_read);
    // every kept snapshot of the code's schema version made unreadable
    let spoiled = sqlx::query("update es.snapshot_history set state = '\"not a state\"' where stream_id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    assert!(spoiled.rows_affected() >= 2);
    let past = store.load_at::<Account>(id, Some(5), None).await.unwrap();
    let loaded = past.loaded.unwrap();
    assert_eq!((loaded.version, loaded.state.balance), (5, 10), "the same state, folded from version 1");
    assert_eq!(past.rows_read, 5);
}
