//! The tailer against a real Postgres and a real Kinesis API server: every committed
//! event reaches Kinesis, none that rolled back does, each stream's events arrive in
//! version order; for both sources, under concurrent writers that pause inside their
//! transactions (so commit order differs from position order).
#![allow(clippy::unwrap_used)]

use rapids::Rapids;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;
use tailer::poll::PollSource;
use tailer::publish::Publisher;
use tailer::wal::WalSource;
use tailer::{Tailer, TailerConfig, TailerMetrics};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Clone, Copy, Debug)]
enum Source {
    Wal,
    Poll,
}

fn spawn_tailer(
    pool: &PgPool,
    source: Source,
    slot: &str,
    rapids: Rapids,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let (pool, slot) = (pool.clone(), slot.to_owned());
    tokio::spawn(async move {
        let metrics = TailerMetrics::register(&prometheus::Registry::new()).unwrap();
        let config = TailerConfig { batch_size: 500, idle_poll: Duration::from_millis(100), in_flight: 4 };
        let publisher = Publisher::new(rapids);
        match source {
            Source::Wal => {
                let source = WalSource::new(pool.clone(), &slot);
                Tailer { pool, source, publisher, metrics, config }.run(shutdown).await.unwrap();
            }
            Source::Poll => {
                let source = PollSource::new(pool.clone(), &slot);
                Tailer { pool, source, publisher, metrics, config }.run(shutdown).await.unwrap();
            }
        }
    })
}

