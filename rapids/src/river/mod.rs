//! Rivers: durable subscriptions to the rapids, like the Kinesis Client Library.
//!
//! A river is a name plus a topic filter over event types. Every instance of a service
//! runs the river with the same name; between them they read every shard of the
//! stream ([`lease`]: per-shard leases in Postgres that expire unless renewed, split
//! evenly, a closed shard's children read only after it is finished). A shard's
//! reader hands the matching events of each `GetRecords` page, in shard order, to the
//! [`Handler`] inside a Postgres transaction and moves the shard's checkpoint in that
//! same transaction, only where the lease is still its own. So a handler writing to
//! Postgres through that transaction applies each event's effects exactly once; one
//! writing elsewhere sees each event at least once and must be idempotent (the event
//! carries its stream id and version).
//!
//! A failing handler is retried with backoff. A [`HandlerError::Transient`] error (the
//! database is away) is retried until it passes; a permanent one a bounded number of
//! times, each event on its own, after which the event is parked in the dead-letter
//! table ([`dead_letter`]) and the shard moves on. An operator retries parked events
//! with `bankctl retry-dead-letters`; the river's instances pick them up.

pub mod dead_letter;
pub mod lease;
mod reader;

pub use reader::UNSEEN_GRACE;

use crate::LATENCY_BUCKETS;
use crate::kinesis::{Rapids, describe};
use eventstore::envelope::Envelope;
use lease::Leases;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry};
use sqlx::{PgConnection, PgPool};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// An event handed to a river's handler.
#[derive(Debug, Clone)]
pub struct RiverEvent {
    pub shard_id: Arc<str>,
    pub sequence_number: String,
    pub envelope: Envelope,
    /// The delivery's span ([`RiverEvent::span`]), open until the last copy of the
    /// event is dropped (its handling and checkpoint done).
    span: tracing::Span,
}

impl RiverEvent {
    /// An event read from `shard_id` at `sequence_number`, with its delivery's span
    /// (a child of the caller's span; in the trace, of the envelope's `traceparent`).
    pub fn new(shard_id: Arc<str>, sequence_number: String, envelope: Envelope) -> Self {
        let span = {
            let e = &envelope;
            tracing::info_span!(
                "delivery",
                otel.name = format!("deliver {}", e.event_type),
                otel.kind = "consumer",
                event_type = %e.event_type,
                stream_id = %e.stream_id,
                version = e.version,
                event_id = %e.event_id,
                correlation_id = e.correlation_id.as_deref(),
                causation_id = e.causation_id.as_deref(),
            )
        };
        eventstore::trace::continue_from(&span, envelope.traceparent.as_deref());
        RiverEvent { shard_id, sequence_number, envelope, span }
    }

    /// Whether the event comes from an aggregate of this stream type: consumers of the
    /// bank's events act only on those (a task's refusal, say, is `transfer.*` too but
    /// comes from a stream of its own).
    pub fn from_aggregate(&self, stream_type: &str) -> bool {
        self.envelope.stream_type == stream_type
    }

    /// The context of a command this event causes: caused by this event, run by
    /// `actor` (a service), in this event's business flow: its correlation id is kept
    /// (so a transfer's events all carry the id of the request that created it), and
    /// `correlation` (a saga's id) stands in only when the event has none.
    pub fn causes(&self, correlation: uuid::Uuid, actor: &str) -> eventstore::CommandContext {
        eventstore::CommandContext {
            metadata: eventstore::EventMetadata {
                correlation_id: Some(self.envelope.correlation_id.clone().unwrap_or_else(|| correlation.to_string())),
                causation_id: Some(self.envelope.event_id.to_string()),
                request_id: None,
                actor: actor.into(),
                traceparent: eventstore::trace::traceparent(&self.span),
                ..eventstore::EventMetadata::default()
            },
            idempotency: None,
            expected_version: None,
        }
    }

    /// The span a delivery of this event runs in (the handler's work on it, its
    /// retries, its parking, the `delivered` line): the envelope's ids, so that one
    /// grep of JSON logs follows a flow across services. It sits inside the reader's
    /// [`river_span`] (river and shard); exported as a trace's span, it continues the
    /// envelope's `traceparent`.
    pub fn span(&self) -> tracing::Span {
        self.span.clone()
    }
}

