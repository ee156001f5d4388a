//! The river `archive`: every event of the rapids, written to the bucket as Parquet
//! files ([`crate::files`]), registered in Postgres in the transaction that moves the
//! checkpoint.
//!
//! A page of a shard's records becomes one file per run of events recorded on the
//! same day, named by its shard and the sequence numbers of its first and last record,
//! written whole (S3 has no partial objects) before the transaction commits. The
//! transaction registers the page (`rapids.archive_pages`), its files
//! (`rapids.archive_files`) and its events (`rapids.archived_events`), with the
//! checkpoint, or none of them.
//!
//! * **A retry** after a crash reads from the same checkpoint, perhaps in pages of
//!   other lengths, so the files of the attempt that never committed are not
//!   rewritten: they are orphans. A file that is not registered and starts at or
//!   before a committed checkpoint can never be registered (that would need a commit
//!   moving the checkpoint over it again, which the lease's fence refuses): each page
//!   first removes the orphans in the range of the shard's last committed page.
//!   Removal only ever touches unregistered files, so no reader, however late or
//!   fenced, removes an event another committed.
//! * **An event the stream carries twice** (republished after a tailer's failover, or
//!   put again by hand) is archived once: events already registered are left out.
//!
//! Left: an orphan written by a fenced reader after the owner cleaned that range stays
//! (its events are also in registered files); `bankctl archive verify` reports it as
//! doubled.

use crate::files::{self, ArchivedEvent};
use crate::s3::Bucket;
use chrono::NaiveDate;
use prometheus::{IntCounter, Opts, Registry};
use rapids::river::{Handler, HandlerError, RiverEvent};
use sqlx::PgConnection;
use std::collections::HashSet;
use uuid::Uuid;

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
    /// Files of an attempt that never committed, removed.
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
                "Files of an attempt that never committed, removed once a committed page passed them",
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
pub fn day_runs<'a>(events: &[&'a RiverEvent]) -> Vec<(NaiveDate, Vec<&'a RiverEvent>)> {
    let mut runs: Vec<(NaiveDate, Vec<&RiverEvent>)> = Vec::new();
    for event in events {
        let day = files::day_of(event.envelope.recorded_at);
        match runs.last_mut() {
            Some((last, run)) if *last == day => run.push(event),
            _ => runs.push((day, vec![event])),
        }
    }
    runs
}

/// Every database error is retried until it passes: parking an event would leave it
/// out of the archive (only a file that cannot be made is permanent).
fn database(e: sqlx::Error) -> HandlerError {
    HandlerError::Transient(e.to_string())
}

fn s3(e: crate::s3::S3Error) -> HandlerError {
    HandlerError::Transient(e.to_string())
}

/// A file written by a page, to register.
struct Written {
    key: String,
    day: NaiveDate,
    first: String,
    last: String,
    events: Vec<Uuid>,
}

impl ArchiveHandler {
    /// Removes the orphans in the range of the shard's last committed page: files not
    /// registered whose first sequence lies in it.
    async fn remove_orphans(&self, tx: &mut PgConnection, shard: &str) -> Result<(), HandlerError> {
        let last: Option<(String, String, Vec<NaiveDate>)> = sqlx::query_as(
            "select first_seq, last_seq, days from rapids.archive_pages
             where shard_id = $1 order by first_seq desc limit 1",
        )
        .bind(shard)
        .fetch_optional(&mut *tx)
        .await
        .map_err(database)?;
        let Some((first, last, days)) = last else { return Ok(()) };
        let registered: HashSet<String> = sqlx::query_scalar(
            "select key from rapids.archive_files where shard_id = $1 and first_seq >= $2 and first_seq <= $3",
        )
        .bind(shard)
        .bind(&first)
        .bind(&last)
        .fetch_all(&mut *tx)
        .await
        .map_err(database)?
        .into_iter()
        .collect();
        for day in days {
            let prefix = files::shard_prefix(day, shard);
            let listed = self
                .bucket
                .list_while(&prefix, Some(&format!("{prefix}{first}")), |k| {
                    files::range_of(k).is_none_or(|(start, _)| start <= last.as_str())
                })
                .await
                .map_err(s3)?;
            for orphan in listed.iter().filter(|o| files::range_of(&o.key).is_some() && !registered.contains(&o.key)) {
                self.bucket.delete(&orphan.key).await.map_err(s3)?;
                self.metrics.replaced.inc();
                tracing::info!(key = %orphan.key, "removed a file of an attempt that never committed");
            }
        }
        Ok(())
    }

