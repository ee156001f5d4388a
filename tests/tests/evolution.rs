//! Event evolution, as the design's example: `transfer.created` gained a `memo` at
//! schema version 2. Every transfer stored before is at version 1 (no memo); it must
//! still load, replay and project, through the one upcasting step the event store and
//! the rivers apply by schema version, and a snapshot of the state's older schema is
//! rebuilt, not trusted.
#![allow(clippy::unwrap_used)]

use bank_domain::transfer::{MoneyTransfer, TransferState};
use eventstore::envelope::Envelope;
use eventstore::store::{Append, NewEvent};
use eventstore::{EventMetadata, EventStore};
use rapids::river::{Handler, RiverEvent};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;
use tests::{Customer, token};
use uuid::Uuid;
use view_updater::rebuild;

/// An event as this code's predecessor stored it: `schema_version` 1.
fn v1(event_type: &str, data: Value) -> NewEvent {
    NewEvent { event_id: Uuid::now_v7(), event_type: event_type.into(), schema_version: 1, data, metadata: None }
}

/// `transfer.created` at version 1: no memo.
fn v1_created(from: Uuid, to: Uuid, amount: i64) -> NewEvent {
    v1(
        "transfer.created",
        json!({"from": from, "to": to, "amount": amount, "currency": "EUR", "initiated_by": "alice"}),
    )
}

/// Appends raw events to a transfer stream, as the release before this one did.
async fn append_transfer(pool: &PgPool, id: Uuid, expected_version: i32, events: Vec<NewEvent>) {
    let append = Append {
        stream_id: id,
        stream_type: "transfer",
        expected_version,
        events,
        metadata: EventMetadata {
            correlation_id: Some(id.to_string()),
            actor: "alice".into(),
            ..EventMetadata::default()
        },
        snapshot: None,
        idempotency: Vec::new(),
    };
    EventStore::new(pool.clone()).append(&append).await.unwrap();
}

/// `(schema_version, data)` of each of the stream's events, oldest first.
async fn stored(pool: &PgPool, id: Uuid) -> Vec<(i16, Value)> {
    let rows: Vec<(i16, sqlx::types::Json<Value>)> =
        sqlx::query_as("select schema_version, data from es.events where stream_id = $1 order by version")
            .bind(id)
            .fetch_all(pool)
            .await
            .unwrap();
    rows.into_iter().map(|(v, d)| (v, d.0)).collect()
}