/// The span a shard's reader runs in; deliveries are its children.
pub(crate) fn river_span(river: &str, shard: &str) -> tracing::Span {
    tracing::info_span!("river", river = %river, shard = %shard)
}

/// Whether the current span is a delivery's ([`RiverEvent::span`]): the reader opens
/// one when it hands a single event over (retries, parking), and [`by_stream`] then
/// does not open a second.
fn in_delivery() -> bool {
    tracing::Span::current().metadata().is_some_and(|m| m.name() == "delivery" && m.target() == module_path!())
}

/// Why a handler did not handle an event.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HandlerError {
    /// Will pass when something outside comes back (the database): retried until it does.
    #[error("{0}")]
    Transient(String),
    /// Will fail again as it is: retried a bounded number of times, then parked.
    #[error("{0}")]
    Permanent(String),
}

impl<E: std::fmt::Display> From<eventstore::ExecuteError<E>> for HandlerError {
    /// Lost races and an unreachable database pass; a refused command, corrupt data or
    /// a database error that may have been the statement's own fault do not.
    fn from(e: eventstore::ExecuteError<E>) -> Self {
        use eventstore::StoreError;
        match &e {
            eventstore::ExecuteError::Conflict { .. }
            | eventstore::ExecuteError::Store(
                StoreError::Unavailable(_) | StoreError::Batch(_) | StoreError::Conflict { .. },
            ) => HandlerError::Transient(e.to_string()),
            eventstore::ExecuteError::Store(StoreError::Database(db)) if is_transient(db) => {
                HandlerError::Transient(e.to_string())
            }
            _ => HandlerError::Permanent(e.to_string()),
        }
    }
}

/// Database errors that say nothing about the statement: the connection or pool.
pub fn is_transient(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
    ) || e.as_database_error().and_then(|d| d.code()).is_some_and(|code| {
        // serialization failure, deadlock, lock timeout, admin shutdown, cannot connect
        // now, too many connections
        matches!(&*code, "40001" | "40P01" | "55P03" | "57P01" | "57P03" | "53300")
    })
}

/// Runs `step` on each event; events of one stream in order, streams concurrently
/// (at most `limit` at a time). Every stream runs to its end; the first error is returned.
/// Each step runs in its event's delivery span ([`RiverEvent::span`]).
pub async fn by_stream<'a, F, Fut>(events: &'a [RiverEvent], limit: usize, step: F) -> Result<(), HandlerError>
where
    F: Fn(&'a RiverEvent) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    use futures::StreamExt;
    let mut streams: Vec<Vec<&'a RiverEvent>> = Vec::new();
    let mut index: HashMap<uuid::Uuid, usize> = HashMap::new();
    for event in events {
        let at = *index.entry(event.envelope.stream_id).or_insert_with(|| {
            streams.push(Vec::new());
            streams.len() - 1
        });
        streams[at].push(event);
    }
    let mut waiting = streams.into_iter();
    let mut running = futures::stream::FuturesUnordered::new();
    let mut outcome = Ok(());
    loop {
        while running.len() < limit.max(1) {
            match waiting.next() {
                Some(stream) => running.push(in_order(stream, &step)),
                None => break,
            }
        }
        match running.next().await {
            Some(Err(e)) if outcome.is_ok() => outcome = Err(e),
            Some(_) => {}
            None => return outcome,
        }
    }
}

async fn in_order<'a, F, Fut>(events: Vec<&'a RiverEvent>, step: &F) -> Result<(), HandlerError>
where
    F: Fn(&'a RiverEvent) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    use tracing::Instrument;
    for event in events {
        if in_delivery() {
            step(event).await?;
        } else {
            step(event).instrument(event.span()).await?;
        }
    }
    Ok(())
}

/// What a river does with its events.
pub trait Handler: Send + Sync + 'static {
    /// Handles events of one shard, in shard order. Writes made through `tx` commit
    /// together with the shard's checkpoint, or not at all.
    fn handle(
        &self,
        tx: &mut PgConnection,
        events: &[RiverEvent],
    ) -> impl Future<Output = Result<(), HandlerError>> + Send;

    /// False for a handler that writes nothing through `tx` (a saga whose steps are
    /// commands, idempotent on their own): it gets a connection outside any
    /// transaction, and the checkpoint then moves in a statement of its own. That
    /// saves two round trips per page and never leaves a transaction open (and
    /// holding back the `poll` tailer) while the service is busy elsewhere.
    fn transactional(&self) -> bool {
        true
    }
}

