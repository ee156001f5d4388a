//! The `poll` source: reads `es.events` by an `(xid, position)` cursor, only below the
//! oldest transaction still running.
//!
//! Every transaction with an xid below `pg_snapshot_xmin(pg_current_snapshot())` has
//! ended, so its rows are final: none can still appear behind the cursor. A cursor on
//! `position` alone loses events, because positions are handed out at insert and
//! transactions commit in another order. Within a stream, a later version is written
//! by a later transaction (an append reads the stream's last version first), so
//! `(xid, position)` order keeps each stream's versions in order.
//!
//! The price: one long transaction anywhere in the database holds the tailer back
//! until it ends. The `wal` source has no such limit.

use crate::{EventSource, SourceBatch};
use eventstore::envelope::RecordedEvent;
use eventstore::store::{EventRow, StoreError};
use sqlx::PgPool;

/// The cursor: the last published event's transaction id (as text, sqlx has no
/// `xid8`) and position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollCursor {
    pub xid: String,
    pub position: i64,
}

pub struct PollSource {
    pool: PgPool,
    name: String,
    /// Where reading goes on: after the last event read, acknowledged or not (the
    /// tailer reads ahead while earlier events are being published).
    cursor: PollCursor,
    /// Only transactions below this one (a backfill's bound), as text.
    until_xid: Option<String>,
}

impl PollSource {
    /// The source named `name`. Nothing is touched until [`EventSource::resume`]
    /// (a new source starts at the beginning of the store).
    pub fn new(pool: PgPool, name: &str) -> Self {
        PollSource { pool, name: name.to_owned(), cursor: PollCursor { xid: "0".into(), position: 0 }, until_xid: None }
    }

    /// True once every transaction below the bound has ended and been read: the
    /// caller has just read an empty batch.
    pub(crate) async fn bound_reached(&self) -> Result<bool, StoreError> {
        let Some(until) = &self.until_xid else { return Ok(false) };
        let done: bool = sqlx::query_scalar("select pg_snapshot_xmin(pg_current_snapshot()) >= $1::text::xid8")
            .bind(until)
            .fetch_one(&self.pool)
            .await?;
        Ok(done)
    }
}

#[derive(sqlx::FromRow)]
struct Row {
    xid_txt: String,
    #[sqlx(flatten)]
    event: EventRow,
}

impl EventSource for PollSource {
    type Ack = PollCursor;

    async fn read(&mut self, max: usize) -> Result<SourceBatch<PollCursor>, StoreError> {
        // `xid::text AS xid_txt`: ordering by the text would sort 999 after 1000
        let rows: Vec<Row> = sqlx::query_as(
            "select xid::text as xid_txt, position, stream_id, stream_type, version, event_id, type,
                    schema_version, data, metadata, recorded_at
             from es.events
             where (xid, position) > ($1::text::xid8, $2)
               and xid < pg_snapshot_xmin(pg_current_snapshot())
               and ($4::text is null or xid < $4::text::xid8)
             order by xid, position
             limit $3",
        )
        .bind(&self.cursor.xid)
        .bind(self.cursor.position)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .bind(self.until_xid.as_deref())
        .fetch_all(&self.pool)
        .await?;
        let ack = rows.last().map(|r| PollCursor { xid: r.xid_txt.clone(), position: r.event.position });
        if let Some(read) = &ack {
            self.cursor = read.clone();
        }
        let events = rows.into_iter().map(|r| RecordedEvent::from(r.event)).collect();
        Ok(SourceBatch { events, ack })
    }

    async fn resume(&mut self) -> Result<(), StoreError> {
        sqlx::query(
            "insert into rapids.tailer_position (source, xid, position) values ($1, '0', 0) on conflict do nothing",
        )
        .bind(&self.name)
        .execute(&self.pool)
        .await?;
        let (xid, position, until_xid): (String, i64, Option<String>) = sqlx::query_as(
            "select coalesce(xid::text, '0'), position, until_xid::text from rapids.tailer_position where source = $1",
        )
        .bind(&self.name)
        .fetch_one(&self.pool)
        .await?;
        self.cursor = PollCursor { xid, position };
        self.until_xid = until_xid;
        Ok(())
    }

    async fn ack(&mut self, cursor: PollCursor) -> Result<(), StoreError> {
        sqlx::query("update rapids.tailer_position set xid = $2::text::xid8, position = $3, updated_at = now() where source = $1")
            .bind(&self.name)
            .bind(&cursor.xid)
            .bind(cursor.position)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