    async fn write_run(&self, day: NaiveDate, run: &[&RiverEvent]) -> Result<Option<Written>, HandlerError> {
        let (Some(first), Some(last)) = (run.first(), run.last()) else { return Ok(None) };
        if last.sequence_number.len() > files::SEQUENCE_WIDTH || first.sequence_number.len() > files::SEQUENCE_WIDTH {
            return Err(HandlerError::Permanent(format!(
                "a sequence number longer than {} digits cannot name a file",
                files::SEQUENCE_WIDTH
            )));
        }
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
        self.bucket.put(&key, body, PARQUET).await.map_err(s3)?;
        self.metrics.files.inc();
        self.metrics.events.inc_by(run.len() as u64);
        self.metrics.bytes.inc_by(size);
        tracing::debug!(%key, events = run.len(), "archived");
        Ok(Some(Written {
            key,
            day,
            first: files::padded(&first.sequence_number),
            last: files::padded(&last.sequence_number),
            events: run.iter().map(|e| e.envelope.event_id).collect(),
        }))
    }
}

impl Handler for ArchiveHandler {
    async fn handle(&self, tx: &mut PgConnection, events: &[RiverEvent]) -> Result<(), HandlerError> {
        let (Some(first), Some(last)) = (events.first(), events.last()) else { return Ok(()) };
        let shard = &*first.shard_id;
        // a fenced reader's uncommitted rows (the same page, the same events) are not
        // waited for long: the attempt fails and is tried again
        sqlx::query("set local lock_timeout = '5s'").execute(&mut *tx).await.map_err(database)?;
        self.remove_orphans(tx, shard).await?;
        // what the archive holds already (the stream carried it before) is left out
        let ids: Vec<Uuid> = events.iter().map(|e| e.envelope.event_id).collect();
        let archived: HashSet<Uuid> =
            sqlx::query_scalar("select event_id from rapids.archived_events where event_id = any($1)")
                .bind(&ids)
                .fetch_all(&mut *tx)
                .await
                .map_err(database)?
                .into_iter()
                .collect();
        let mut taken = HashSet::new();
        let fresh: Vec<&RiverEvent> = events
            .iter()
            .filter(|e| !archived.contains(&e.envelope.event_id) && taken.insert(e.envelope.event_id))
            .collect();
        let mut written = Vec::new();
        for (day, run) in day_runs(&fresh) {
            written.extend(self.write_run(day, &run).await?);
        }
        // registered with the checkpoint (written last: the transaction takes its id
        // here, not while the files upload)
        let mut days: Vec<NaiveDate> = events.iter().map(|e| files::day_of(e.envelope.recorded_at)).collect();
        days.sort_unstable();
        days.dedup();
        sqlx::query(
            "insert into rapids.archive_pages (shard_id, first_seq, last_seq, days) values ($1, $2, $3, $4)
             on conflict (shard_id, first_seq) do update set last_seq = excluded.last_seq, days = excluded.days",
        )
        .bind(shard)
        .bind(files::padded(&first.sequence_number))
        .bind(files::padded(&last.sequence_number))
        .bind(&days)
        .execute(&mut *tx)
        .await
        .map_err(database)?;
        for file in written {
            sqlx::query(
                "insert into rapids.archive_files (key, shard_id, day, first_seq, last_seq, events)
                 values ($1, $2, $3, $4, $5, $6) on conflict (key) do nothing",
            )
            .bind(&file.key)
            .bind(shard)
            .bind(file.day)
            .bind(&file.first)
            .bind(&file.last)
            .bind(file.events.len() as i32)
            .execute(&mut *tx)
            .await
            .map_err(database)?;
            let taken: Vec<Uuid> = sqlx::query_scalar(
                "insert into rapids.archived_events (event_id, key)
                 select unnest($1::uuid[]), $2 on conflict (event_id) do nothing returning event_id",
            )
            .bind(&file.events)
            .bind(&file.key)
            .fetch_all(&mut *tx)
            .await
            .map_err(database)?;
            if taken.len() != file.events.len() {
                // another shard's page archived some of them meanwhile (the same event
                // twice on the stream): again, without them; this file is then an orphan
                return Err(HandlerError::Transient(format!(
                    "{} events of {} were archived meanwhile from another record",
                    file.events.len() - taken.len(),
                    file.key
                )));
            }
        }
        Ok(())
    }
}