/// One subscription of a river: an event type pattern (`transfer.*`, a prefix;
/// `account.opened`, one type; `*`) and tag selectors, all of which an event's tags
/// must meet: `vip` (the tag is there), `segment=road-warrior` (it has that value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection {
    pub pattern: String,
    pub tags: Vec<String>,
}

impl Selection {
    /// A subscription to `pattern` whatever the tags.
    pub fn any_tags(pattern: &str) -> Self {
        Selection { pattern: pattern.into(), tags: Vec::new() }
    }

    pub fn matches(&self, event_type: &str, tags: &serde_json::Map<String, serde_json::Value>) -> bool {
        pattern_matches(&self.pattern, event_type) && tags_match(&self.tags, tags)
    }
}

/// Whether `event_type` falls under `pattern` (`entity.*`, a type, or `*`).
pub fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => event_type.starts_with(prefix),
        None => pattern == event_type,
    }
}

/// Whether an event's `tags` meet every selector: `key` (the tag is there, whatever its
/// value) or `key=value` (its value is that string).
pub fn tags_match(selectors: &[String], tags: &serde_json::Map<String, serde_json::Value>) -> bool {
    selectors.iter().all(|selector| match selector.split_once('=') {
        Some((key, value)) => tags.get(key).and_then(serde_json::Value::as_str) == Some(value),
        None => tags.contains_key(selector.as_str()),
    })
}

/// What a river wants: its subscriptions ([`Selection`]). Clones share them, so a
/// running river follows [`TopicFilter::replace`].
#[derive(Debug, Clone, Default)]
pub struct TopicFilter(Arc<std::sync::RwLock<Vec<Selection>>>);

impl TopicFilter {
    /// Subscriptions to `patterns`, whatever the tags.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Self {
        let selections = patterns.iter().map(|p| Selection::any_tags(p.as_ref())).collect();
        TopicFilter(Arc::new(std::sync::RwLock::new(selections)))
    }

    /// Whether an event of `event_type` with `tags` is wanted.
    pub fn matches(&self, event_type: &str, tags: &serde_json::Map<String, serde_json::Value>) -> bool {
        let selections = self.0.read().unwrap_or_else(|p| p.into_inner());
        selections.iter().any(|s| s.matches(event_type, tags))
    }

    /// The patterns, in order.
    pub fn patterns(&self) -> Vec<String> {
        self.selections().into_iter().map(|s| s.pattern).collect()
    }

    /// The subscriptions, in order.
    pub fn selections(&self) -> Vec<Selection> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the subscriptions; the readers see the change at their next page.
    pub fn replace(&self, selections: Vec<Selection>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = selections;
    }
}

/// How a river reads its shards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadMode {
    /// GetRecords, paced within the deployment's budget.
    #[default]
    Poll,
    /// Enhanced fan-out: the river is a registered stream consumer and each shard it
    /// leases is pushed to it (SubscribeToShard, HTTP/2), re-subscribed every few minutes.
    Efo,
}

/// Where a river's topics come from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Subscriptions {
    /// From the code only (tests).
    #[default]
    Fixed,
    /// From the code: a built-in river the bank depends on. It is registered in
    /// `rapids.rivers` as managed with its topics, so operators see them, and the
    /// control plane refuses to change them.
    Managed,
    /// From the registry (`rapids.river_subscriptions`), followed while it runs: a
    /// change made at runtime reaches the readers within `renew_every`. The river
    /// registers itself as served (`rapids.rivers.served`), so the event bus runs no
    /// queue of the same name beside it.
    Registry,
}

/// The event types only the bank's aggregates emit; the event bus refuses them. A
/// river acts on one only when the event store holds it (same id, stream and
/// version): an envelope put on the stream by anyone else is ignored and counted.
pub const RESERVED_PREFIXES: [&str; 2] = ["account.", "transfer."];

/// Whether `event_type` is one only the bank's aggregates emit.
pub fn is_reserved(event_type: &str) -> bool {
    RESERVED_PREFIXES.iter().any(|p| event_type.starts_with(p))
}

