//! The rebuild's bulk path (rows decoded straight from the store's text, transaction
//! rows COPYed in binary) against Postgres: it must build what the live path builds,
//! event by event, including a gap filled from the store, upcasting and nulls.
//!
//! The wider tests (a rebuild during writes, the swap, `--verify` of a process) are in
//! tests/tests/views.rs and views_process.rs.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use uuid::Uuid;
use view_updater::rebuild;
use view_updater::store::{self, LIVE};

/// One stored event at a chosen position (positions order the rebuild's reads).
#[allow(clippy::too_many_arguments)]
async fn event(
    pool: &PgPool,
    position: i64,
    stream: Uuid,
    stream_type: &str,
    version: i32,
    event_type: &str,
    schema_version: i16,
    data: Value,
    recorded_at: &str,
) {
    sqlx::query(
        "insert into es.events (position, stream_id, stream_type, version, event_id, type, schema_version, data, recorded_at)
         overriding system value values ($1, $2, $3, $4, $5, $6, $7, $8, $9::timestamptz)",
    )
    .bind(position)
    .bind(stream)
    .bind(stream_type)
    .bind(version)
    .bind(Uuid::now_v7())
    .bind(event_type)
    .bind(schema_version)
    .bind(sqlx::types::Json(data))
    .bind(recorded_at)
    .execute(pool)
    .await
    .unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_rebuild_builds_what_the_live_path_builds(pool: PgPool) {
    service_kit::startup::migrate(&pool).await.unwrap();
    let (a, b, t, u, other) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let moved = json!({"from": a, "to": b, "amount": 40, "currency": "EUR"});
    // before 2000 (negative microseconds in COPY's binary format) and with microseconds
    let (old, at) = ("1999-12-31 23:59:59.999999+00", "2024-03-01 12:00:00.123456+00");
    event(&pool, 10, a, "account", 1, "account.opened", 1, json!({"owner": "alice", "currency": "EUR"}), old).await;
    event(&pool, 11, b, "account", 1, "account.opened", 1, json!({"owner": "bob", "currency": "EUR"}), at).await;
    // version 1 of transfer.created had no memo: upcast to an empty one
    let created = json!({"from": a, "to": b, "amount": 40, "currency": "EUR", "initiated_by": "alice"});
    event(&pool, 12, t, "transfer", 1, "transfer.created", 1, created.clone(), at).await;
    let mut with_memo = created;
    with_memo["memo"] = "rent".into();
    event(&pool, 13, u, "transfer", 1, "transfer.created", 2, with_memo, at).await;
    // not a stream the views show: never decoded
    event(&pool, 14, other, "ledger", 1, "ledger.whatever", 1, json!({"not": ["an", "account"]}), at).await;
    // a's version 3 is read before its version 2 (committed later, at a lower position
    // than was read): the gap is filled from the store, the later duplicate skipped
    let debited = json!({"transfer_id": t, "amount": 40, "currency": "EUR", "balance_after": 60, "counterparty": b});
    event(&pool, 20, a, "account", 3, "account.debited", 1, debited, at).await;
    let credited = json!({"transfer_id": t, "amount": 40, "currency": "EUR", "balance_after": 40, "counterparty": a});
    event(&pool, 21, b, "account", 2, "account.credited", 1, credited, at).await;
    event(&pool, 22, t, "transfer", 2, "transfer.debited", 1, moved.clone(), at).await;
    let mut refund = moved;
    refund["reason"] = "account_closed".into();
    event(&pool, 23, t, "transfer", 3, "transfer.refund_requested", 1, refund, at).await;
    let deposited = json!({"amount": 100, "currency": "EUR", "balance_after": 100});
    event(&pool, 30, a, "account", 2, "account.deposited", 1, deposited, old).await;
    let refunded = json!({"transfer_id": t, "amount": 40, "currency": "EUR", "balance_after": 100});
    event(&pool, 40, a, "account", 4, "account.refunded", 1, refunded, at).await;
    event(&pool, 41, t, "transfer", 4, "transfer.failed", 1, json!({"reason": "account_closed", "refunded": true}), at)
        .await;

    // the live path, stream by stream (unnest inserts, `serde_json::Value` decoding)
    let mut tx = pool.begin().await.unwrap();
    for (id, stream_type) in [(a, "account"), (b, "account"), (t, "transfer"), (u, "transfer")] {
        let events = store::read_store(&mut tx, id, 0, None).await.unwrap();
        store::apply_stream(&mut tx, LIVE, "test", id, stream_type, &events).await.unwrap();
    }
    tx.commit().await.unwrap();

    let verified = rebuild::verify(&pool, false).await.unwrap();
    assert!(verified.differences.is_empty(), "{:?}", verified.differences);
    // 2 accounts, 2 transfers, a's 3 balance changes and b's one
    assert_eq!((verified.compared, verified.not_compared), (8, 0), "{verified:?}");
    assert_eq!((verified.rebuilt.events, verified.rebuilt.caught_up), (12, 0));

    let rebuilt = rebuild::rebuild(&pool, false).await.unwrap();
    assert_eq!((rebuilt.events, rebuilt.caught_up), (12, 0));
    let memos: Vec<(Uuid, String, String)> =
        sqlx::query_as("select id, memo, state from views.transfers order by id").fetch_all(&pool).await.unwrap();
    assert_eq!(memos, [(t, String::new(), "failed".to_owned()), (u, "rent".to_owned(), "initiated".to_owned())]);
    type Transaction = (i32, String, i64, Option<Uuid>, Option<Uuid>, DateTime<Utc>);
    let rows: Vec<Transaction> = sqlx::query_as(
        "select version, kind, balance_after, transfer_id, counterparty, recorded_at
         from views.account_transactions where account_id = $1 order by version",
    )
    .bind(a)
    .fetch_all(&pool)
    .await
    .unwrap();
    let time = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
    let (old, at) = (time("1999-12-31T23:59:59.999999Z"), time("2024-03-01T12:00:00.123456Z"));
    assert_eq!(
        rows,
        [
            (2, "deposit".into(), 100, None, None, old),
            (3, "transfer_debit".into(), 60, Some(t), Some(b), at),
            (4, "refund".into(), 100, Some(t), None, at),
        ]
    );
    // the swapped-in tables have the live tables' keys
    let keys: i64 = sqlx::query_scalar(
        "select count(*) from pg_constraint where conrelid = 'views.account_transactions'::regclass and contype = 'p'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(keys, 1);
}