async fn gap_stress(pool: PgPool, source: Source) {
    let rapids = tests::fresh_stream(2).await;
    let slot = format!("t_{}", Uuid::now_v7().simple());
    let shutdown = CancellationToken::new();
    let tailer = spawn_tailer(&pool, source, &slot, rapids.clone(), shutdown.clone());
    let written = tests::load::write_load(&pool, 8, 40).await;
    assert!(written.committed.len() > 300 && !written.rolled_back.is_empty(), "the load did what it should");
    tests::load::assert_delivered(&rapids, &written).await;
    shutdown.cancel();
    tailer.await.unwrap();
    WalSource::drop_slot(&pool, &slot).await.unwrap();
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn wal_source_publishes_every_committed_event_in_stream_order(options: PgPoolOptions, connect: PgConnectOptions) {
    gap_stress(tests::pool(options, connect).await, Source::Wal).await;
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn poll_source_publishes_every_committed_event_in_stream_order(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    gap_stress(tests::pool(options, connect).await, Source::Poll).await;
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_new_slot_first_publishes_what_committed_before_it(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    // the store already has history when the tailer is first deployed
    let before = tests::load::write_load(&pool, 4, 30).await;
    let rapids = tests::fresh_stream(2).await;
    let slot = format!("t_{}", Uuid::now_v7().simple());
    let shutdown = CancellationToken::new();
    let tailer = spawn_tailer(&pool, Source::Wal, &slot, rapids.clone(), shutdown.clone());
    let during = tests::load::write_load(&pool, 4, 30).await;
    let all = tests::load::Written {
        committed: before.committed.into_iter().chain(during.committed).collect(),
        rolled_back: before.rolled_back.into_iter().chain(during.rolled_back).collect(),
    };
    tests::load::assert_delivered(&rapids, &all).await;
    // and the backfill hands over to the slot
    tests::wait_until_true(
        &pool,
        Duration::from_secs(10),
        "the backfill to complete",
        "select not exists (select 1 from rapids.tailer_position where source like '%:backfill')",
        &[],
    )
    .await;
    shutdown.cancel();
    tailer.await.unwrap();
    WalSource::drop_slot(&pool, &slot).await.unwrap();
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_crash_right_after_creating_the_slot_still_backfills(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let before = tests::load::write_load(&pool, 4, 30).await;
    let slot = format!("t_{}", Uuid::now_v7().simple());
    // what a tailer killed between its two statements leaves: the backfill owed, no bound, the slot
    sqlx::query("insert into rapids.tailer_position (source, xid, position, until_xid) values ($1, '0', 0, null)")
        .bind(format!("{slot}:backfill"))
        .execute(&pool)
        .await
        .unwrap();
    sqlx::query("select pg_create_logical_replication_slot($1, 'pgoutput')").bind(&slot).execute(&pool).await.unwrap();
    let rapids = tests::fresh_stream(2).await;
    let shutdown = CancellationToken::new();
    let tailer = spawn_tailer(&pool, Source::Wal, &slot, rapids.clone(), shutdown.clone());
    tests::load::assert_delivered(&rapids, &before).await;
    shutdown.cancel();
    tailer.await.unwrap();
    WalSource::drop_slot(&pool, &slot).await.unwrap();
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn an_idle_slot_advances_past_wal_that_holds_no_events(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let rapids = tests::fresh_stream(1).await;
    let slot = format!("t_{}", Uuid::now_v7().simple());
    let shutdown = CancellationToken::new();
    let tailer = spawn_tailer(&pool, Source::Wal, &slot, rapids.clone(), shutdown.clone());
    let written = tests::load::write_load(&pool, 2, 5).await;
    tests::load::assert_delivered(&rapids, &written).await;
    // WAL that holds no event: without heartbeats the slot would pin all of it
    sqlx::query("create table busy (n int)").execute(&pool).await.unwrap();
    sqlx::query("insert into busy select generate_series(1, 20000)").execute(&pool).await.unwrap();
    let (wal_end,): (String,) = sqlx::query_as("select pg_current_wal_lsn()::text").fetch_one(&pool).await.unwrap();
    tests::wait_until_true(
        &pool,
        Duration::from_secs(15),
        "the idle slot to advance past the WAL",
        "select confirmed_flush_lsn >= $2::pg_lsn from pg_replication_slots where slot_name = $1",
        &[&slot, &wal_end],
    )
    .await;
    shutdown.cancel();
    tailer.await.unwrap();
    WalSource::drop_slot(&pool, &slot).await.unwrap();
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_tailer_whose_connections_are_cut_during_a_load_starts_again_and_loses_nothing(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    for source in [Source::Wal, Source::Poll] {
        let rapids = tests::fresh_stream(2).await;
        let slot = format!("t_{}", Uuid::now_v7().simple());
        let shutdown = CancellationToken::new();
        let tailer = spawn_tailer(&pool, source, &slot, rapids.clone(), shutdown.clone());
        let load = tokio::spawn({
            let pool = pool.clone();
            async move { tests::load::write_load(&pool, 8, 60).await }
        });
        // the process lives on while its leadership fails: the lock connection (both
        // sources) and the replication connection (wal) are cut under it, at varying
        // points of its work; it must let go, start again from the acknowledged
        // position and publish everything
        let mut cuts = 0;
        while !load.is_finished() {
            tokio::time::sleep(Duration::from_millis(rand::random_range(50..250))).await;
            let cut: i64 = sqlx::query_scalar(
                "select count(*) filter (where cut) from (
                   select pg_terminate_backend(pid) as cut from pg_locks
                   where locktype = 'advisory' and granted
                     and database = (select oid from pg_database where datname = current_database())
                     and (classid::bigint << 32 | objid::bigint) = $1
                   union all
                   select pg_terminate_backend(active_pid) from pg_replication_slots
                   where slot_name = $2 and active_pid is not null) t",
            )
            .bind(0x7261_7069_6473_i64)
            .bind(&slot)
            .fetch_one(&pool)
            .await
            .unwrap();
            cuts += cut;
        }
        let written = load.await.unwrap();
        assert!(cuts >= 2, "{source:?}: the tailer's connections were cut {cuts} times only");
        tests::load::assert_delivered(&rapids, &written).await;
        shutdown.cancel();
        tailer.await.unwrap();
        WalSource::drop_slot(&pool, &slot).await.unwrap();
    }
}