/// A river's name, filter and tuning.
#[derive(Debug, Clone)]
pub struct RiverConfig {
    pub name: String,
    pub topics: TopicFilter,
    /// Whether the topics are the code's or the registry's.
    pub subscriptions: Subscriptions,
    /// This instance's name in the lease table (unique per process).
    pub worker: String,
    /// A lease not renewed for this long may be taken by another instance.
    pub lease_duration: Duration,
    /// How often leases are renewed and rebalanced.
    pub renew_every: Duration,
    /// How often the shard list is read from Kinesis (new shards after a reshard).
    pub shard_sync_every: Duration,
    /// Wait between `GetRecords` calls on a shard with nothing new.
    pub idle_poll: Duration,
    /// Least time between two `GetRecords` calls on one shard, so that a busy shard's
    /// pages carry several records (Kinesis itself allows 5 reads a second per shard,
    /// shared by every consumer: on AWS use 200 ms times the number of rivers).
    pub read_interval: Duration,
    /// GetRecords calls a second on one shard that the whole deployment may make,
    /// shared by every river reading the stream (AWS allows 5); `None`: no budget.
    /// Each river then reads a shard at most every `rivers / budget` seconds, the
    /// rivers counted from the lease table at every lease renewal.
    pub get_records_budget: Option<f64>,
    /// GetRecords or enhanced fan-out.
    pub read_mode: ReadMode,
    /// Commit the handler's transaction without waiting for its WAL flush. A crash may
    /// then lose the last commits, handler writes and checkpoint together, and the
    /// river handles those events again: the delivery guarantee stays the same, and
    /// no commit waits for a disk flush.
    pub async_commit: bool,
    /// Most records per `GetRecords` call.
    pub batch_size: i32,
    /// Attempts on an event with a permanent error before it is parked.
    pub max_attempts: u32,
    /// The first pause between attempts; it doubles up to 2 s.
    pub retry_backoff: Duration,
}

impl RiverConfig {
    pub fn new(name: &str, topics: TopicFilter) -> Self {
        RiverConfig {
            name: name.into(),
            topics,
            subscriptions: Subscriptions::Fixed,
            worker: format!("{name}-{}", uuid::Uuid::now_v7()),
            lease_duration: Duration::from_secs(10),
            renew_every: Duration::from_secs(2),
            shard_sync_every: Duration::from_secs(10),
            idle_poll: Duration::from_millis(250),
            read_interval: Duration::from_millis(20),
            get_records_budget: None,
            read_mode: ReadMode::Poll,
            async_commit: true,
            batch_size: 1000,
            max_attempts: 5,
            retry_backoff: Duration::from_millis(100),
        }
    }
}

/// The rivers' metrics; register once per process, shared by its rivers.
#[derive(Clone)]
pub struct RiverMetrics {
    pub handled: IntCounterVec,
    pub parked: IntCounterVec,
    pub failures: IntCounterVec,
    pub parked_now: IntGaugeVec,
    pub millis_behind: IntGaugeVec,
    pub leases: IntGaugeVec,
    pub reads: IntCounterVec,
    /// GetRecords call durations.
    pub read_seconds: HistogramVec,
    /// From a record's arrival on the stream to its event's checkpoint commit.
    pub delivery_seconds: HistogramVec,
    /// Envelopes of a reserved type that the event store does not hold as they are:
    /// ignored, or parked when their id is not held at all.
    pub forged: IntCounterVec,
    /// Looks repeated for an envelope's event id not yet visible in the store.
    pub unseen: IntCounterVec,
    /// Envelopes of another event store whose event this store does not hold: skipped.
    pub other_store: IntCounterVec,
}

