//! A concurrent write load on `es.events` and the check that Kinesis got all of it.

use rapids::Rapids;
use sqlx::PgPool;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

/// What the writers did: committed `(stream, version, event id)` and rolled-back event ids.
#[derive(Default)]
pub struct Written {
    pub committed: Vec<(Uuid, i32, Uuid)>,
    pub rolled_back: HashSet<Uuid>,
}

/// `writers` concurrent writers, each with 4 streams of its own, `transactions` each:
/// 1 to 3 events per transaction with pauses inside it, 10% rolled back.
pub async fn write_load(pool: &PgPool, writers: usize, transactions: usize) -> Written {
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
pub async fn assert_delivered(rapids: &Rapids, written: &Written) {
    let wanted: HashSet<Uuid> = written.committed.iter().map(|c| c.2).collect();
    let wanted = &wanted;
    let shards = crate::wait_for(Duration::from_secs(60), "every committed event to reach Kinesis", || async move {
        let shards = crate::read_shards(rapids).await;
        let seen: HashSet<Uuid> = shards.iter().flatten().map(|e| e.event_id).collect();
        wanted.is_subset(&seen).then_some(shards)
    })
    .await;
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
