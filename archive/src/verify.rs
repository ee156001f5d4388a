//! `bankctl archive verify`: the archive against the event store, event by event.
//!
//! Every event of the store (of one day, or of all) must be in the archive exactly
//! once, under the same stream and version; the archive must hold nothing the store
//! does not. Events the archiver has not reached yet count as missing: verify a past
//! day, or wait until the river `archive` has caught up.

use crate::files;
use crate::s3::Bucket;
use chrono::NaiveDate;
use serde::Serialize;
use sqlx::PgPool;
use std::collections::HashMap;
use uuid::Uuid;

/// At most this many ids of each kind of difference are listed (all are counted).
const LISTED: usize = 100;

/// What `verify` found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// The day verified; all days when absent.
    pub day: Option<NaiveDate>,
    pub files: usize,
    /// Events in the event store.
    pub stored: usize,
    /// Rows in the archive.
    pub archived: usize,
    /// In the store, not in the archive.
    pub missing: usize,
    /// In the archive, not in the store.
    pub extra: usize,
    /// In the archive more than once.
    pub duplicated: usize,
    /// In both, with another stream or version in the archive.
    pub mismatched: usize,
    /// Some of each: the ids.
    pub missing_ids: Vec<Uuid>,
    pub extra_ids: Vec<Uuid>,
    pub duplicated_ids: Vec<Uuid>,
    pub mismatched_ids: Vec<Uuid>,
}

impl Report {
    pub fn differences(&self) -> usize {
        self.missing + self.extra + self.duplicated + self.mismatched
    }
}

/// Compares the archive (all of it, or the partition of `day`) with the event store.
pub async fn verify(pool: &PgPool, bucket: &Bucket, day: Option<NaiveDate>) -> anyhow::Result<Report> {
    let prefix = match day {
        Some(day) => format!("{}day={day}/", files::EVENTS_PREFIX),
        None => files::EVENTS_PREFIX.to_owned(),
    };
    let objects = bucket.list(&prefix).await?;
    let mut archived: HashMap<Uuid, (Uuid, i32, usize)> = HashMap::new();
    let mut report = Report { day, ..Report::default() };
    for object in objects.iter().filter(|o| files::range_of(&o.key).is_some()) {
        let Some(body) = bucket.get(&object.key).await? else { continue };
        report.files += 1;
        for row in files::read(body)? {
            report.archived += 1;
            let e = &row.envelope;
            archived.entry(e.event_id).or_insert((e.stream_id, e.version, 0)).2 += 1;
        }
    }
    let stored: Vec<(Uuid, Uuid, i32)> = match day {
        Some(day) => {
            sqlx::query_as(
                "select event_id, stream_id, version from es.events
                 where recorded_at >= $1 and recorded_at < $1 + interval '1 day'",
            )
            .bind(day.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
            .fetch_all(pool)
            .await?
        }
        None => sqlx::query_as("select event_id, stream_id, version from es.events").fetch_all(pool).await?,
    };
    report.stored = stored.len();
    let note = |ids: &mut Vec<Uuid>, count: &mut usize, id: Uuid| {
        *count += 1;
        if ids.len() < LISTED {
            ids.push(id);
        }
    };
    for (id, stream, version) in &stored {
        match archived.remove(id) {
            None => note(&mut report.missing_ids, &mut report.missing, *id),
            Some((s, v, copies)) => {
                if (s, v) != (*stream, *version) {
                    note(&mut report.mismatched_ids, &mut report.mismatched, *id);
                }
                if copies > 1 {
                    note(&mut report.duplicated_ids, &mut report.duplicated, *id);
                }
            }
        }
    }
    let mut extra: Vec<Uuid> = archived.into_keys().collect();
    extra.sort();
    for id in extra {
        note(&mut report.extra_ids, &mut report.extra, id);
    }
    Ok(report)
}
