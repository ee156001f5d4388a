//! The tailer: follows the event store's log and publishes every committed event to
//! the rapids (Kinesis), in order per stream, never losing one (duplicates allowed).
//!
//! * [`EventSource`]: where committed events come from, in commit order, with an
//!   acknowledgement that moves the source's position. Two implementations:
//!   [`wal::WalSource`] (logical decoding streamed from a replication slot, the default) and
//!   [`poll::PollSource`] (an `(xid, position)` cursor below the oldest running
//!   transaction, for a Postgres where logical decoding is not allowed).
//! * [`publish::Pipeline`] and [`publish::Publisher`]: PutRecords to Kinesis, several
//!   requests in flight, without reordering a stream.
//! * [`Tailer`]: the loop: read, publish, and only then acknowledge (in read order);
//!   reads ahead while requests are in flight; woken by the append's NOTIFY and the
//!   wal stream; one active instance per database (an advisory lock), others stand by.

pub mod poll;
pub mod publish;
pub mod replication;
pub mod wal;

use eventstore::envelope::RecordedEvent;
use eventstore::store::StoreError;
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use sqlx::postgres::PgListener;
use sqlx::{Connection, PgConnection, PgPool};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Committed events in commit order, and what acknowledges them.
#[derive(Debug, Default)]
pub struct SourceBatch<A> {
    pub events: Vec<RecordedEvent>,
    /// The position after these events; handed back to [`EventSource::ack`].
    pub ack: Option<A>,
}

/// Where committed events come from.
pub trait EventSource: Send {
    type Ack: Send;

    /// The next committed events (at most about `max`; whole transactions), after the
    /// previous read whether or not that was acknowledged yet (the tailer reads ahead
    /// while earlier events are being published). After [`EventSource::resume`],
    /// reading starts again at the acknowledged position.
    fn read(&mut self, max: usize) -> impl Future<Output = Result<SourceBatch<Self::Ack>, StoreError>> + Send;

