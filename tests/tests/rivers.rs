//! Rivers against a real Postgres and a real Kinesis API server: instances share the
//! shards and take over a dead one's; a reshard loses nothing and keeps each stream's
//! order; a poison event is parked and handled again when an operator asks.
//!
//! The handler records each event it handles in a table, in the river's transaction:
//! a row per applied effect, so "applied once" is a count.
#![allow(clippy::unwrap_used)]

use eventstore::envelope::Envelope;
use rapids::Rapids;
use rapids::river::{Handler, HandlerError, River, RiverConfig, RiverEvent, RiverMetrics, TopicFilter};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// Records each event's effect; fails on events marked `poison` until cured. Not
/// transactional, it writes outside the river's transaction and skips effects
/// already recorded (as a saga's idempotent commands do).
#[derive(Clone, Default)]
struct Recorder {
    deliveries: Arc<AtomicU64>,
    cured: Arc<AtomicBool>,
    outside_transaction: bool,
}

impl Handler for Recorder {
    async fn handle(&self, tx: &mut PgConnection, events: &[RiverEvent]) -> Result<(), HandlerError> {
        for event in events {
            self.deliveries.fetch_add(1, Ordering::Relaxed);
            if event.envelope.data["poison"] == true && !self.cured.load(Ordering::Relaxed) {
                return Err(HandlerError::Permanent("cannot digest this".into()));
            }
            let insert = if self.outside_transaction {
                "insert into effects (stream_id, version, shard_id, sequence_number) select $1, $2, $3, $4
                 where not exists (select 1 from effects where stream_id = $1 and version = $2)"
            } else {
                "insert into effects (stream_id, version, shard_id, sequence_number) values ($1, $2, $3, $4)"
            };
            sqlx::query(insert)
                .bind(event.envelope.stream_id)
                .bind(event.envelope.version)
                .bind(&*event.shard_id)
                .bind(&event.sequence_number)
                .execute(&mut *tx)
                .await
                .map_err(|e| HandlerError::Transient(e.to_string()))?;
        }
        Ok(())
    }

    fn transactional(&self) -> bool {
        !self.outside_transaction
    }
}

async fn effects_table(pool: &PgPool) {
    sqlx::query(
        "create table effects (id bigserial primary key, stream_id uuid, version int, shard_id text, sequence_number text)",
    )
        .execute(pool)
        .await
        .unwrap();
}

fn config(worker: &str) -> RiverConfig {
    RiverConfig {
        worker: worker.into(),
        lease_duration: Duration::from_millis(1500),
        renew_every: Duration::from_millis(200),
        shard_sync_every: Duration::from_millis(500),
        idle_poll: Duration::from_millis(20),
        max_attempts: 3,
        retry_backoff: Duration::from_millis(20),
        read_mode: tests::read_mode(),
        ..RiverConfig::new("test", TopicFilter::new(&["test.*"]))
    }
}

/// One instance of the river, in a runtime (thread, pool, Kinesis client) of its own,
/// so that killing it stops everything it runs at once, like a process dying.
struct Instance {
    metrics: RiverMetrics,
    kill: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl Instance {
    fn start(pool: &PgPool, rapids: &Rapids, worker: &str, handler: Recorder) -> Self {
        let metrics = RiverMetrics::register(&prometheus::Registry::new()).unwrap();
        let (kill, killed) = std::sync::mpsc::channel::<()>();
        let connect = (*pool.connect_options()).clone();
        let rapids_config = rapids::RapidsConfig { stream: rapids.stream().into(), ..tests::rapids_config() };
        let (config, river_metrics) = (config(worker), metrics.clone());
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
            runtime.spawn(async move {
                let pool = PgPoolOptions::new().max_connections(8).connect_with(connect).await.unwrap();
                let rapids = Rapids::connect(&rapids_config).await;
                River::new(config, pool, rapids, handler, river_metrics).run(CancellationToken::new()).await;
            });
            let _ = killed.recv();
            // every task of the instance stops where it is; nothing is released
            runtime.shutdown_background();
        });
        Instance { metrics, kill, thread }
    }

    fn kill(self) {
        self.kill.send(()).unwrap();
        self.thread.join().unwrap();
    }
}

