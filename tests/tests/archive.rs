//! The archive (river `archive`, Parquet files on a real S3 API server): every event of
//! a run, across shards, through a reshard and a SIGKILLed archiver, is in the archive
//! exactly once, read back with DuckDB with the event store's count, ids and each
//! stream's order; `bankctl archive verify` agrees, and finds what is missing or
//! doubled; a retry in pages of other lengths leaves no event twice.
#![allow(clippy::unwrap_used)]

use archive::files::{self, ArchivedEvent};
use archive::river::{ArchiveHandler, ArchiveMetrics};
use archive::s3::{Bucket, S3Args};
use eventstore::envelope::{Envelope, RecordedEvent};
use rapids::river::{Handler, RiverEvent};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tests::{Api, Customer, teller_token, token, total_events, wait_for};
use uuid::Uuid;

/// What the archiver says it wrote (`archive_events_written_total`).
async fn written(archiver: &Api) -> f64 {
    let text = archiver.get("/metrics").send().await.body;
    tests::metric(text.as_str().unwrap_or_default(), "archive_events_written_total").unwrap_or(0.0)
}

/// `bankctl archive verify [args]`: its exit code and report.
async fn bankctl_verify(pool: &PgPool, s3: &S3Args, args: &[&str]) -> (i32, Value) {
    let out = tokio::process::Command::new(tests::binary("bankctl"))
        .args(["archive", "verify"])
        .args(args)
        .env("DATABASE_URL", tests::database_url(&pool.connect_options()))
        .env("ARCHIVE_BUCKET", &s3.archive_bucket)
        .env("S3_ENDPOINT", s3.s3_endpoint.as_deref().unwrap())
        .env("RUST_LOG", "error")
        .output()
        .await
        .unwrap();
    let report = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("bankctl printed no report ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap(), report)
}

/// The archive as DuckDB reads it (scripts/archive-read).
async fn duckdb_read(s3: &S3Args) -> Value {
    let python = std::env::var("ARCHIVE_READER_PYTHON").expect("ARCHIVE_READER_PYTHON (run with scripts/test)");
    let reader = std::env::var("ARCHIVE_READER").expect("ARCHIVE_READER (run with scripts/test)");
    let out = tokio::process::Command::new(python)
        .args([reader.as_str(), s3.s3_endpoint.as_deref().unwrap(), &s3.archive_bucket])
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "archive-read failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn every_event_is_archived_once_through_a_reshard_and_a_killed_archiver(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let s3 = tests::s3_args();
    let (first, archiver) = tests::start_archiver(&pool, &bank.rapids, &s3).await;
    let accounts = bank.accounts.api();
    let alice = token("alice", Customer);
    let mut ids = Vec::new();
    for _ in 0..16 {
        ids.push(accounts.open_account(&alice, "EUR", 0).await);
    }
    let load = tokio::spawn({
        let (accounts, ids) = (accounts.clone(), ids.clone());
        async move {
            let clients = (0..8).map(|c| {
                let (accounts, ids) = (accounts.clone(), ids.clone());
                async move {
                    for n in 0..200 {
                        accounts.deposit(ids[(c * 7 + n) % ids.len()], 1 + n as i64).await;
                    }
                }
            });
            futures::future::join_all(clients).await;
        }
    });

    // a reshard once the archiver is under way, then the archiver SIGKILLed and another started
    wait_for(Duration::from_secs(60), "the archiver to write 300 events", || {
        let archiver = archiver.clone();
        async move { (written(&archiver).await >= 300.0).then_some(()) }
    })
    .await;
    let children = tests::reshard(&bank.rapids).await;
    wait_for(Duration::from_secs(60), "the archiver to write 900 events", || {
        let archiver = archiver.clone();
        async move { (written(&archiver).await >= 900.0).then_some(()) }
    })
    .await;
    tests::kill(first).await;
    let (_second, _) = tests::start_archiver(&pool, &bank.rapids, &s3).await;
    load.await.unwrap();
    // events of other producers, through the event bus
    let bus = bank.bus.api();
    for n in 0..100 {
        let event = json!({"type": "archive.tested", "source": "archive-test", "data": {"n": n}});
        bus.post("/events").token(&teller_token()).json(event).send().await.expect(201);
    }

    let stored = total_events(&pool).await;
    assert!(stored >= 16 + 1600 + 100, "the run stored {stored} events");
    let bucket = Bucket::connect(&s3).await;
    let report = wait_for(Duration::from_secs(120), "every event of the store in the archive", || {
        let (pool, bucket) = (pool.clone(), bucket.clone());
        async move {
            let report = archive::verify::verify(&pool, &bucket, None).await.unwrap();
            (report.missing == 0).then_some(report)
        }
    })
    .await;
    assert_eq!(report.differences(), 0, "{report:?}");
    assert_eq!((report.stored as i64, report.archived as i64), (stored, stored));

    // read back with DuckDB: the same count and ids, each stream in its order
    let read = duckdb_read(&s3).await;
    let rows = read["rows"].as_array().unwrap();
    assert_eq!(rows.len() as i64, stored);
    let archived_ids: HashSet<&str> = rows.iter().map(|r| r[0].as_str().unwrap()).collect();
    let stored_ids: Vec<(Uuid,)> = sqlx::query_as("select event_id from es.events").fetch_all(&pool).await.unwrap();
    let stored_ids: HashSet<String> = stored_ids.into_iter().map(|(id,)| id.to_string()).collect();
    assert_eq!(archived_ids.len(), rows.len(), "no event twice");
    assert_eq!(archived_ids, stored_ids.iter().map(String::as_str).collect());
    let shards: HashSet<&str> = rows.iter().map(|r| r[3].as_str().unwrap()).collect();
    assert!(children.iter().any(|c| shards.contains(c.as_str())), "events after the reshard came from {children:?}");
    assert!(shards.len() >= 3, "the archive holds the shards before and after the reshard: {shards:?}");
    for r in rows {
        assert_eq!(r[3].as_str(), r[6].as_str(), "the partition names the row's shard");
    }
    let mut archived_streams: BTreeMap<String, Vec<Vec<i64>>> = BTreeMap::new();
    for s in read["streams"].as_array().unwrap() {
        let versions: Vec<i64> = s[2].as_array().unwrap().iter().map(|v| v.as_i64().unwrap()).collect();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "stream {} in shard {}: {versions:?}", s[0], s[1]);
        archived_streams.entry(s[0].as_str().unwrap().to_owned()).or_default().push(versions);
    }
    let stored_streams: Vec<(Uuid, Vec<i32>)> =
        sqlx::query_as("select stream_id, array_agg(version order by version) from es.events group by stream_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(archived_streams.len(), stored_streams.len());
    for (stream, versions) in stored_streams {
        // a stream's shards (before, after the reshard) hold consecutive runs of it
        let mut runs = archived_streams.remove(&stream.to_string()).unwrap();
        runs.sort_by_key(|r| r[0]);
        let archived: Vec<i64> = runs.concat();
        assert_eq!(archived, versions.iter().map(|v| i64::from(*v)).collect::<Vec<_>>(), "stream {stream}");
    }

    // bankctl agrees, for all days and for today's partition
    let (code, report) = bankctl_verify(&pool, &s3, &[]).await;
    assert_eq!((code, report["archived"].as_i64(), report["missing"].as_i64()), (0, Some(stored), Some(0)));
    let today = chrono::Utc::now().date_naive().to_string();
    let (code, report) = bankctl_verify(&pool, &s3, &["--day", &today]).await;
    assert_eq!(code, 0, "{report}");
    assert!(report["stored"].as_i64().unwrap() > 0);

    // a file copied under another range: every event in it is doubled
    let objects = bucket.list(files::EVENTS_PREFIX).await.unwrap();
    let original = &objects[0].key;
    let body = bucket.get(original).await.unwrap().unwrap();
    let in_file = files::read(body.clone()).unwrap().len() as i64;
    let day = files::day_of_key(original).unwrap();
    let shard = original.split('/').nth(2).unwrap().trim_start_matches("shard=");
    let copy = files::key(day, shard, "0", "0");
    bucket.put(&copy, body, archive::river::PARQUET).await.unwrap();
    let (code, report) = bankctl_verify(&pool, &s3, &[]).await;
    assert_eq!((code, report["duplicated"].as_i64(), report["missing"].as_i64()), (1, Some(in_file), Some(0)));
    // and both gone: every event in it is missing
    bucket.delete(&copy).await.unwrap();
    bucket.delete(original).await.unwrap();
    let (code, report) = bankctl_verify(&pool, &s3, &[]).await;
    assert_eq!((code, report["missing"].as_i64(), report["duplicated"].as_i64()), (1, Some(in_file), Some(0)));
    assert_eq!(report["missing_ids"].as_array().unwrap().len() as i64, in_file.min(100));
}

/// `n` events of a shard, sequence numbers `from`…, recorded across a midnight after
/// the fifth.
fn shard_events(n: usize, from: usize) -> Vec<RiverEvent> {
    (0..n)
        .map(|i| {
            let recorded_at = if i < 5 { "2026-01-01T23:59:59Z" } else { "2026-01-02T00:00:01Z" };
            let recorded = RecordedEvent {
                position: i as i64 + 1,
                stream_id: Uuid::from_u128(42),
                stream_type: "account".into(),
                version: i as i32 + 1,
                event_id: Uuid::now_v7(),
                event_type: "account.deposited".into(),
                schema_version: 1,
                data: json!({"amount": 1, "currency": "EUR", "balance_after": i + 1}),
                metadata: Default::default(),
                recorded_at: recorded_at.parse().unwrap(),
            };
            again(&RiverEvent::new(shard(), String::new(), Envelope::from(recorded)), from + i)
        })
        .collect()
}

fn shard() -> Arc<str> {
    Arc::from("shardId-000000000007")
}

/// The same event as another record of the shard (a republish).
fn again(event: &RiverEvent, sequence: usize) -> RiverEvent {
    RiverEvent::new(shard(), sequence.to_string(), event.envelope.clone())
}

/// Every archived event of the bucket, by id: how many times.
async fn archived_counts(bucket: &Bucket) -> (usize, HashMap<Uuid, usize>) {
    let objects = bucket.list(files::EVENTS_PREFIX).await.unwrap();
    let mut counts = HashMap::new();
    for object in &objects {
        let rows: Vec<ArchivedEvent> = files::read(bucket.get(&object.key).await.unwrap().unwrap()).unwrap();
        for row in rows {
            *counts.entry(row.envelope.event_id).or_default() += 1;
        }
    }
    (objects.len(), counts)
}

/// A page handled in a transaction that commits (its checkpoint moved) or not (a
/// crash, a reader fenced off before its checkpoint).
async fn page(pool: &PgPool, handler: &ArchiveHandler, events: &[RiverEvent], commits: bool) {
    let mut tx = pool.begin().await.unwrap();
    handler.handle(&mut tx, events).await.unwrap();
    if commits {
        tx.commit().await.unwrap();
    } else {
        tx.rollback().await.unwrap();
    }
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn retries_fenced_readers_and_republished_events_leave_each_event_once(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let s3 = tests::s3_args();
    let bucket = Bucket::connect(&s3).await;
    bucket.ensure().await.unwrap();
    let metrics = ArchiveMetrics::register(&prometheus::Registry::new()).unwrap();
    let handler = ArchiveHandler { bucket: bucket.clone(), metrics: metrics.clone() };
    let events = shard_events(10, 1000);
    let once = |counts: &HashMap<Uuid, usize>, n: usize| {
        assert_eq!(counts.len(), n, "{counts:?}");
        assert!(counts.values().all(|c| *c == 1), "each event once: {counts:?}");
    };

    // an attempt wrote the whole page (two days: two files) and never committed
    page(&pool, &handler, &events, false).await;
    assert_eq!(archived_counts(&bucket).await.0, 2);
    // the retry from the same checkpoint reads shorter pages; each page removes the
    // orphans of the range the previous one committed
    page(&pool, &handler, &events[0..3], true).await;
    page(&pool, &handler, &events[3..8], true).await;
    assert_eq!(metrics.replaced.get(), 1, "0-4 started in the committed 0-2");
    page(&pool, &handler, &events[8..10], true).await;
    assert_eq!(metrics.replaced.get(), 2, "5-9 started in the committed 3-7");
    let (files_now, counts) = archived_counts(&bucket).await;
    once(&counts, 10);
    // 0-2 and 3-4 (day one), 5-7 and 8-9 (day two)
    assert_eq!(files_now, 4);
    let days: HashSet<_> = bucket
        .list(files::EVENTS_PREFIX)
        .await
        .unwrap()
        .iter()
        .map(|o| files::day_of_key(&o.key).unwrap().to_string())
        .collect();
    assert_eq!(days, HashSet::from(["2026-01-01".to_owned(), "2026-01-02".to_owned()]));

    // the same events republished (other sequence numbers): nothing written again
    let republished: Vec<RiverEvent> = events.iter().enumerate().map(|(i, e)| again(e, 2000 + i)).collect();
    page(&pool, &handler, &republished, true).await;
    let (files_now, counts) = archived_counts(&bucket).await;
    once(&counts, 10);
    assert_eq!(files_now, 4);

    // two readers of one shard (a lease taken over): the owner commits 3000-3004, the
    // fenced one handles 3000-3009 after it and cannot commit; its cleanup never touches
    // the owner's registered file, and the owner's next page writes the fenced one's
    // file again under the same key (the same events) and registers it
    let more = shard_events(10, 3000);
    page(&pool, &handler, &more[0..5], true).await;
    page(&pool, &handler, &more, false).await;
    let (_, counts) = archived_counts(&bucket).await;
    assert_eq!(counts.len(), 20, "nothing the owner committed was removed");
    page(&pool, &handler, &more[5..10], true).await;
    let (_, counts) = archived_counts(&bucket).await;
    once(&counts, 20);
    let registered: i64 =
        sqlx::query_scalar("select count(*) from rapids.archived_events").fetch_one(&pool).await.unwrap();
    assert_eq!(registered, 20);
}