    /// Called on becoming the active tailer: picks up the position where the previous
    /// active instance left it.
    fn resume(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Moves the position past a batch whose events (and every event read before
    /// them) Kinesis acknowledged; called in read order.
    fn ack(&mut self, ack: Self::Ack) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Resolves when the source itself knows of new events (the wal source's stream
    /// pushes them); the tailer also reads on the append's NOTIFY and every idle poll.
    /// Must be cancel-safe. The default never resolves.
    fn wait(&mut self) -> impl Future<Output = Result<(), StoreError>> + Send {
        std::future::pending()
    }

    /// Called when this instance stops being the active tailer (an error, shutdown):
    /// lets go of what a standby taking over needs (the wal source's slot).
    fn release(&mut self) {}
}

/// The tailer's metrics.
#[derive(Clone)]
pub struct TailerMetrics {
    pub published: IntCounter,
    pub batches: IntCounter,
    pub retries: IntCounter,
    /// Events read but not yet acknowledged by Kinesis.
    pub lag_events: IntGauge,
    /// Seconds from an event's commit (its `recorded_at`) to Kinesis's acknowledgement.
    pub lag_seconds: Histogram,
    /// PutRecords call durations.
    pub put_seconds: Histogram,
    pub leader: IntGauge,
}

impl TailerMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let published = IntCounter::new("tailer_events_published_total", "Events acknowledged by Kinesis")?;
        let batches = IntCounter::new("tailer_batches_total", "PutRecords requests that published events")?;
        let retries = IntCounter::new("tailer_publish_retries_total", "PutRecords retries (failed records or calls)")?;
        let lag_events = IntGauge::new("tailer_lag_events", "Events read and not yet acknowledged by Kinesis")?;
        let lag_seconds = Histogram::with_opts(
            HistogramOpts::new("tailer_publish_lag_seconds", "From an event's commit to Kinesis's acknowledgement")
                .buckets(rapids::LATENCY_BUCKETS.to_vec()),
        )?;
        let put_seconds = Histogram::with_opts(
            HistogramOpts::new("tailer_put_records_seconds", "PutRecords call durations")
                .buckets(rapids::LATENCY_BUCKETS.to_vec()),
        )?;
        let leader = IntGauge::new("tailer_is_leader", "1 while this instance is the active tailer")?;
        for m in [
            Box::new(published.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(batches.clone()),
            Box::new(retries.clone()),
            Box::new(lag_events.clone()),
            Box::new(lag_seconds.clone()),
            Box::new(put_seconds.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(m)?;
        }
        Ok(TailerMetrics { published, batches, retries, lag_events, lag_seconds, put_seconds, leader })
    }
}

/// Why tailing stopped.
#[derive(Debug, thiserror::Error)]
pub enum TailerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
}

impl From<sqlx::Error> for TailerError {
    fn from(e: sqlx::Error) -> Self {
        TailerError::Store(StoreError::Database(e))
    }
}

/// Tuning of the loop.
#[derive(Debug, Clone, Copy)]
pub struct TailerConfig {
    /// Most events read and not yet acknowledged by Kinesis.
    pub batch_size: usize,
    /// Read again after this long even without a NOTIFY (a safety net, and for the
    /// poll source, whose events become readable when older transactions end).
    pub idle_poll: Duration,
    /// PutRecords requests in flight at once (a stream is in one of them at most).
    pub in_flight: usize,
}

impl Default for TailerConfig {
    fn default() -> Self {
        TailerConfig { batch_size: 2000, idle_poll: Duration::from_millis(250), in_flight: 2 }
    }
}

/// The channel the tailer NOTIFYs after each batch Kinesis acknowledged: rivers on
/// the same database read their shards at once instead of at their next poll.
pub use rapids::PUBLISHED_CHANNEL;

/// The advisory lock key of the active tailer ("rapids-tailer").
const LEADER_LOCK: i64 = eventstore::identity::TAILER_LEADER_LOCK;

/// The tailer: one source, one publisher.
pub struct Tailer<S: EventSource> {
    pub pool: PgPool,
    pub source: S,
    pub publisher: publish::Publisher,
    pub metrics: TailerMetrics,
    pub config: TailerConfig,
}

impl<S: EventSource> Tailer<S> {
    /// Waits to be the leader, then tails until `shutdown` (waiting up to 5 s for the
    /// requests in flight). Database and Kinesis faults are retried with backoff,
    /// never fatal.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), TailerError> {
        // the lock lives on a connection of its own: if this process dies, the
        // connection drops and Postgres releases the lock for a standby at once; the
        // server probes it, so a half-open connection does not keep the lock for hours
        let lock_options = self.pool.connect_options().as_ref().clone().options([
            ("tcp_keepalives_idle", "5"),
            ("tcp_keepalives_interval", "2"),
            ("tcp_keepalives_count", "3"),
        ]);
        // failures in a row: the pause before the next attempt grows with them
        let mut failures = 0u32;
        let pause = |failures: u32| Duration::from_millis(250 * u64::from(failures.clamp(1, 9)));
        loop {
            let attempt = async {
                let mut lock = PgConnection::connect_with(&lock_options).await?;
                let acquired: bool = sqlx::query_scalar("select pg_try_advisory_lock($1)")
                    .bind(LEADER_LOCK)
                    .fetch_one(&mut lock)
                    .await?;
                Ok::<_, sqlx::Error>(acquired.then_some(lock))
            };
            let lock = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                lock = attempt => lock,
            };
            let mut lock = match lock {
                Ok(Some(lock)) => lock,
                Ok(None) => {
                    // another instance is active: stand by
                    failures = 0;
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(Duration::from_millis(250)) => continue,
                    }
                }
                Err(error) => {
                    failures += 1;
                    tracing::warn!(%error, "cannot reach the database; trying again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(pause(failures)) => continue,
                    }
                }
            };
            tracing::info!("this tailer is now the active one");
            self.metrics.leader.set(1);
            let leading_since = std::time::Instant::now();
            let outcome = self.lead(&mut lock, &shutdown).await;
            self.source.release();
            self.metrics.leader.set(0);
            let _ = lock.close().await;
            match outcome {
                Ok(()) => return Ok(()),
                Err(error) => {
                    // a while of leading ends a run of failures
                    if leading_since.elapsed() > Duration::from_secs(10) {
                        failures = 0;
                    }
                    failures += 1;
                    tracing::warn!(%error, "tailing stopped; trying again");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(pause(failures)) => {}
                    }
                }
            }
        }
    }

    async fn lead(&mut self, lock: &mut PgConnection, shutdown: &CancellationToken) -> Result<(), TailerError> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen("es_events").await?;
        self.source.resume().await?;
        let mut puts = FuturesUnordered::new();
        let outcome = self.pump(lock, shutdown, &mut listener, &mut puts).await;
        if outcome.is_err() && !puts.is_empty() {
            // a stream must not have a record of this instance still in flight when it
            // (or a standby) publishes that stream again from the acknowledged position
            let drained = async { while puts.next().await.is_some() {} };
            let _ = tokio::time::timeout(Duration::from_secs(5), drained).await;
        }
        outcome
    }

    /// The loop of [`Tailer::lead`]: reads, sends up to `in_flight` requests (kept in
    /// `puts`), acknowledges.
    async fn pump(
        &mut self,
        lock: &mut PgConnection,
        shutdown: &CancellationToken,
        listener: &mut PgListener,
        puts: &mut FuturesUnordered<BoxFuture<'static, publish::PutOutcome>>,
    ) -> Result<(), TailerError> {
        // the store's identity goes into every envelope (rivers tell another store's
        // events by it)
        let store = eventstore::identity::identity(&mut *lock).await?;
        let mut pipeline = publish::Pipeline::new(self.publisher.region(), Some(store));
        let in_flight = self.config.in_flight.max(1);
        // something may have been committed: read
        let mut read_now = true;
        let mut next_poll = Instant::now() + self.config.idle_poll;
        let mut failures = 0u32;
        let mut retry_at: Option<Instant> = None;
        // on shutdown: nothing more is read or sent; the requests in flight are waited
        // for (briefly), so what Kinesis has is acknowledged and not published again
        let mut stop_by: Option<Instant> = None;
        loop {
            if stop_by.is_some() && puts.is_empty() {
                return Ok(());
            }
            if retry_at.is_none() && stop_by.is_none() {
                while puts.len() < in_flight {
                    let Some(request) = pipeline.next_request() else { break };
                    puts.push(Box::pin(self.publisher.put(request)));
                }
            }
            self.metrics.lag_events.set(pipeline.len() as i64);
            // read when a request could go out with what is read (reading more while
            // every request slot is taken would only make reads smaller)
            let room = self.config.batch_size.saturating_sub(pipeline.len());
            if read_now && stop_by.is_none() && room > 0 && !pipeline.holds_bare_ack() && puts.len() < in_flight {
                // still the leader? (a lost lock connection means a standby may be
                // active); asked while the batch is read, and nothing of the batch is
                // published before the answer
                let leader = tokio::time::timeout(Duration::from_secs(5), sqlx::query("select 1").execute(&mut *lock));
                let (checked, batch) = tokio::join!(leader, self.source.read(room));
                match checked {
                    Ok(checked) => {
                        checked?;
                    }
                    Err(_) => {
                        return Err(TailerError::Store(StoreError::Unavailable(
                            "the lock connection does not answer".into(),
                        )));
                    }
                }
                let batch = batch?;
                // a full batch: more may be waiting
                read_now = batch.events.len() >= room;
                next_poll = Instant::now() + self.config.idle_poll;
                pipeline.push(&batch.events, batch.ack)?;
                // an empty batch may still move the position (e.g. a finished backfill)
                self.settle(&mut pipeline, lock, false).await?;
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled(), if stop_by.is_none() => {
                    stop_by = Some(Instant::now() + Duration::from_secs(5));
                }
                _ = tokio::time::sleep_until(stop_by.unwrap_or(next_poll)), if stop_by.is_some() => return Ok(()),
                Some(outcome) = puts.next() => {
                    self.metrics.put_seconds.observe(outcome.elapsed.as_secs_f64());
                    let recorded = pipeline.complete(&outcome);
                    if let Some(error) = &outcome.error {
                        tracing::warn!(%error, "PutRecords failed");
                    }
                    if outcome.any_failed() {
                        self.metrics.retries.inc();
                        failures = (failures + 1).min(10);
                        retry_at = Some(Instant::now() + Duration::from_millis(20 * 2u64.pow(failures.min(6))));
                    } else {
                        failures = 0;
                    }
                    if !recorded.is_empty() {
                        let now = chrono::Utc::now();
                        for at in &recorded {
                            let lag = (now - *at).num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
                            self.metrics.lag_seconds.observe(lag);
                        }
                        self.metrics.published.inc_by(recorded.len() as u64);
                        self.metrics.batches.inc();
                        self.settle(&mut pipeline, lock, true).await?;
                    }
                }
                _ = tokio::time::sleep_until(retry_at.unwrap_or(next_poll)), if retry_at.is_some() => retry_at = None,
                note = listener.recv(), if stop_by.is_none() => {
                    note?;
                    // one read covers every append so far: drop the notifications already here
                    while listener.next_buffered().is_some() {}
                    read_now = true;
                }
                waited = self.source.wait(), if !read_now && stop_by.is_none() => {
                    waited?;
                    read_now = true;
                }
                _ = tokio::time::sleep_until(next_poll), if stop_by.is_none() => {
                    read_now = true;
                    next_poll = Instant::now() + self.config.idle_poll;
                }
            }
        }
    }

    /// Acknowledges, in order, the source positions every record before which Kinesis
    /// acknowledged; with `published`, tells the rivers' readers (at the same time).
    async fn settle(
        &mut self,
        pipeline: &mut publish::Pipeline<S::Ack>,
        lock: &mut PgConnection,
        published: bool,
    ) -> Result<(), TailerError> {
        let ready = pipeline.settle();
        // the rivers' readers may read on while the position is stored
        let notify = async {
            if published {
                sqlx::query("select pg_notify($1, '')").bind(PUBLISHED_CHANNEL).execute(&mut *lock).await?;
            }
            Ok::<_, sqlx::Error>(())
        };
        let source = &mut self.source;
        let acked = async move {
            for ack in ready {
                source.ack(ack).await?;
            }
            Ok::<_, StoreError>(())
        };
        let (acked, notified) = tokio::join!(acked, notify);
        acked?;
        notified?;
        Ok(())
    }
}
