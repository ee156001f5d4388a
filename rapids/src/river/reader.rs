//! One shard's reader: GetRecords from the checkpoint on, hand the matching events to
//! the handler, move the checkpoint in the handler's transaction, park poison events,
//! and mark the shard finished at its end.

use super::{Handler, HandlerError, RiverEvent, Shared, dead_letter};
use crate::kinesis::describe;
use aws_sdk_kinesis::operation::get_records::GetRecordsOutput;
use aws_sdk_kinesis::types::{Record, ShardIteratorType};
use eventstore::envelope::Envelope;
use futures::FutureExt;
use sqlx::PgConnection;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How long a river looks for an envelope's event id in the store, from the first
/// miss, before it parks the envelope (a genuine commit is visible well within it; see
/// `screen_forged`).
pub const UNSEEN_GRACE: Duration = Duration::from_secs(5);

/// Compares envelopes with the event store, each on its own (a forged copy of a
/// genuine event's id among them must not pass with it), data included (the handlers
/// act on it): for each envelope the store holds an event of its id for (numbered from
/// 1 in `envelopes`' order), whether that event is the same — stream, version, type
/// and data. An id the store does not hold is missing from the answer.
pub(crate) async fn compare_with_store(
    conn: impl sqlx::PgExecutor<'_>,
    envelopes: &[&Envelope],
) -> sqlx::Result<std::collections::HashMap<i64, bool>> {
    let ids: Vec<uuid::Uuid> = envelopes.iter().map(|e| e.event_id).collect();
    let streams: Vec<uuid::Uuid> = envelopes.iter().map(|e| e.stream_id).collect();
    let versions: Vec<i32> = envelopes.iter().map(|e| e.version).collect();
    let types: Vec<&str> = envelopes.iter().map(|e| e.event_type.as_str()).collect();
    let data: Vec<&serde_json::Value> = envelopes.iter().map(|e| &e.data).collect();
    let rows = sqlx::query_as::<_, (i64, bool)>(
        "select c.idx, e.stream_id = c.stream_id and e.version = c.version and e.type = c.type
                        and e.data = c.data
         from unnest($1::uuid[], $2::uuid[], $3::int[], $4::text[], $5::jsonb[])
              with ordinality as c(event_id, stream_id, version, type, data, idx)
         join es.events e on e.event_id = c.event_id",
    )
    .bind(&ids)
    .bind(&streams)
    .bind(&versions)
    .bind(&types)
    .bind(&data)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Whether the event store holds `envelope`'s event as it is; envelopes of other than
/// reserved types always pass. The check of an operator's retry of a parked envelope.
pub(crate) async fn held_by_store(conn: &mut PgConnection, envelope: &Envelope) -> sqlx::Result<bool> {
    if !super::is_reserved(&envelope.event_type) {
        return Ok(true);
    }
    Ok(compare_with_store(conn, &[envelope]).await?.get(&1) == Some(&true))
}

/// Why a reader stops.
#[derive(Debug)]
enum Stop {
    Cancelled,
    /// Another instance holds the shard now.
    LeaseLost,
}

/// Why one delivery attempt failed.
enum Failure {
    Handler(HandlerError),
    Database(sqlx::Error),
    LeaseLost,
}

impl From<sqlx::Error> for Failure {
    fn from(e: sqlx::Error) -> Self {
        Failure::Database(e)
    }
}

/// Calls the handler; a panic counts as a permanent failure (the record gets parked
/// instead of killing the reader over and over).
pub(super) async fn call<H: Handler>(
    handler: &H,
    tx: &mut PgConnection,
    events: &[RiverEvent],
) -> Result<(), HandlerError> {
    match std::panic::AssertUnwindSafe(handler.handle(tx, events)).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(_) => Err(HandlerError::Permanent("the handler panicked".into())),
    }
}

/// Reads `shard` until it is finished, the lease is lost or `cancel` fires; in the
/// river's span, each delivery in its event's ([`RiverEvent::span`]).
pub(super) async fn read<H: Handler>(shared: Arc<Shared<H>>, shard: String, cancel: CancellationToken) {
    let reader = ShardReader {
        label: [shared.config.name.clone(), shard.clone()],
        shard: shard.as_str().into(),
        shared,
        cancel,
        fence: std::sync::atomic::AtomicI64::new(-1),
    };
    let span = super::river_span(&reader.label[0], &shard);
    match reader.run().instrument(span).await {
        Ok(()) => tracing::info!(river = %reader.label[0], shard = %shard, "shard finished"),
        Err(Stop::LeaseLost) => tracing::info!(river = %reader.label[0], shard = %shard, "lease lost; stopped reading"),
        Err(Stop::Cancelled) => {}
    }
}