/// `(state, memo, version)` of a transfer's view row.
async fn view(pool: &PgPool, id: Uuid) -> Option<(String, String, i32)> {
    sqlx::query_as("select state, memo, version from views.transfers where id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await
        .unwrap()
}

async fn project(pool: &PgPool, events: &[RiverEvent]) {
    let mut tx = pool.begin().await.unwrap();
    view_updater::store::ViewsHandler.handle(&mut tx, events).await.unwrap();
    tx.commit().await.unwrap();
}

fn river_event(envelope: Envelope) -> RiverEvent {
    RiverEvent::new("test".into(), "0".into(), envelope)
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn version_1_transfers_load_replay_and_project_with_an_empty_memo(pool: PgPool) {
    let (id, from, to) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let moved = json!({"from": from, "to": to, "amount": 300, "currency": "EUR"});
    append_transfer(
        &pool,
        id,
        0,
        vec![v1_created(from, to, 300), v1("transfer.debited", moved), v1("transfer.completed", json!({}))],
    )
    .await;

    let store = EventStore::new(pool.clone());
    for loaded in [
        store.load::<MoneyTransfer>(id).await.unwrap().unwrap(),
        store.load_full_replay::<MoneyTransfer>(id).await.unwrap().unwrap(),
    ] {
        assert_eq!(loaded.version, 3);
        let t = loaded.state;
        assert_eq!((t.state, t.amount, t.from, t.to, t.memo.as_str()), (TransferState::Completed, 300, from, to, ""));
    }
    // upcasting is on read: the stored rows stay as they were written
    let rows = stored(&pool, id).await;
    assert_eq!(rows.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 1, 1]);
    assert!(rows[0].1.get("memo").is_none(), "{:?}", rows[0].1);

    // the views: version 3 arrives first (1 and 2 are filled from the store), then
    // every envelope again, one of them as an older tailer wrote it (no
    // schema_version: it reads as 1)
    let envelopes: Vec<Envelope> =
        store.read_stream(id, 0, None).await.unwrap().into_iter().map(Envelope::from).collect();
    assert!(envelopes.iter().all(|e| e.schema_version == 1));
    project(&pool, &[river_event(envelopes[2].clone())]).await;
    assert_eq!(view(&pool, id).await, Some(("completed".into(), String::new(), 3)));
    let mut old = serde_json::to_value(&envelopes[0]).unwrap();
    old.as_object_mut().unwrap().remove("schema_version");
    let old: Envelope = serde_json::from_value(old).unwrap();
    assert_eq!(old.schema_version, 1);
    let again: Vec<RiverEvent> = std::iter::once(old).chain(envelopes.clone()).map(river_event).collect();
    project(&pool, &again).await;
    assert_eq!(view(&pool, id).await, Some(("completed".into(), String::new(), 3)));

    // a fresh stream's version-1 envelope projects too, straight from the rapids
    let other = Uuid::now_v7();
    append_transfer(&pool, other, 0, vec![v1_created(from, to, 5)]).await;
    let envelope = Envelope::from(store.read_stream(other, 0, None).await.unwrap().remove(0));
    project(&pool, &[river_event(envelope)]).await;
    assert_eq!(view(&pool, other).await, Some(("initiated".into(), String::new(), 1)));
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_snapshot_of_the_older_state_schema_is_rebuilt_not_trusted(pool: PgPool) {
    let (id, from, to) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    append_transfer(&pool, id, 0, vec![v1_created(from, to, 40)]).await;
    // a snapshot of the state before memos (schema version 1) that says something else
    let lie = json!({"state": "failed", "from": from, "to": to, "amount": 1, "currency": "EUR",
                     "initiated_by": "mallory", "failure_reason": "stale"});
    sqlx::query(
        "insert into es.snapshots (stream_id, stream_type, version, schema_version, state)
         values ($1, 'transfer', 1, 1, $2)",
    )
    .bind(id)
    .bind(&lie)
    .execute(&pool)
    .await
    .unwrap();
    let store = EventStore::new(pool.clone());
    let loaded = store.load::<MoneyTransfer>(id).await.unwrap().unwrap();
    assert_eq!(
        (loaded.version, loaded.state.state, loaded.state.initiated_by.as_str(), loaded.state.memo.as_str()),
        (1, TransferState::Initiated, "alice", "")
    );
    // the same snapshot under the code's schema version would be believed: the check
    // is what keeps it out
    assert_eq!(<MoneyTransfer as bank_domain::Aggregate>::SNAPSHOT_SCHEMA_VERSION, 2);
    sqlx::query("update es.snapshots set schema_version = 2 where stream_id = $1")
        .bind(id)
        .execute(&pool)
        .await
        .unwrap();
    let believed = store.load::<MoneyTransfer>(id).await.unwrap().unwrap();
    assert_eq!((believed.state.state, believed.state.initiated_by.as_str()), (TransferState::Failed, "mallory"));
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_memo_is_validated_and_nothing_is_stored_for_a_bad_one(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let accounts = tests::start_accounts(&pool, |_| {}).await;
    let transfers = tests::start_transfers(&pool, |_| {}).await;
    let alice = token("alice", Customer);
    let from = accounts.api().open_account(&alice, "EUR", 1000).await;
    let to = accounts.api().open_account(&token("bob", Customer), "EUR", 0).await;
    let post = |memo: Value| {
        let body = json!({"from": from, "to": to, "amount": 1, "currency": "EUR", "memo": memo});
        transfers.api().post("/transfers").token(&alice).json(body).send()
    };
    let transfer_events = || async {
        let n: i64 = sqlx::query_scalar("select count(*) from es.events where stream_type = 'transfer'")
            .fetch_one(&pool)
            .await
            .unwrap();
        n
    };

    for bad in ["x".repeat(141), "é".repeat(141), "rent\nfor may".into(), "tab\there".into(), "\u{7f}".into()] {
        post(json!(bad)).await.expect_error(400, "invalid_memo");
    }
    assert_eq!(transfer_events().await, 0, "a refused memo stores nothing");

    // 140 characters (not bytes) is the limit; empty or null is no memo
    let longest = "é".repeat(140);
    for (memo, shown) in [(json!(longest), longest.as_str()), (json!(""), ""), (Value::Null, "")] {
        let created = post(memo).await;
        assert_eq!(created.expect(201)["memo"], json!(shown));
    }
    // a body without the field at all
    let created = transfers
        .api()
        .post("/transfers")
        .token(&alice)
        .json(json!({"from": from, "to": to, "amount": 1, "currency": "EUR"}))
        .send()
        .await;
    assert_eq!(created.expect(201)["memo"], "");
    assert_eq!(transfer_events().await, 4);
    // what is written is version 2 of transfer.created, memo included
    let rows = stored(&pool, created.id()).await;
    assert_eq!((rows[0].0, &rows[0].1["memo"]), (2, &json!("")));
}

/// Waits until every transfer stream has settled (completed or failed).
async fn transfers_settled(pool: &PgPool, n: i64) {
    tests::wait_for(Duration::from_secs(60), &format!("{n} transfers to settle"), || async move {
        let settled: i64 = sqlx::query_scalar(
            "select count(*) from es.events where type in ('transfer.completed', 'transfer.failed')",
        )
        .fetch_one(pool)
        .await
        .unwrap();
        (settled == n).then_some(())
    })
    .await;
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn version_1_and_2_transfers_run_the_saga_and_a_rebuild_finds_no_difference(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let alice = token("alice", Customer);
    let a = bank.accounts.api().open_account(&alice, "EUR", 1000).await;
    let b = bank.accounts.api().open_account(&token("bob", Customer), "EUR", 0).await;

    // transfers of the release before: version-1 transfer.created, published as
    // version-1 envelopes; both sagas and the views take them from the rapids
    let mut old = Vec::new();
    for amount in [10, 20, 30] {
        let id = Uuid::now_v7();
        append_transfer(&pool, id, 0, vec![v1_created(a, b, amount)]).await;
        old.push(id);
    }
    // and this release's, with and without a memo
    let post = |body: Value| bank.transfers.api().post("/transfers").token(&alice).json(body).send();
    let with_memo =
        post(json!({"from": a, "to": b, "amount": 40, "currency": "EUR", "memo": "rent for März 🏠"})).await;
    assert_eq!(with_memo.expect(201)["memo"], "rent for März 🏠");
    let with_memo = with_memo.id();
    let without = post(json!({"from": a, "to": b, "amount": 50, "currency": "EUR"})).await.id();
    transfers_settled(&pool, 5).await;
    tests::views_caught_up(&pool).await;

    // the saga moved every one: the old ones were read through the upcast
    let store = EventStore::new(pool.clone());
    for id in old.iter().chain([&with_memo, &without]) {
        let t = store.load::<MoneyTransfer>(*id).await.unwrap().unwrap().state;
        assert_eq!(t.state, TransferState::Completed, "{id}");
    }
    let balance = store.load::<bank_domain::account::Account>(b).await.unwrap().unwrap().state.balance;
    assert_eq!(balance, 10 + 20 + 30 + 40 + 50);

    // the memo in transfer-service's read and in query-service's view
    let read = bank.transfers.api().get(&format!("/transfers/{with_memo}")).token(&alice).send().await;
    assert_eq!(read.expect(200)["memo"], "rent for März 🏠");
    let viewed = bank
        .queries
        .api()
        .get(&format!("/transfers/{with_memo}?min_version=3&wait_ms=5000"))
        .token(&alice)
        .send()
        .await;
    assert_eq!((viewed.expect(200)["memo"].as_str(), viewed.version()), (Some("rent for März 🏠"), 3));
    for id in old.iter().chain([&without]) {
        let read = bank.transfers.api().get(&format!("/transfers/{id}")).token(&alice).send().await;
        assert_eq!(read.expect(200)["memo"], "");
        let viewed = bank.queries.api().get(&format!("/transfers/{id}")).token(&alice).send().await;
        assert_eq!(viewed.expect(200)["memo"], "");
    }
    // the old streams are a mix: version-1 creations, and the saga's later steps
    let versions: Vec<i16> = stored(&pool, old[0]).await.into_iter().map(|r| r.0).collect();
    assert_eq!(versions, [1, 1, 1]);
    let versions: Vec<i16> = stored(&pool, with_memo).await.into_iter().map(|r| r.0).collect();
    assert_eq!(versions, [2, 1, 1]);

    // a rebuild from the store over the mix agrees with what the rivers built
    let verified = rebuild::verify(&pool, false).await.unwrap();
    assert!(verified.differences.is_empty(), "{:?}", verified.differences);
    assert!(verified.compared >= 2 + 5, "{verified:?}");
    // and the verify sees the memo: a wrong one in the live views is a difference
    sqlx::query("update views.transfers set memo = 'forged' where id = $1").bind(old[1]).execute(&pool).await.unwrap();
    let verified = rebuild::verify(&pool, false).await.unwrap();
    let keys: Vec<(&str, String)> = verified.differences.iter().map(|d| (d.table, d.key.clone())).collect();
    assert_eq!(keys, [("transfers", old[1].to_string())]);
    // a full rebuild repairs it, and verifies clean
    rebuild::rebuild(&pool, false).await.unwrap();
    assert_eq!(view(&pool, old[1]).await.map(|v| v.1), Some(String::new()));
    assert_eq!(view(&pool, with_memo).await.map(|v| v.1), Some("rent for März 🏠".into()));
    let verified = rebuild::verify(&pool, false).await.unwrap();
    assert!(verified.differences.is_empty(), "{:?}", verified.differences);
}