fn envelope(stream_id: Uuid, version: i32, data: serde_json::Value) -> Envelope {
    Envelope {
        event_id: Uuid::now_v7(),
        event_type: "test.happened".into(),
        stream_id,
        stream_type: "test".into(),
        version,
        position: 0,
        schema_version: 1,
        recorded_at: chrono::Utc::now(),
        correlation_id: None,
        causation_id: None,
        actor: "test".into(),
        role: None,
        tags: Default::default(),
        partition_key: stream_id.to_string(),
        source: "test".into(),
        timestamp: 0,
        store: None,
        traceparent: None,
        data,
    }
}

/// Puts `versions` events on each of `streams` streams, each stream's in order,
/// the streams concurrently.
async fn put_streams(rapids: &Rapids, streams: &[Uuid], versions: std::ops::RangeInclusive<i32>) {
    let writers = streams.iter().map(|stream| {
        let (rapids, versions) = (rapids.clone(), versions.clone());
        let stream = *stream;
        async move {
            for version in versions {
                put_retrying(&rapids, &envelope(stream, version, serde_json::json!({}))).await;
            }
        }
    });
    futures::future::join_all(writers).await;
}

/// PutRecord, retried while the stream is being resharded.
async fn put_retrying(rapids: &Rapids, envelope: &Envelope) {
    let data = aws_sdk_kinesis::primitives::Blob::new(serde_json::to_vec(envelope).unwrap());
    for _ in 0..100 {
        let put = rapids
            .client()
            .put_record()
            .stream_name(rapids.stream())
            .partition_key(envelope.stream_id.to_string())
            .data(data.clone())
            .send()
            .await;
        if put.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("PutRecord kept failing");
}

/// Effects applied, events (stream and version) and records (shard and sequence
/// number) they were applied for.
async fn effect_counts(pool: &PgPool) -> (i64, i64, i64) {
    sqlx::query_as(
        "select count(*), count(distinct (stream_id, version)), count(distinct (shard_id, sequence_number)) from effects",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn wait_for_effects(pool: &PgPool, distinct: i64) {
    tests::wait_for(Duration::from_secs(60), &format!("{distinct} events to be handled"), || async {
        (effect_counts(pool).await.1 >= distinct).then_some(())
    })
    .await;
}

async fn leases(pool: &PgPool) -> Vec<(String, Option<String>)> {
    sqlx::query_as(
        "select shard_id, owner from rapids.river_shards
         where river = 'test' and finished_at is null and lease_expires_at > now() order by shard_id",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn two_instances_share_the_shards_and_one_finishes_when_the_other_dies(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    effects_table(&pool).await;
    let rapids = tests::fresh_stream(4).await;
    let a = Instance::start(&pool, &rapids, "a", Recorder::default());
    let b = Instance::start(&pool, &rapids, "b", Recorder::default());
    tests::wait_for(Duration::from_secs(20), "the shards to be split two and two", || async {
        let held = leases(&pool).await;
        let of = |w: &str| held.iter().filter(|(_, owner)| owner.as_deref() == Some(w)).count();
        (held.len() == 4 && of("a") == 2 && of("b") == 2).then_some(())
    })
    .await;

    let streams: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
    put_streams(&rapids, &streams, 1..=5).await;
    wait_for_effects(&pool, 200).await;
    let (handled_a, handled_b) = (tests::counter_sum(&a.metrics.handled), tests::counter_sum(&b.metrics.handled));
    assert!(handled_a > 0 && handled_b > 0, "both read: a {handled_a}, b {handled_b}");

    // a dies without giving its leases up; b takes them over once they expire
    a.kill();
    put_streams(&rapids, &streams, 6..=10).await;
    wait_for_effects(&pool, 400).await;
    let held = leases(&pool).await;
    assert_eq!(held.len(), 4);
    assert!(held.iter().all(|(_, owner)| owner.as_deref() == Some("b")), "{held:?}");
    // a producer's retry may have put an event twice (at-least-once): then it is two
    // records, and each record's effect is applied once
    let records = tests::read_shards(&rapids).await.iter().map(Vec::len).sum::<usize>() as i64;
    let (applied, events, applied_records) = effect_counts(&pool).await;
    assert_eq!(events, 400, "every event's effect applied");
    assert_eq!((applied, applied_records), (records, records), "every record's effect applied exactly once");
    b.kill();
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_clean_stop_hands_the_shards_over_at_once_with_nothing_handled_twice(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    effects_table(&pool).await;
    let rapids = tests::fresh_stream(4).await;
    // leases that last two minutes and are renewed every minute: only the stopping
    // instance's notice can hand its shards over within seconds
    let slow = |worker: &str| RiverConfig {
        lease_duration: Duration::from_secs(120),
        renew_every: Duration::from_secs(60),
        ..config(worker)
    };
    let start = |worker: &str| {
        let stop = CancellationToken::new();
        let metrics = RiverMetrics::register(&prometheus::Registry::new()).unwrap();
        let river = River::new(slow(worker), pool.clone(), rapids.clone(), Recorder::default(), metrics);
        (tokio::spawn(river.run(stop.clone())), stop)
    };
    let (a, stop_a) = start("a");
    tests::wait_for(Duration::from_secs(20), "a to hold every shard", || async {
        let held = leases(&pool).await;
        (held.len() == 4 && held.iter().all(|(_, owner)| owner.as_deref() == Some("a"))).then_some(())
    })
    .await;
    let streams: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
    put_streams(&rapids, &streams, 1..=5).await;
    wait_for_effects(&pool, 200).await;
    let (b, stop_b) = start("b");
    // b steals one shard at its start (one a round), then waits for its next round
    tests::wait_for(Duration::from_secs(15), "b to take a shard at its start", || async {
        let held = leases(&pool).await;
        let of = |w: &str| held.iter().filter(|(_, owner)| owner.as_deref() == Some(w)).count();
        (of("a") == 3 && of("b") == 1).then_some(())
    })
    .await;

    // a stops cleanly while events arrive: b holds all four shards within seconds
    let load = tokio::spawn({
        let (rapids, streams) = (rapids.clone(), streams.clone());
        async move { put_streams(&rapids, &streams, 6..=10).await }
    });
    stop_a.cancel();
    a.await.unwrap();
    // within 15 s: long before b's next renewal (60 s) and a's leases' expiry
    tests::wait_for(Duration::from_secs(15), "b to take every shard", || async {
        let held = leases(&pool).await;
        (held.len() == 4 && held.iter().all(|(_, owner)| owner.as_deref() == Some("b"))).then_some(())
    })
    .await;
    load.await.unwrap();
    wait_for_effects(&pool, 400).await;
    // a checkpointed every page it handled: b handled nothing a had (one effect per
    // record, each record's once)
    let records = tests::read_shards(&rapids).await.iter().map(Vec::len).sum::<usize>() as i64;
    let (applied, events, applied_records) = effect_counts(&pool).await;
    assert_eq!(events, 400);
    assert_eq!((applied, applied_records), (records, records), "an effect applied twice");
    stop_b.cancel();
    b.await.unwrap();
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_reshard_during_a_load_loses_nothing_and_keeps_stream_order(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    effects_table(&pool).await;
    let rapids = tests::fresh_stream(2).await;
    let river = Instance::start(&pool, &rapids, "solo", Recorder::default());
    let streams: Vec<Uuid> = (0..40).map(|_| Uuid::now_v7()).collect();
    let load = {
        let (rapids, streams) = (rapids.clone(), streams.clone());
        tokio::spawn(async move { put_streams(&rapids, &streams, 1..=15).await })
    };
    // split the first shard while the load runs
    tests::wait_for(Duration::from_secs(20), "the load to start", || async {
        (effect_counts(&pool).await.1 >= 100).then_some(())
    })
    .await;
    let children = tests::reshard(&rapids).await;
    load.await.unwrap();
    wait_for_effects(&pool, 600).await;

    // each stream's events were first handled in version order
    let rows: Vec<(Uuid, i32)> =
        sqlx::query_as("select stream_id, version from effects order by id").fetch_all(&pool).await.unwrap();
    let mut seen: std::collections::HashMap<Uuid, i32> = Default::default();
    for (stream, version) in rows {
        let last = seen.entry(stream).or_insert(0);
        if version > *last {
            assert_eq!(version, *last + 1, "stream {stream} jumped from {last} to {version}");
            *last = version;
        }
    }
    assert_eq!(seen.len(), 40);
    assert!(seen.values().all(|v| *v == 15));
    // the parent is marked finished (when its reader reaches its end, which with
    // enhanced fan-out may come a push after its last event), and the children were read
    tests::wait_for(Duration::from_secs(30), "a closed parent marked finished", || async {
        let finished: Vec<String> = sqlx::query_scalar(
            "select shard_id from rapids.river_shards where river = 'test' and finished_at is not null",
        )
        .fetch_all(&pool)
        .await
        .unwrap();
        (!finished.is_empty()).then_some(())
    })
    .await;
    let read_children: i64 =
        sqlx::query_scalar("select count(distinct shard_id) from effects where shard_id = any($1)")
            .bind(&children)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(read_children > 0, "events after the split came from the children {children:?}");
    assert!(tests::counter_sum(&river.metrics.handled) >= 600);
    river.kill();
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_poison_event_is_parked_and_handled_when_an_operator_retries_it(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    poison_is_parked_and_retried(options, connect, Recorder::default()).await;
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_handler_outside_the_transaction_parks_poison_and_moves_on_alike(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    poison_is_parked_and_retried(options, connect, Recorder { outside_transaction: true, ..Recorder::default() }).await;
}

async fn poison_is_parked_and_retried(options: PgPoolOptions, connect: PgConnectOptions, handler: Recorder) {
    let pool = tests::pool(options, connect).await;
    effects_table(&pool).await;
    let rapids = tests::fresh_stream(1).await;
    let river = Instance::start(&pool, &rapids, "solo", handler.clone());
    let metrics = river.metrics.clone();
    let stream = Uuid::now_v7();
    tests::put_envelope(&rapids, &envelope(stream, 1, serde_json::json!({}))).await;
    tests::put_envelope(&rapids, &envelope(stream, 2, serde_json::json!({"poison": true}))).await;
    tests::put_envelope(&rapids, &envelope(stream, 3, serde_json::json!({}))).await;
    // a record that is not an envelope at all is parked at once
    rapids
        .client()
        .put_record()
        .stream_name(rapids.stream())
        .partition_key("garbage")
        .data(aws_sdk_kinesis::primitives::Blob::new(b"not json".to_vec()))
        .send()
        .await
        .unwrap();
    tests::put_envelope(&rapids, &envelope(stream, 4, serde_json::json!({}))).await;

    // the shard moves past the poison event
    wait_for_effects(&pool, 3).await;
    let versions: Vec<i32> =
        sqlx::query_scalar("select version from effects order by id").fetch_all(&pool).await.unwrap();
    assert_eq!(versions, [1, 3, 4]);
    let parked = rapids::river::dead_letter::list(&pool, Some("test")).await.unwrap();
    assert_eq!(parked.len(), 2, "{parked:?}");
    let poison = &parked[0];
    assert_eq!((poison.stream_id, poison.version, poison.attempts), (Some(stream), Some(2), 3));
    assert_eq!((poison.error.as_str(), poison.status.as_str()), ("cannot digest this", "parked"));
    assert!(parked[1].error.contains("not an event envelope"), "{:?}", parked[1]);
    assert_eq!(tests::counter_sum(&metrics.parked), 2);
    tests::wait_for(Duration::from_secs(10), "the dead-letter gauge", || async {
        (metrics.parked_now.with_label_values(&["test"]).get() == 2).then_some(())
    })
    .await;

    // fixed; the operator retries it with bankctl
    handler.cured.store(true, Ordering::Relaxed);
    let out = tokio::process::Command::new(tests::binary("bankctl"))
        .args(["retry-dead-letters", "--river", "test", "--id", &poison.id.to_string()])
        .env("DATABASE_URL", tests::database_url(&pool.connect_options()))
        .output()
        .await
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 dead letter(s) of river test marked for retry"));
    wait_for_effects(&pool, 4).await;
    let status: String = sqlx::query_scalar("select status from rapids.river_dead_letters where id = $1")
        .bind(poison.id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(status, "resolved");
    let open = rapids::river::dead_letter::list(&pool, Some("test")).await.unwrap();
    assert_eq!(open.len(), 1, "the garbage record stays parked");
    assert_eq!(effect_counts(&pool).await, (4, 4, 4));
    river.kill();
}