struct ShardReader<H> {
    shared: Arc<Shared<H>>,
    shard: Arc<str>,
    label: [String; 2],
    cancel: CancellationToken,
    /// The lease's counter when this reader started (-1 before its first read): it
    /// checkpoints only while the counter is still that one.
    fence: std::sync::atomic::AtomicI64,
}

impl<H: Handler> ShardReader<H> {
    fn fence(&self) -> i64 {
        self.fence.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn run(&self) -> Result<(), Stop> {
        if self.shared.config.read_mode == super::ReadMode::Efo {
            return self.run_efo().await;
        }
        let mut backoff = self.shared.config.retry_backoff;
        'iterator: loop {
            let iterator = match self.iterator().await {
                Ok(Some(iterator)) => iterator,
                Ok(None) => return Err(Stop::LeaseLost),
                Err(e) => {
                    tracing::warn!(river = %self.label[0], shard = %self.shard, error = %e, "no shard iterator; retrying");
                    self.pause(&mut backoff).await?;
                    continue;
                }
            };
            let mut iterator = Some(iterator);
            let mut last_read: Option<tokio::time::Instant> = None;
            let mut published = self.shared.published.subscribe();
            // the next page, read while the one before was handled
            let mut prefetched = None;
            while let Some(current) = iterator.take() {
                let page = match prefetched.take() {
                    Some(page) => page,
                    None => self.read_page(&current, &mut last_read, &mut published).await?,
                };
                let page = match page {
                    Ok(page) => page,
                    Err(error) => {
                        // an expired iterator, throttling, a fault: start again from the checkpoint
                        tracing::warn!(river = %self.label[0], shard = %self.shard, %error, "GetRecords failed; retrying");
                        self.pause(&mut backoff).await?;
                        continue 'iterator;
                    }
                };
                backoff = self.shared.config.retry_backoff;
                if let Some(behind) = page.millis_behind_latest() {
                    self.shared.metrics.millis_behind.with_label_values(&self.label).set(behind);
                }
                let next = page.next_shard_iterator().map(str::to_string);
                if !page.records().is_empty() {
                    match &next {
                        Some(next) => {
                            let (delivered, read) = tokio::join!(
                                self.deliver(page.records()),
                                self.read_page(next, &mut last_read, &mut published)
                            );
                            delivered?;
                            prefetched = Some(read?);
                        }
                        None => self.deliver(page.records()).await?,
                    }
                }
                match next {
                    Some(next) => iterator = Some(next),
                    None => {
                        // a closed shard read to its end
                        return match self.shared.leases.finish(&self.shard).await {
                            Ok(true) => {
                                self.shared.shard_finished.notify_one();
                                Ok(())
                            }
                            Ok(false) => Err(Stop::LeaseLost),
                            Err(e) => {
                                tracing::warn!(river = %self.label[0], shard = %self.shard, error = %e, "cannot mark the shard finished; retrying");
                                self.pause(&mut backoff).await?;
                                continue 'iterator;
                            }
                        };
                    }
                }
                // an empty page while behind (Kinesis skips empty stretches so) reads on at once
                if prefetched.is_none() && page.records().is_empty() && page.millis_behind_latest().unwrap_or(0) == 0 {
                    tokio::select! {
                        _ = self.cancel.cancelled() => return Err(Stop::Cancelled),
                        _ = tokio::time::sleep(self.shared.config.idle_poll) => {}
                        _ = published.changed() => {}
                    }
                }
            }
        }
    }

