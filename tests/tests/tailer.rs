//! The tailer against a real Postgres and a real Kinesis API server: every committed
//! event reaches Kinesis, none that rolled back does, each stream's events arrive in
//! version order; for both sources, under concurrent writers that pause inside their
//! transactions (so commit order differs from position order).
#![allow(clippy::unwrap_used)]

use eventstore::rapids::Rapids;
use eventstore::tailer::poll::PollSource;
use eventstore::tailer::publish::Publisher;
use eventstore::tailer::wal::WalSource;
use eventstore::tailer::{Tailer, TailerConfig, TailerMetrics};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;
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
        let config = TailerConfig { batch_size: 500, idle_poll: Duration::from_millis(100) };
        let publisher = Publisher::new(rapids);
        match source {
            Source::Wal => {
                let source = WalSource::open(pool.clone(), &slot).await.unwrap();
                Tailer { pool, source, publisher, metrics, config }.run(shutdown).await.unwrap();
            }
            Source::Poll => {
                let source = PollSource::open(pool.clone(), &slot).await.unwrap();
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
