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
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
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

/// What the writers did: committed `(stream, version, event id)` and rolled-back event ids.
#[derive(Default)]
struct Written {
    committed: Vec<(Uuid, i32, Uuid)>,
    rolled_back: HashSet<Uuid>,
}

/// `writers` concurrent writers, each with 4 streams of its own, `transactions` each:
/// 1 to 3 events per transaction with pauses inside it, 10% rolled back.
async fn write_load(pool: &PgPool, writers: usize, transactions: usize) -> Written {
    let written = Arc::new(Mutex::new(Written::default()));
    let tasks: Vec<_> = (0..writers)
        .map(|_| {
            let (pool, written) = (pool.clone(), written.clone());
            tokio::spawn(async move {
                let mut streams: Vec<(Uuid, i32)> = (0..4).map(|_| (Uuid::now_v7(), 0)).collect();
                for _ in 0..transactions {
                    let s = rand::random_range(0..streams.len());
                    let n = rand::random_range(1..=3);
                    let (stream, version) = streams[s];
                    let mut tx = pool.begin().await.unwrap();
                    let mut ids = Vec::new();
                    for k in 1..=n {
                        let id = Uuid::now_v7();
                        sqlx::query(
                            "insert into es.events (stream_id, stream_type, version, event_id, type, data)
                             values ($1, 'test', $2, $3, 'test.happened', '{}')",
                        )
                        .bind(stream)
                        .bind(version + k)
                        .bind(id)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                        ids.push((stream, version + k, id));
                        tokio::time::sleep(Duration::from_millis(rand::random_range(0..4))).await;
                    }
                    if rand::random_range(0..10) == 0 {
                        tx.rollback().await.unwrap();
                        written.lock().unwrap().rolled_back.extend(ids.iter().map(|i| i.2));
                    } else {
                        tx.commit().await.unwrap();
                        streams[s].1 += n;
                        written.lock().unwrap().committed.extend(ids);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap();
    }
    Arc::try_unwrap(written).ok().unwrap().into_inner().unwrap()
}

/// Waits until Kinesis holds every committed event, then checks the whole delivery.
async fn assert_delivered(rapids: &Rapids, written: &Written) {
    let wanted: HashSet<Uuid> = written.committed.iter().map(|c| c.2).collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let shards = loop {
        let shards = tests::read_shards(rapids).await;
        let seen: HashSet<Uuid> = shards.iter().flatten().map(|e| e.event_id).collect();
        if wanted.is_subset(&seen) {
            break shards;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} committed events never reached Kinesis",
            wanted.difference(&seen).count()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let delivered: Vec<_> = shards.iter().flatten().collect();
    assert!(delivered.iter().all(|e| !written.rolled_back.contains(&e.event_id)), "a rolled-back event was published");
    // per stream, first deliveries come in version order 1, 2, 3, … on one shard
    for shard in &shards {
        let mut next: BTreeMap<Uuid, i32> = BTreeMap::new();
        let mut seen = HashSet::new();
        for e in shard {
            if !seen.insert(e.event_id) {
                continue; // a duplicate (at-least-once)
            }
            let expected = next.entry(e.stream_id).or_insert(1);
            assert_eq!(e.version, *expected, "stream {} out of order", e.stream_id);
            *expected += 1;
        }
    }
    // the partition key keeps each stream on one shard
    let streams: HashSet<Uuid> = written.committed.iter().map(|c| c.0).collect();
    for stream in streams {
        assert_eq!(shards.iter().filter(|sh| sh.iter().any(|e| e.stream_id == stream)).count(), 1);
    }
}

async fn gap_stress(pool: PgPool, source: Source) {
    let rapids = tests::fresh_stream(2).await;
    let slot = format!("t_{}", Uuid::now_v7().simple());
    let shutdown = CancellationToken::new();
    let tailer = spawn_tailer(&pool, source, &slot, rapids.clone(), shutdown.clone());
    let written = write_load(&pool, 8, 40).await;
    assert!(written.committed.len() > 300 && !written.rolled_back.is_empty(), "the load did what it should");
    assert_delivered(&rapids, &written).await;
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