impl RiverMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let handled = IntCounterVec::new(
            Opts::new("river_events_handled_total", "Events handed to the handler and checkpointed"),
            &["river", "shard"],
        )?;
        let parked = IntCounterVec::new(
            Opts::new("river_events_parked_total", "Events parked in the dead-letter table"),
            &["river", "shard"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new("river_handler_failures_total", "Handler calls that failed (transient or permanent)"),
            &["river", "kind"],
        )?;
        let parked_now = IntGaugeVec::new(
            Opts::new("river_dead_letters", "Parked events not yet resolved (all instances)"),
            &["river"],
        )?;
        let millis_behind = IntGaugeVec::new(
            Opts::new("river_millis_behind_latest", "MillisBehindLatest of the shard's last GetRecords"),
            &["river", "shard"],
        )?;
        let leases = IntGaugeVec::new(Opts::new("river_leases_held", "Shards this instance reads"), &["river"])?;
        let reads = IntCounterVec::new(
            Opts::new("river_get_records_total", "GetRecords calls (empty pages included)"),
            &["river", "shard"],
        )?;
        let read_seconds = HistogramVec::new(
            HistogramOpts::new("river_get_records_seconds", "GetRecords call durations")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["river"],
        )?;
        let delivery_seconds = HistogramVec::new(
            HistogramOpts::new(
                "river_delivery_seconds",
                "From a record's arrival on the stream to the commit of its event's checkpoint",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["river"],
        )?;
        let forged = IntCounterVec::new(
            Opts::new(
                "river_events_forged_total",
                "Envelopes of a reserved type (account.*, transfer.*) not in the event store as they are: ignored (the id held with other fields) or parked (the id not held within 5 s)",
            ),
            &["river"],
        )?;
        let unseen = IntCounterVec::new(
            Opts::new(
                "river_events_unseen_total",
                "Looks repeated for an envelope's event id not (yet) visible in the event store",
            ),
            &["river"],
        )?;
        let other_store = IntCounterVec::new(
            Opts::new(
                "river_events_other_store_total",
                "Envelopes recorded by another event store (the stream outlived the database: a fresh one, a restore) whose event this store does not hold: skipped at once",
            ),
            &["river"],
        )?;
        for m in [
            Box::new(forged.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(other_store.clone()),
            Box::new(unseen.clone()),
            Box::new(handled.clone()),
            Box::new(parked.clone()),
            Box::new(failures.clone()),
            Box::new(parked_now.clone()),
            Box::new(millis_behind.clone()),
            Box::new(leases.clone()),
            Box::new(reads.clone()),
            Box::new(read_seconds.clone()),
            Box::new(delivery_seconds.clone()),
        ] {
            registry.register(m)?;
        }
        Ok(RiverMetrics {
            handled,
            parked,
            failures,
            parked_now,
            millis_behind,
            leases,
            reads,
            read_seconds,
            delivery_seconds,
            forged,
            unseen,
            other_store,
        })
    }
}

/// What the coordinator and the shard readers of one river share.
struct Shared<H> {
    config: RiverConfig,
    pool: PgPool,
    rapids: Rapids,
    handler: H,
    leases: Leases,
    metrics: RiverMetrics,
    shard_finished: tokio::sync::Notify,
    /// Another instance gave its leases up (a clean stop): balance now.
    leases_released: tokio::sync::Notify,
    /// Bumped when the tailer says it published (readers waiting on an idle shard wake).
    published: tokio::sync::watch::Sender<u64>,
    /// The least time between two reads of one shard now (ms): `read_interval`, or
    /// longer to keep within the GetRecords budget.
    read_interval_ms: std::sync::atomic::AtomicU64,
    /// The river's consumer ARN, once registered (enhanced fan-out).
    consumer: tokio::sync::OnceCell<String>,
    /// The event store's identity (`es.store`), once read (read again when an
    /// envelope names another).
    store: std::sync::Mutex<Option<uuid::Uuid>>,
}

impl<H> Shared<H> {
    pub(crate) fn read_interval(&self) -> Duration {
        Duration::from_millis(self.read_interval_ms.load(std::sync::atomic::Ordering::Relaxed))
    }
}

/// One instance of a river.
pub struct River<H: Handler> {
    shared: Arc<Shared<H>>,
}

struct Reading {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl<H: Handler> River<H> {
    pub fn new(config: RiverConfig, pool: PgPool, rapids: Rapids, handler: H, metrics: RiverMetrics) -> Self {
        let leases = Leases::new(pool.clone(), &config.name, &config.worker, config.lease_duration);
        River {
            shared: Arc::new(Shared {
                config,
                pool,
                rapids,
                handler,
                leases,
                metrics,
                shard_finished: Default::default(),
                leases_released: Default::default(),
                published: tokio::sync::watch::Sender::new(0),
                read_interval_ms: std::sync::atomic::AtomicU64::new(0),
                consumer: tokio::sync::OnceCell::new(),
                store: Default::default(),
            }),
        }
    }

    /// Runs until `shutdown`: keeps leases, starts and stops shard readers, retries
    /// dead letters an operator asked for. On shutdown it gives its leases up.
    pub async fn run(self, shutdown: CancellationToken) {
        let shared = self.shared;
        let name = shared.config.name.clone();
        let mut readers: HashMap<String, Reading> = HashMap::new();
        let mut stopping: Vec<(String, JoinHandle<()>)> = Vec::new();
        let mut last_sync: Option<tokio::time::Instant> = None;
        let mut registered = false;
        tracing::info!(river = %name, worker = %shared.leases.worker(), "river started");
        let listener = tokio::spawn(listen_for_publishes(shared.clone(), shutdown.clone()));
        loop {
            if let Err(e) = pace(&shared).await {
                tracing::warn!(river = %name, error = %e, "cannot count the rivers for the GetRecords budget");
            }
            // a managed river registers its topics once; a registry river follows its
            // subscriptions every round
            if !(registered && shared.config.subscriptions == Subscriptions::Managed) {
                match sync_subscriptions(&shared).await {
                    Ok(()) => registered = true,
                    Err(e) => {
                        tracing::warn!(river = %name, error = %e, "cannot sync the river's subscriptions; retrying")
                    }
                }
            }
            if last_sync.is_none_or(|at| at.elapsed() >= shared.config.shard_sync_every) {
                match sync_shards(&shared).await {
                    Ok(()) => last_sync = Some(tokio::time::Instant::now()),
                    Err(e) => tracing::warn!(river = %name, error = %e, "cannot list the shards; retrying"),
                }
            }
            match balance(&shared).await {
                Ok(held) => {
                    let ended = readers.extract_if(|shard, r| !held.contains(shard) || r.task.is_finished());
                    for (shard, reading) in ended.collect::<Vec<_>>() {
                        reading.cancel.cancel();
                        stopping.push((shard, reading.task));
                    }
                    stopping.retain(|(_, task)| !task.is_finished());
                    for shard in held {
                        // a cancelled reader of this shard may still be in a transaction
                        if stopping.iter().any(|(s, _)| *s == shard) {
                            continue;
                        }
                        readers.entry(shard.clone()).or_insert_with(|| {
                            let cancel = shutdown.child_token();
                            let task = tokio::spawn(reader::read(shared.clone(), shard, cancel.clone()));
                            Reading { cancel, task }
                        });
                    }
                    shared.metrics.leases.with_label_values(&[&name]).set(readers.len() as i64);
                    let lags: Vec<(String, i64)> = readers
                        .keys()
                        .map(|shard| {
                            (shard.clone(), shared.metrics.millis_behind.with_label_values(&[&name, shard]).get())
                        })
                        .collect();
                    if let Err(e) = shared.leases.report_lag(&lags).await {
                        tracing::warn!(river = %name, error = %e, "cannot report the shards' lag");
                    }
                }
                Err(e) => tracing::warn!(river = %name, error = %e, "cannot renew the leases; retrying"),
            }
            if let Err(e) = retry_dead_letters(&shared).await {
                tracing::warn!(river = %name, error = %e, "cannot retry dead letters");
            }
            if let Ok(open) = dead_letter::open_count(&shared.pool, &name).await {
                shared.metrics.parked_now.with_label_values(&[&name]).set(open);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(shared.config.renew_every) => {}
                // a finished shard frees its children: list and balance at once
                _ = shared.shard_finished.notified() => last_sync = None,
                // another instance stopped cleanly: take its shards at once
                _ = shared.leases_released.notified() => {}
            }
        }
        for reading in readers.values() {
            reading.cancel.cancel();
        }
        for (_, reading) in readers {
            let _ = reading.task.await;
        }
        for (_, task) in stopping {
            let _ = task.await;
        }
        let _ = listener.await;
        if let Err(e) = shared.leases.release_all().await {
            tracing::warn!(river = %name, error = %e, "cannot release the leases; they will expire");
        }
        tracing::info!(river = %name, "river stopped");
    }
}

/// Sets how often a shard may be read: within the deployment's GetRecords budget,
/// shared by every river holding leases on the stream (itself included).
async fn pace<H: Handler>(shared: &Shared<H>) -> sqlx::Result<()> {
    let floor = shared.config.read_interval.as_millis() as u64;
    let interval = match shared.config.get_records_budget.filter(|b| *b > 0.0) {
        None => floor,
        Some(budget) => {
            let rivers: i64 = sqlx::query_scalar(
                "select count(distinct river) from rapids.river_shards
                 where river = $1 or (owner is not null and lease_expires_at > now())",
            )
            .bind(&shared.config.name)
            .fetch_one(&shared.pool)
            .await?;
            floor.max((rivers.max(1) as f64 * 1000.0 / budget).ceil() as u64)
        }
    };
    shared.read_interval_ms.store(interval, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// Registers a managed river's topics, or follows a registry river's subscriptions.
async fn sync_subscriptions<H: Handler>(shared: &Shared<H>) -> sqlx::Result<()> {
    let config = &shared.config;
    match config.subscriptions {
        Subscriptions::Fixed => Ok(()),
        Subscriptions::Managed => {
            let mut tx = shared.pool.begin().await?;
            sqlx::query(
                "insert into rapids.rivers (name, managed) values ($1, true)
                 on conflict (name) do update set managed = true",
            )
            .bind(&config.name)
            .execute(&mut *tx)
            .await?;
            let patterns = config.topics.patterns();
            sqlx::query("delete from rapids.river_subscriptions where river = $1 and pattern <> all($2)")
                .bind(&config.name)
                .bind(&patterns)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "insert into rapids.river_subscriptions (river, pattern, created_by)
                 select $1, p, $1 from unnest($2::text[]) p on conflict do nothing",
            )
            .bind(&config.name)
            .bind(&patterns)
            .execute(&mut *tx)
            .await?;
            tx.commit().await
        }
        Subscriptions::Registry => {
            sqlx::query(
                "insert into rapids.rivers (name, served) values ($1, true)
                 on conflict (name) do update set served = true where not rapids.rivers.served",
            )
            .bind(&config.name)
            .execute(&shared.pool)
            .await?;
            let rows: Vec<(String, Vec<String>)> = sqlx::query_as(
                "select pattern, tags from rapids.river_subscriptions where river = $1
                 order by created_at, pattern, tags",
            )
            .bind(&config.name)
            .fetch_all(&shared.pool)
            .await?;
            let selections: Vec<Selection> =
                rows.into_iter().map(|(pattern, tags)| Selection { pattern, tags }).collect();
            if selections != config.topics.selections() {
                tracing::info!(river = %config.name, topics = ?selections, "subscriptions changed");
                config.topics.replace(selections);
            }
            Ok(())
        }
    }
}

/// Wakes the shard readers whenever the tailer NOTIFYs that it published, and the
/// coordinator when another instance of this river gave its leases up (it balances at
/// once). Without it (another database, the listener reconnecting) readers poll every
/// `idle_poll` and released shards are taken at the next renewal.
async fn listen_for_publishes<H: Handler>(shared: Arc<Shared<H>>, shutdown: CancellationToken) {
    use crate::{LEASES_RELEASED_CHANNEL, PUBLISHED_CHANNEL};
    loop {
        let listening = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&shared.pool).await?;
            listener.listen_all([PUBLISHED_CHANNEL, LEASES_RELEASED_CHANNEL]).await?;
            loop {
                let mut note = Some(listener.recv().await?);
                let mut published = false;
                while let Some(n) = note {
                    if n.channel() == LEASES_RELEASED_CHANNEL {
                        if n.payload() == shared.config.name {
                            shared.leases_released.notify_one();
                        }
                    } else {
                        published = true;
                    }
                    note = listener.next_buffered();
                }
                if published {
                    shared.published.send_modify(|n| *n = n.wrapping_add(1));
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            failed = listening => {
                let failed: sqlx::Error = match failed { Err(e) => e, Ok(never) => never };
                tracing::warn!(river = %shared.config.name, error = %failed, "not listening for publishes; polling meanwhile");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Records the stream's shards (with their parents) in the lease table.
async fn sync_shards<H: Handler>(shared: &Shared<H>) -> Result<(), String> {
    let client = shared.rapids.client();
    let mut shards = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let request = match &next {
            Some(token) => client.list_shards().next_token(token),
            None => client.list_shards().stream_name(shared.rapids.stream()),
        };
        let page = request.send().await.map_err(|e| describe(&e))?;
        for shard in page.shards() {
            shards.push((
                shard.shard_id().to_string(),
                shard.parent_shard_id().map(str::to_string),
                shard.adjacent_parent_shard_id().map(str::to_string),
            ));
        }
        match page.next_token() {
            Some(token) => next = Some(token.to_string()),
            None => break,
        }
    }
    shared.leases.add_shards(&shards).await.map_err(|e| e.to_string())
}

/// Renews, then takes what the plan says; returns the shards held.
async fn balance<H: Handler>(shared: &Shared<H>) -> sqlx::Result<Vec<String>> {
    let mut held = shared.leases.renew().await?;
    let rows = shared.leases.rows().await?;
    for take in lease::plan(&rows, shared.leases.worker()) {
        if shared.leases.take(&take).await? {
            tracing::info!(river = %shared.config.name, shard = %take.shard_id, from = ?take.from, "lease taken");
            held.push(take.shard_id);
        }
    }
    // a lease this instance holds on a shard not yet readable (cannot happen unless
    // rows were edited by hand) is simply read later
    let readable: Vec<&str> = lease::readable(&rows).iter().map(|r| r.shard_id.as_str()).collect();
    held.retain(|shard| readable.contains(&shard.as_str()));
    Ok(held)
}

/// Hands records an operator marked for retry to the handler again: a few per round,
/// so that the leases are renewed in between.
async fn retry_dead_letters<H: Handler>(shared: &Shared<H>) -> sqlx::Result<()> {
    use tracing::Instrument;
    let river = &shared.config.name;
    for _ in 0..10 {
        let mut tx = shared.pool.begin().await?;
        let Some(row) = dead_letter::next_retry(&mut tx, river).await? else { return Ok(()) };
        let (span, outcome) = match serde_json::from_slice::<Envelope>(&row.record) {
            Ok(envelope) => {
                let event = river_span(river, &row.shard_id)
                    .in_scope(|| RiverEvent::new(row.shard_id.as_str().into(), row.sequence_number.clone(), envelope));
                let span = event.span();
                // a parked envelope of a reserved type is handled only as the store holds it
                let handled = if reader::held_by_store(&mut tx, &event.envelope).await? {
                    reader::call(&shared.handler, &mut tx, std::slice::from_ref(&event))
                        .instrument(span.clone())
                        .await
                        .map_err(|e| e.to_string())
                } else {
                    Err("an envelope of a reserved type that the event store does not hold".to_owned())
                };
                (span, handled)
            }
            Err(e) => (river_span(river, &row.shard_id), Err(format!("the record is not an event envelope: {e}"))),
        };
        match outcome {
            Ok(()) => {
                dead_letter::resolve(&mut tx, row.id).await?;
                tx.commit().await?;
                span.in_scope(|| tracing::info!(river = %river, id = row.id, "dead letter handled on retry"));
            }
            Err(error) => {
                tx.rollback().await?;
                dead_letter::park_again(&shared.pool, row.id, &error).await?;
                span.in_scope(
                    || tracing::warn!(river = %river, id = row.id, error = %error, "dead letter failed again; parked"),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_filters_match_prefixes_and_exact_types() {
        let none = serde_json::Map::new();
        let filter = TopicFilter::new(&["transfer.*", "account.opened"]);
        assert!(filter.matches("transfer.created", &none));
        assert!(filter.matches("account.opened", &none));
        assert!(!filter.matches("account.deposited", &none));
        assert!(!filter.matches("transfers.created", &none));
        assert!(TopicFilter::new(&["*"]).matches("anything", &none));
    }

    #[test]
    fn a_tagged_subscription_wants_every_selector_met() {
        let tags = |v: serde_json::Value| v.as_object().cloned().unwrap_or_default();
        let filter = TopicFilter::default();
        filter.replace(vec![
            Selection { pattern: "offers.assembled".into(), tags: vec!["vip".into(), "segment=road-warrior".into()] },
            Selection::any_tags("ViewPage"),
        ]);
        let both = tags(serde_json::json!({"vip": "true", "segment": "road-warrior", "region": "eu"}));
        assert!(filter.matches("offers.assembled", &both));
        assert!(!filter.matches("offers.assembled", &tags(serde_json::json!({"vip": "true"}))));
        assert!(!filter.matches("offers.assembled", &tags(serde_json::json!({"vip": "1", "segment": "casual"}))));
        assert!(!filter.matches("offers.assembled", &tags(serde_json::json!({"segment": "road-warrior"}))));
        // a value is a string: a number of the same digits is another value
        let numbered = Selection { pattern: "*".into(), tags: vec!["tier=1".into()] };
        assert!(!numbered.matches("x", &tags(serde_json::json!({"tier": 1}))));
        assert!(numbered.matches("x", &tags(serde_json::json!({"tier": "1"}))));
        assert!(filter.matches("ViewPage", &serde_json::Map::new()));
        assert_eq!(filter.patterns(), ["offers.assembled", "ViewPage"]);
    }
}
