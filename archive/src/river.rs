//! The river `archive`: every event of the rapids, written to the bucket as Parquet
//! files ([`crate::files`]), then checkpointed.
//!
//! A page of a shard's records is cut into runs of events recorded on the same day;
//! each run becomes one file named by its shard and the sequence numbers of its first
//! and last record, written whole (S3 has no partial objects) before the page's
//! checkpoint moves. After a crash the river reads again from the checkpoint, perhaps
//! in pages of other lengths: so each file written also removes the shard's other
//! files of that day that *start* inside its range. Those were written by an attempt
//! that never checkpointed; every event they hold is at or after this file's start,
//! so it is in this file or in one the river writes next. The archive thus holds each
//! event once whatever the retries.

use crate::files::{self, ArchivedEvent};
use crate::s3::Bucket;
use chrono::NaiveDate;
use prometheus::{IntCounter, Opts, Registry};
use rapids::river::{Handler, HandlerError, RiverEvent};
use sqlx::PgConnection;

/// The river's name.
pub const RIVER: &str = "archive";
/// Its topics: everything.
pub const TOPICS: &[&str] = &["*"];
/// A Parquet file's media type.
pub const PARQUET: &str = "application/vnd.apache.parquet";

/// The archive's counters.
#[derive(Clone)]
pub struct ArchiveMetrics {
    pub files: IntCounter,
    pub events: IntCounter,
    pub bytes: IntCounter,
    /// Files of an attempt that never checkpointed, removed.
    pub replaced: IntCounter,
}

impl ArchiveMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let counter = |name: &str, help: &str| -> prometheus::Result<IntCounter> {
            let c = IntCounter::with_opts(Opts::new(name, help))?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        Ok(ArchiveMetrics {
            files: counter("archive_files_written_total", "Parquet files written to the archive")?,
            events: counter("archive_events_written_total", "Events written to the archive (again after a retry)")?,
            bytes: counter("archive_bytes_written_total", "Bytes of Parquet written to the archive")?,
            replaced: counter(
                "archive_files_replaced_total",
                "Files of an attempt that never checkpointed, removed when their events were written again",
            )?,
        })
    }
}

/// Writes each page to the bucket.
pub struct ArchiveHandler {
    pub bucket: Bucket,
    pub metrics: ArchiveMetrics,
}

/// The page's runs of events recorded on the same day, in order.
pub fn day_runs(events: &[RiverEvent]) -> Vec<(NaiveDate, &[RiverEvent])> {
    let mut runs = Vec::new();
    let mut start = 0;
    for i in 1..=events.len() {
        let day = files::day_of(events[start].envelope.recorded_at);
        if i == events.len() || files::day_of(events[i].envelope.recorded_at) != day {
            runs.push((day, &events[start..i]));
            start = i;
        }
    }
    runs
}

impl ArchiveHandler {
    async fn write_run(&self, day: NaiveDate, run: &[RiverEvent]) -> Result<(), HandlerError> {
        let (Some(first), Some(last)) = (run.first(), run.last()) else { return Ok(()) };
        let shard = &*first.shard_id;
        let key = files::key(day, shard, &first.sequence_number, &last.sequence_number);
        let rows: Vec<ArchivedEvent> = run
            .iter()
            .map(|e| ArchivedEvent {
                shard_id: e.shard_id.to_string(),
                sequence_number: e.sequence_number.clone(),
                envelope: e.envelope.clone(),
            })
            .collect();
        let body = files::write(&rows).map_err(|e| HandlerError::Permanent(e.to_string()))?;
        let size = body.len() as u64;
        self.bucket.put(&key, body, PARQUET).await.map_err(|e| HandlerError::Transient(e.to_string()))?;
        // the files of an attempt that never checkpointed, starting in this range
        let prefix = files::shard_prefix(day, shard);
        let (from, to) = (files::padded(&first.sequence_number), files::padded(&last.sequence_number));
        let start_after = format!("{prefix}{from}");
        let overlapped = self
            .bucket
            .list_while(&prefix, Some(&start_after), |k| {
                files::range_of(k).is_none_or(|(start, _)| start <= to.as_str())
            })
            .await
            .map_err(|e| HandlerError::Transient(e.to_string()))?;
        for stale in overlapped.iter().filter(|o| o.key != key && files::range_of(&o.key).is_some()) {
            self.bucket.delete(&stale.key).await.map_err(|e| HandlerError::Transient(e.to_string()))?;
            self.metrics.replaced.inc();
            tracing::info!(key = %stale.key, "removed a file of an attempt that never checkpointed");
        }
        self.metrics.files.inc();
        self.metrics.events.inc_by(run.len() as u64);
        self.metrics.bytes.inc_by(size);
        tracing::debug!(%key, events = run.len(), "archived");
        Ok(())
    }
}

impl Handler for ArchiveHandler {
    async fn handle(&self, _tx: &mut PgConnection, events: &[RiverEvent]) -> Result<(), HandlerError> {
        for (day, run) in day_runs(events) {
            self.write_run(day, run).await?;
        }
        Ok(())
    }

    /// Writes nothing to Postgres: the checkpoint moves in a statement of its own.
    fn transactional(&self) -> bool {
        false
    }
}