    /// One GetRecords call, at least `read_interval` after the previous one (pages of
    /// a busy shard gather a few records instead of one each).
    async fn read_page(
        &self,
        iterator: &str,
        last_read: &mut Option<tokio::time::Instant>,
        published: &mut tokio::sync::watch::Receiver<u64>,
    ) -> Result<Result<GetRecordsOutput, String>, Stop> {
        if let Some(at) = *last_read {
            tokio::select! {
                _ = self.cancel.cancelled() => return Err(Stop::Cancelled),
                _ = tokio::time::sleep_until(at + self.shared.read_interval()) => {}
            }
        }
        if self.cancel.is_cancelled() {
            return Err(Stop::Cancelled);
        }
        let started = tokio::time::Instant::now();
        *last_read = Some(started);
        // what the tailer publishes from here on wakes the idle wait
        published.borrow_and_update();
        let page = self
            .shared
            .rapids
            .client()
            .get_records()
            .shard_iterator(iterator)
            .limit(self.shared.config.batch_size)
            .send()
            .await
            .map_err(|e| describe(&e));
        self.shared.metrics.reads.with_label_values(&self.label).inc();
        self.shared.metrics.read_seconds.with_label_values(&self.label[..1]).observe(started.elapsed().as_secs_f64());
        Ok(page)
    }

    /// Enhanced fan-out: subscribes to the shard after its checkpoint and handles what
    /// is pushed; subscribes again before the subscription's 5-minute end (and after
    /// any error), at most once a second as AWS allows; finishes a closed shard when
    /// its last event names its children.
    async fn run_efo(&self) -> Result<(), Stop> {
        use aws_sdk_kinesis::types::{ShardIteratorType, StartingPosition, SubscribeToShardEventStream};
        let mut backoff = self.shared.config.retry_backoff;
        let mut last_subscribe: Option<tokio::time::Instant> = None;
        loop {
            let consumer = match self.consumer().await {
                Ok(arn) => arn,
                Err(error) => {
                    tracing::warn!(river = %self.label[0], %error, "cannot register the stream consumer; retrying");
                    self.pause(&mut backoff).await?;
                    continue;
                }
            };
            let checkpoint = match self.shared.leases.checkpoint(&self.shard).await {
                Ok(Some((checkpoint, counter))) => {
                    use std::sync::atomic::Ordering;
                    let fence = self
                        .fence
                        .compare_exchange(-1, counter, Ordering::Relaxed, Ordering::Relaxed)
                        .unwrap_or_else(|f| f);
                    if fence != -1 && fence != counter {
                        return Err(Stop::LeaseLost);
                    }
                    checkpoint
                }
                Ok(None) => return Err(Stop::LeaseLost),
                Err(error) => {
                    tracing::warn!(river = %self.label[0], shard = %self.shard, %error, "cannot read the checkpoint; retrying");
                    self.pause(&mut backoff).await?;
                    continue;
                }
            };
            if let Some(at) = last_subscribe {
                tokio::select! {
                    _ = self.cancel.cancelled() => return Err(Stop::Cancelled),
                    _ = tokio::time::sleep_until(at + std::time::Duration::from_secs(1)) => {}
                }
            }
            last_subscribe = Some(tokio::time::Instant::now());
            let position = match &checkpoint {
                Some(sequence) => StartingPosition::builder()
                    .r#type(ShardIteratorType::AfterSequenceNumber)
                    .sequence_number(sequence)
                    .build(),
                None => StartingPosition::builder().r#type(ShardIteratorType::TrimHorizon).build(),
            };
            let Ok(position) = position else { return Err(Stop::Cancelled) };
            self.shared.metrics.reads.with_label_values(&self.label).inc();
            let subscribed = self
                .shared
                .rapids
                .efo_client()
                .subscribe_to_shard()
                .consumer_arn(&consumer)
                .shard_id(&*self.shard)
                .starting_position(position)
                .send()
                .await;
            let mut subscription = match subscribed {
                Ok(out) => out.event_stream,
                Err(error) => {
                    tracing::warn!(river = %self.label[0], shard = %self.shard, error = %describe(&error), "SubscribeToShard failed; retrying");
                    self.pause(&mut backoff).await?;
                    continue;
                }
            };
            // AWS ends a subscription after 5 minutes: renew it a little before
            let renew_at = tokio::time::Instant::now() + std::time::Duration::from_secs(290);
            let mut checked_closed = false;
            loop {
                let event = tokio::select! {
                    _ = self.cancel.cancelled() => return Err(Stop::Cancelled),
                    _ = tokio::time::sleep_until(renew_at) => break,
                    event = subscription.recv() => event,
                };
                let event = match event {
                    Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event))) => event,
                    Ok(Some(_)) => continue,
                    // the server ended the subscription: subscribe again from the checkpoint
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(river = %self.label[0], shard = %self.shard, error = %describe(&error), "the subscription failed; subscribing again");
                        self.pause(&mut backoff).await?;
                        break;
                    }
                };
                backoff = self.shared.config.retry_backoff;
                self.shared.metrics.millis_behind.with_label_values(&self.label).set(event.millis_behind_latest());
                if !event.records().is_empty() {
                    self.deliver(event.records()).await?;
                }
                // Kinesis names the children in the last event of a closed shard; a server
                // that does not (kinesis-mock) is caught by an empty, caught-up event on a
                // shard that ListShards says is closed: nothing can come after it
                let at_end = !event.child_shards().is_empty()
                    || (event.records().is_empty() && event.millis_behind_latest() == 0 && !checked_closed && {
                        checked_closed = true;
                        self.closed().await
                    });
                if at_end {
                    // a closed shard read to its end: its children may start
                    return match self.shared.leases.finish(&self.shard).await {
                        Ok(true) => {
                            self.shared.shard_finished.notify_one();
                            Ok(())
                        }
                        Ok(false) => Err(Stop::LeaseLost),
                        Err(error) => {
                            tracing::warn!(river = %self.label[0], shard = %self.shard, %error, "cannot mark the shard finished; retrying");
                            self.pause(&mut backoff).await?;
                            continue;
                        }
                    };
                }
            }
        }
    }

    /// Whether the shard is closed (it has an ending sequence number: a reshard split
    /// or merged it); a failed look-up counts as open.
    async fn closed(&self) -> bool {
        let listed = self.shared.rapids.client().list_shards().stream_name(self.shared.rapids.stream()).send().await;
        listed.ok().is_some_and(|out| {
            out.shards().iter().any(|s| {
                s.shard_id() == &*self.shard
                    && s.sequence_number_range().is_some_and(|r| r.ending_sequence_number().is_some())
            })
        })
    }

    /// The river's consumer ARN, registered once per process (idempotently).
    async fn consumer(&self) -> Result<String, String> {
        self.shared
            .consumer
            .get_or_try_init(|| async {
                self.shared
                    .rapids
                    .register_consumer(&self.shared.config.name, std::time::Duration::from_secs(30))
                    .await
                    .map_err(|e| e.to_string())
            })
            .await
            .cloned()
    }

    /// An iterator after the checkpoint; `None` when the lease is no longer ours.
    async fn iterator(&self) -> Result<Option<String>, String> {
        let Some((checkpoint, counter)) =
            self.shared.leases.checkpoint(&self.shard).await.map_err(|e| e.to_string())?
        else {
            return Ok(None);
        };
        use std::sync::atomic::Ordering;
        let fence =
            self.fence.compare_exchange(-1, counter, Ordering::Relaxed, Ordering::Relaxed).unwrap_or_else(|f| f);
        if fence != -1 && fence != counter {
            // taken again since this reader started: another reader has it now
            return Ok(None);
        }
        let request = self
            .shared
            .rapids
            .client()
            .get_shard_iterator()
            .stream_name(self.shared.rapids.stream())
            .shard_id(&*self.shard);
        let request = match checkpoint {
            Some(sequence) => {
                request.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).starting_sequence_number(sequence)
            }
            None => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        let out = request.send().await.map_err(|e| describe(&e))?;
        let iterator = out.shard_iterator().ok_or_else(|| "GetShardIterator returned no iterator".to_string())?;
        Ok(Some(iterator.to_string()))
    }

    /// Hands a page of records to the handler and checkpoints its end: all in one
    /// transaction, or, when that fails for good, one record at a time (parking those
    /// that keep failing).
    async fn deliver(&self, records: &[Record]) -> Result<(), Stop> {
        let mut decoded: Vec<Decoded> = records.iter().map(|r| self.decode(r)).collect();
        self.screen_forged(records, &mut decoded).await?;
        let last = records.last().map(|r| r.sequence_number()).unwrap_or_default();
        let mut backoff = self.shared.config.retry_backoff;
        if decoded.iter().all(|d| !matches!(d, Decoded::Bad { .. })) {
            let events: Vec<RiverEvent> =
                decoded.iter().filter_map(|d| if let Decoded::Event(e) = d { Some(e.clone()) } else { None }).collect();
            loop {
                match self.attempt(&events, last).await {
                    Ok(()) => {
                        self.shared.metrics.handled.with_label_values(&self.label).inc_by(events.len() as u64);
                        let delivery = self.shared.metrics.delivery_seconds.with_label_values(&self.label[..1]);
                        let now = std::time::SystemTime::now();
                        for (record, item) in records.iter().zip(&decoded) {
                            let Decoded::Event(event) = item else { continue };
                            if let Some(arrived) = record.approximate_arrival_timestamp()
                                && let Ok(arrived) = std::time::SystemTime::try_from(*arrived)
                            {
                                delivery.observe(now.duration_since(arrived).unwrap_or_default().as_secs_f64());
                            }
                            // the handler ran in the event's span (by_stream opens one); the
                            // checkpoint is committed now
                            event.span().in_scope(|| tracing::info!("delivered"));
                        }
                        return Ok(());
                    }
                    Err(Failure::LeaseLost) => return Err(Stop::LeaseLost),
                    Err(Failure::Handler(HandlerError::Permanent(e))) => {
                        self.failed("permanent", &e);
                        break;
                    }
                    Err(Failure::Handler(HandlerError::Transient(e))) => self.failed("transient", &e),
                    Err(Failure::Database(e)) => self.failed("database", &e.to_string()),
                }
                self.pause(&mut backoff).await?;
            }
        }
        // one at a time, to find and park what keeps failing
        for item in &decoded {
            match item {
                Decoded::Skipped => {}
                Decoded::Event(event) => self.deliver_one(event).instrument(event.span()).await?,
                Decoded::Bad { record, error, event } => {
                    let parked = dead_letter::Parked {
                        shard_id: &self.shard,
                        sequence_number: record.sequence_number(),
                        stream_id: event.as_ref().map(|e| e.envelope.stream_id),
                        event_type: event.as_ref().map(|e| e.envelope.event_type.as_str()),
                        version: event.as_ref().map(|e| e.envelope.version),
                        record: record.data().as_ref(),
                        error,
                        attempts: 1,
                    };
                    self.park(&parked).await?;
                }
            }
        }
        // skipped records at the end of the page
        loop {
            match self.attempt(&[], last).await {
                Ok(()) => return Ok(()),
                Err(Failure::LeaseLost) => return Err(Stop::LeaseLost),
                Err(_) => self.pause(&mut backoff).await?,
            }
        }
    }

    /// One event, retried and parked on its own; the caller runs it in the event's span.
    async fn deliver_one(&self, event: &RiverEvent) -> Result<(), Stop> {
        let mut backoff = self.shared.config.retry_backoff;
        let mut attempts = 0;
        loop {
            match self.attempt(std::slice::from_ref(event), &event.sequence_number).await {
                Ok(()) => {
                    self.shared.metrics.handled.with_label_values(&self.label).inc();
                    tracing::info!("delivered");
                    return Ok(());
                }
                Err(Failure::LeaseLost) => return Err(Stop::LeaseLost),
                Err(Failure::Handler(HandlerError::Permanent(error))) => {
                    self.failed("permanent", &error);
                    attempts += 1;
                    if attempts >= self.shared.config.max_attempts {
                        let record = serde_json::to_vec(&event.envelope).unwrap_or_default();
                        let parked = dead_letter::Parked {
                            shard_id: &self.shard,
                            sequence_number: &event.sequence_number,
                            stream_id: Some(event.envelope.stream_id),
                            event_type: Some(&event.envelope.event_type),
                            version: Some(event.envelope.version),
                            record: &record,
                            error: &error,
                            attempts: attempts as i32,
                        };
                        return self.park(&parked).await;
                    }
                }
                Err(Failure::Handler(HandlerError::Transient(e))) => self.failed("transient", &e),
                Err(Failure::Database(e)) => self.failed("database", &e.to_string()),
            }
            self.pause(&mut backoff).await?;
        }
    }

    /// One transaction: the handler's writes and the checkpoint (or, for a handler
    /// that is not transactional, the handler and then the checkpoint).
    async fn attempt(&self, events: &[RiverEvent], sequence: &str) -> Result<(), Failure> {
        if !self.shared.handler.transactional() {
            let mut connection = self.shared.pool.acquire().await?;
            if !events.is_empty() {
                call(&self.shared.handler, &mut connection, events).await.map_err(Failure::Handler)?;
            }
            if !self.shared.leases.advance(&mut connection, &self.shard, sequence, self.fence()).await? {
                return Err(Failure::LeaseLost);
            }
            return Ok(());
        }
        let mut tx = self.begin().await?;
        if !events.is_empty() {
            call(&self.shared.handler, &mut tx, events).await.map_err(Failure::Handler)?;
        }
        if !self.shared.leases.advance(&mut tx, &self.shard, sequence, self.fence()).await? {
            return Err(Failure::LeaseLost);
        }
        tx.commit().await?;
        Ok(())
    }

    /// Parks a record and moves the checkpoint past it, in one transaction.
    async fn park(&self, parked: &dead_letter::Parked<'_>) -> Result<(), Stop> {
        let mut backoff = self.shared.config.retry_backoff;
        loop {
            let outcome: Result<bool, sqlx::Error> = async {
                let mut tx = self.begin().await?;
                dead_letter::park(&mut tx, &self.shared.config.name, parked).await?;
                if !self.shared.leases.advance(&mut tx, &self.shard, parked.sequence_number, self.fence()).await? {
                    return Ok(false);
                }
                tx.commit().await?;
                Ok(true)
            }
            .await;
            match outcome {
                Ok(true) => {
                    self.shared.metrics.parked.with_label_values(&self.label).inc();
                    tracing::error!(
                        river = %self.label[0], shard = %self.shard, sequence = parked.sequence_number,
                        stream_id = ?parked.stream_id, event_type = ?parked.event_type, error = parked.error,
                        "event parked in the dead-letter table"
                    );
                    return Ok(());
                }
                Ok(false) => return Err(Stop::LeaseLost),
                Err(e) => self.failed("database", &e.to_string()),
            }
            self.pause(&mut backoff).await?;
        }
    }

    async fn begin(&self) -> sqlx::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        if self.shared.config.async_commit {
            self.shared.pool.begin_with("BEGIN; SET LOCAL synchronous_commit = off").await
        } else {
            self.shared.pool.begin().await
        }
    }

    /// Screens every event of a reserved type (`account.*`, `transfer.*`) against the
    /// event store — same id, stream, version, type and data: an envelope put on the
    /// stream by anyone but the tailer never moves money.
    ///
    /// An id the store holds with other fields is forged: skipped at once. An id it
    /// does not hold is looked for again until [`UNSEEN_GRACE`] has passed since the
    /// first miss (logical decoding hands the tailer a transaction as soon as its
    /// commit record is flushed, a moment before the commit becomes visible to other
    /// sessions, so a river may read a genuine event before it can see it), then
    /// parked: an operator's retry checks it again ([`held_by_store`]). An envelope of
    /// another event store (its `store` is not this store's identity: the stream
    /// outlived the database) whose id the store does not hold is not waited for: it is
    /// counted and skipped at once.
    async fn screen_forged(&self, records: &[Record], decoded: &mut [Decoded]) -> Result<(), Stop> {
        let reserved: Vec<&RiverEvent> = decoded
            .iter()
            .filter_map(|d| if let Decoded::Event(e) = d { Some(e) } else { None })
            .filter(|e| super::is_reserved(&e.envelope.event_type))
            .collect();
        if reserved.is_empty() {
            return Ok(());
        }
        let envelopes: Vec<&Envelope> = reserved.iter().map(|e| &e.envelope).collect();
        let mut ours = self.store_identity(false).await?;
        if envelopes.iter().any(|e| e.store.is_some_and(|s| s != ours)) {
            // the identity may have been renewed since it was read: read it again
            ours = self.store_identity(true).await?;
        }
        let foreign = |e: &Envelope| e.store.is_some_and(|s| s != ours);
        let mut backoff = self.shared.config.retry_backoff;
        let mut first_miss: Option<std::time::Instant> = None;
        // candidate → whether the stored event with its id is the same
        let stored: std::collections::HashMap<i64, bool> = loop {
            let found = compare_with_store(&self.shared.pool, &envelopes).await;
            // what is missing and of this store may not be visible yet: wait for it
            let awaited = |found: &std::collections::HashMap<i64, bool>| {
                (1..).zip(&envelopes).any(|(i, e)| !found.contains_key(&i) && !foreign(e))
            };
            match found {
                Ok(found) if !awaited(&found) => break found,
                Ok(found) if first_miss.get_or_insert_with(std::time::Instant::now).elapsed() >= UNSEEN_GRACE => {
                    break found;
                }
                // an id not (yet) in the store: look again
                Ok(_) => {
                    self.shared.metrics.unseen.with_label_values(&self.label[..1]).inc();
                    self.pause(&mut backoff).await?;
                }
                Err(e) => {
                    self.failed("database", &e.to_string());
                    self.pause(&mut backoff).await?;
                }
            }
        };
        let mut candidate = 0_i64;
        let mut other_store = 0;
        for (item, record) in decoded.iter_mut().zip(records) {
            let Decoded::Event(e) = item else { continue };
            if !super::is_reserved(&e.envelope.event_type) {
                continue;
            }
            candidate += 1;
            let held = stored.get(&candidate).copied();
            if held == Some(true) {
                continue;
            }
            let (river, shard, event_type) = (&self.label[0], &self.shard, &e.envelope.event_type);
            let (stream_id, event_id) = (e.envelope.stream_id, e.envelope.event_id);
            if held.is_none() && foreign(&e.envelope) {
                self.shared.metrics.other_store.with_label_values(&self.label[..1]).inc();
                tracing::debug!(%river, %shard, %event_type, %stream_id, %event_id, store = ?e.envelope.store,
                    "an envelope of another event store, whose event this store does not hold: skipped");
                *item = Decoded::Skipped;
                other_store += 1;
                continue;
            }
            self.shared.metrics.forged.with_label_values(&self.label[..1]).inc();
            if held == Some(false) {
                tracing::warn!(%river, %shard, %event_type, %stream_id, %event_id,
                    "a forged envelope of a reserved type (the event store holds its id with other fields): ignored");
                *item = Decoded::Skipped;
            } else {
                tracing::warn!(%river, %shard, %event_type, %stream_id, %event_id,
                    "an envelope of a reserved type whose id the event store does not hold: parked");
                let error = format!(
                    "an envelope of a reserved type whose event id the event store did not hold within {} s \
                     (forged, or its commit not visible)",
                    UNSEEN_GRACE.as_secs()
                );
                let event = Some(e.clone());
                *item = Decoded::Bad { record: record.clone(), error, event };
            }
        }
        if other_store > 0 {
            tracing::warn!(river = %self.label[0], shard = %self.shard, skipped = other_store,
                "envelopes of another event store (the stream outlived this database) whose events it does not hold: skipped");
        }
        Ok(())
    }

    /// This event store's identity: the one read before, unless `again` (retried until
    /// the database answers).
    async fn store_identity(&self, again: bool) -> Result<uuid::Uuid, Stop> {
        let kept = *self.shared.store.lock().unwrap_or_else(|p| p.into_inner());
        if let (Some(id), false) = (kept, again) {
            return Ok(id);
        }
        let mut backoff = self.shared.config.retry_backoff;
        loop {
            match eventstore::identity::identity(&self.shared.pool).await {
                Ok(id) => {
                    *self.shared.store.lock().unwrap_or_else(|p| p.into_inner()) = Some(id);
                    return Ok(id);
                }
                Err(e) => {
                    self.failed("database", &e.to_string());
                    self.pause(&mut backoff).await?;
                }
            }
        }
    }

    fn decode(&self, record: &Record) -> Decoded {
        match serde_json::from_slice::<Envelope>(record.data().as_ref()) {
            Ok(envelope) if self.shared.config.topics.matches(&envelope.event_type, &envelope.tags) => {
                Decoded::Event(RiverEvent::new(self.shard.clone(), record.sequence_number().to_string(), envelope))
            }
            Ok(_) => Decoded::Skipped,
            Err(e) => Decoded::Bad {
                record: record.clone(),
                error: format!("the record is not an event envelope: {e}"),
                event: None,
            },
        }
    }

    fn failed(&self, kind: &str, error: &str) {
        self.shared.metrics.failures.with_label_values(&[&self.label[0], kind]).inc();
        tracing::warn!(river = %self.label[0], shard = %self.shard, kind, error, "handler failed; retrying");
    }

    /// Waits `backoff` (doubling it up to 2 s) unless cancelled.
    async fn pause(&self, backoff: &mut Duration) -> Result<(), Stop> {
        let wait = *backoff;
        *backoff = (*backoff * 2).min(Duration::from_secs(2));
        tokio::select! {
            _ = self.cancel.cancelled() => Err(Stop::Cancelled),
            _ = tokio::time::sleep(wait) => Ok(()),
        }
    }
}

enum Decoded {
    Event(RiverEvent),
    /// Not for this river (the checkpoint moves past it).
    Skipped,
    /// Parked as it is: not an envelope, or (with its envelope) an event the store
    /// never showed.
    Bad {
        record: Record,
        error: String,
        event: Option<RiverEvent>,
    },
}
