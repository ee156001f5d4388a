//! The `wal` source: logical decoding of the transaction log with the built-in
//! `pgoutput` plugin, streamed over a replication connection.
//!
//! [`ReplicationStream`] runs `START_REPLICATION` on the slot: one decoding session
//! that sends the committed changes of the publication `rapids_events` (inserts into
//! `es.events` and the heartbeat table) in commit order, whole transactions, as soon as
//! their WAL is flushed. Once Kinesis acknowledged a batch, the source confirms the
//! batch's last commit to the server and the slot moves there; a crash before that
//! streams the batch again from the slot's confirmed position (duplicates, never
//! losses). The slot keeps the WAL it has not been moved past. Needs `wal_level =
//! logical` and a role with REPLICATION (and a `pg_hba.conf` line for replication
//! connections when not trusted).
//!
//! The SQL slot functions (`pg_logical_slot_peek_binary_changes`) were the first
//! transport: each call is a new decoding session that starts again at the slot's
//! `restart_lsn`, which moves only at running-xacts records, so under load every
//! read decoded seconds of WAL again (docs/ARCHITECTURE.md, "The tailer").

use crate::poll::{PollCursor, PollSource};
use crate::replication::{Committed, ReplicationError, ReplicationStream, ReplicationTarget};
use crate::{EventSource, SourceBatch};
use chrono::{DateTime, Utc};
use eventstore::envelope::{EventMetadata, RecordedEvent};
use eventstore::store::StoreError;
use sqlx::PgPool;
use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;
use uuid::Uuid;

pub const PUBLICATION: &str = "rapids_events";

pub struct WalSource {
    pool: PgPool,
    slot: String,
    target: ReplicationTarget,
    /// The slot's stream, once the backfill (if any) is done.
    stream: Option<ReplicationStream>,
    /// A transaction [`EventSource::wait`] took from the stream.
    pending: Option<Committed>,
    /// Events committed before the slot existed, read from the table first.
    backfill: Option<PollSource>,
    /// When this source last wrote a heartbeat.
    last_heartbeat: Option<std::time::Instant>,
}

/// How often an idle source writes a heartbeat.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// How long starting the stream waits for the slot to be released (by the walsender
/// of this tailer's previous connection, or of a dead instance's).
const SLOT_RELEASE_WAIT: Duration = Duration::from_secs(10);

/// What acknowledges a batch of the wal source.
#[derive(Debug)]
pub enum WalAck {
    /// The WAL position after the batch's last COMMIT.
    Lsn(u64),
    /// The backfill's cursor.
    Backfill(PollCursor),
    /// The backfill is complete.
    BackfillDone,
}

#[derive(Debug, Clone)]
struct Relation {
    namespace: String,
    name: String,
    columns: Vec<String>,
}

impl WalSource {
    /// The source of slot `slot`, streamed from the server, port, user and database of
    /// `pool`, with its password and its `sslmode` and `sslrootcert` (see
    /// [`ReplicationTarget::new`]). Nothing is touched until [`EventSource::resume`],
    /// which runs only in the active instance.
    pub fn new(pool: PgPool, slot: &str) -> Self {
        let target = ReplicationTarget::new(&pool.connect_options());
        WalSource {
            pool,
            slot: slot.to_owned(),
            target,
            stream: None,
            pending: None,
            backfill: None,
            last_heartbeat: None,
        }
    }

    /// The replication connection logs in with `password` instead of the pool's.
    pub fn password(mut self, password: String) -> Self {
        self.target = self.target.with_password(Some(password));
        self
    }

    /// Where the replication connection goes, and how.
    pub fn target(&self) -> &ReplicationTarget {
        &self.target
    }

    /// Creates the slot when it is missing, owing a backfill of what committed before it.
    ///
    /// A new slot decodes only what commits after it exists; whatever committed before
    /// is read from `es.events` first (the poll source's cursor), below a bound taken
    /// after the slot exists: `pg_current_xact_id()` of a later statement, above the xid
    /// of every transaction that committed before the slot. Transactions below it that
    /// committed after the slot's start are also decoded: duplicates, never gaps. The
    /// backfill row is written *before* the slot, so a crash in between leaves a debt
    /// that the next resume settles, never a slot without its backfill.
    async fn ensure_slot(&self) -> Result<(), StoreError> {
        let name = backfill_name(&self.slot);
        let exists: bool = sqlx::query_scalar(
            "select exists (select 1 from pg_replication_slots where slot_name = $1 and database = current_database())",
        )
        .bind(&self.slot)
        .fetch_one(&self.pool)
        .await?;
        if !exists {
            sqlx::query(
                "insert into rapids.tailer_position (source, xid, position, until_xid) values ($1, '0', 0, null)
                 on conflict (source) do update set xid = '0', position = 0, until_xid = null, updated_at = now()",
            )
            .bind(&name)
            .execute(&self.pool)
            .await?;
            sqlx::query("select pg_create_logical_replication_slot($1, 'pgoutput')")
                .bind(&self.slot)
                .execute(&self.pool)
                .await?;
            tracing::info!(slot = %self.slot, "created the logical replication slot; backfilling what committed before it");
        }
        // a backfill owed without its bound (a crash right after creating the slot): a
        // bound taken now is later than needed, which only adds duplicates
        sqlx::query("update rapids.tailer_position set until_xid = pg_current_xact_id() where source = $1 and until_xid is null")
            .bind(&name)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Drops the slot (tests, and operators retiring a tailer).
    /// A slot still in use (its walsender not yet gone after the tailer stopped) is
    /// waited for, up to 10 s.
    pub async fn drop_slot(pool: &PgPool, slot: &str) -> Result<(), StoreError> {
        let in_use = |e: &sqlx::Error| e.as_database_error().and_then(|d| d.code()).as_deref() == Some(SLOT_IN_USE);
        while_slot_in_use(in_use, || {
            sqlx::query("select pg_drop_replication_slot(slot_name) from pg_replication_slots where slot_name = $1")
                .bind(slot)
                .execute(pool)
        })
        .await?;
        Ok(())
    }

    /// Starts streaming the slot from its confirmed position.
    async fn start_stream(&mut self) -> Result<(), StoreError> {
        self.release();
        let (target, slot) = (&self.target, &self.slot);
        let stream =
            while_slot_in_use(ReplicationError::slot_in_use, || ReplicationStream::start(target, slot, PUBLICATION))
                .await?;
        self.stream = Some(stream);
        Ok(())
    }
}

/// The SQLSTATE of a slot another connection is using (object_in_use).
pub(super) const SLOT_IN_USE: &str = "55006";

/// Runs `attempt` again while it fails because the slot is in use (a walsender that
/// has not yet let go of it), for up to [`SLOT_RELEASE_WAIT`].
async fn while_slot_in_use<T, E, F: Future<Output = Result<T, E>>>(
    in_use: impl Fn(&E) -> bool,
    mut attempt: impl FnMut() -> F,
) -> Result<T, E> {
    let deadline = tokio::time::Instant::now() + SLOT_RELEASE_WAIT;
    loop {
        match attempt().await {
            Err(e) if in_use(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            outcome => return outcome,
        }
    }
}

impl WalSource {
    /// Nothing to decode: write a heartbeat (at most once a second). The next read
    /// then returns its commit, and acknowledging that advances the slot past
    /// everything else written meanwhile, so an idle slot does not pin WAL.
    async fn heartbeat(&mut self) -> Result<(), StoreError> {
        if self.last_heartbeat.is_some_and(|at| at.elapsed() < HEARTBEAT_EVERY) {
            return Ok(());
        }
        sqlx::query("with gone as (delete from rapids.heartbeat) insert into rapids.heartbeat default values")
            .execute(&self.pool)
            .await?;
        self.last_heartbeat = Some(std::time::Instant::now());
        Ok(())
    }
}

fn backfill_name(slot: &str) -> String {
    format!("{slot}:backfill")
}

impl EventSource for WalSource {
    type Ack = WalAck;

    async fn read(&mut self, max: usize) -> Result<SourceBatch<WalAck>, StoreError> {
        if let Some(backfill) = &mut self.backfill {
            // the bound first, then the read: when every transaction below the bound had
            // ended before the read began, an empty read means the backfill is complete
            let bound_reached = backfill.bound_reached().await?;
            let batch = backfill.read(max).await?;
            if !batch.events.is_empty() {
                return Ok(SourceBatch { events: batch.events, ack: batch.ack.map(WalAck::Backfill) });
            }
            return Ok(SourceBatch { events: Vec::new(), ack: bound_reached.then_some(WalAck::BackfillDone) });
        }
        let Some(stream) = &mut self.stream else {
            return Err(StoreError::Unavailable("the replication stream is not started".into()));
        };
        let mut events = Vec::new();
        let mut ack = None;
        let mut waited = self.pending.take();
        while events.len() < max {
            let next = match waited.take() {
                Some(committed) => Some(committed),
                None => stream.try_next()?,
            };
            let Some(committed) = next else { break };
            events.extend(committed.events);
            ack = Some(WalAck::Lsn(committed.end_lsn));
        }
        if events.is_empty() && ack.is_none() {
            self.heartbeat().await?;
        }
        Ok(SourceBatch { events, ack })
    }

    async fn resume(&mut self) -> Result<(), StoreError> {
        // the slot is the position: a previous stream ends, the next starts there
        self.release();
        self.ensure_slot().await?;
        let pending: bool =
            sqlx::query_scalar("select exists (select 1 from rapids.tailer_position where source = $1)")
                .bind(backfill_name(&self.slot))
                .fetch_one(&self.pool)
                .await?;
        self.backfill = if pending {
            let mut backfill = PollSource::new(self.pool.clone(), &backfill_name(&self.slot));
            backfill.resume().await?;
            Some(backfill)
        } else {
            self.start_stream().await?;
            None
        };
        Ok(())
    }

    fn release(&mut self) {
        // the stream's task reports the last confirmed position and closes the
        // connection; the walsender lets go of the slot
        self.stream = None;
        self.pending = None;
    }

    async fn wait(&mut self) -> Result<(), StoreError> {
        match &mut self.stream {
            Some(stream) if self.pending.is_none() => {
                self.pending = Some(stream.next().await?);
                Ok(())
            }
            Some(_) => Ok(()),
            // the backfill reads the table: the append's NOTIFY wakes the tailer
            None => std::future::pending().await,
        }
    }

    async fn ack(&mut self, ack: WalAck) -> Result<(), StoreError> {
        match ack {
            WalAck::Lsn(lsn) => match &self.stream {
                Some(stream) => stream.confirm(lsn),
                None => return Err(StoreError::Unavailable("the replication stream is not started".into())),
            },
            WalAck::Backfill(cursor) => {
                if let Some(backfill) = &mut self.backfill {
                    backfill.ack(cursor).await?;
                }
            }
            WalAck::BackfillDone => {
                sqlx::query("delete from rapids.tailer_position where source = $1")
                    .bind(backfill_name(&self.slot))
                    .execute(&self.pool)
                    .await?;
                self.backfill = None;
                tracing::info!(slot = %self.slot, "backfill complete; following the slot");
                self.start_stream().await?;
            }
        }
        Ok(())
    }
}

/// Assembles pgoutput messages into committed transactions.
#[derive(Default)]
pub(super) struct Transactions {
    /// Columns of each relation id, from the Relation messages.
    relations: HashMap<u32, Relation>,
    /// The events of the transaction being received.
    events: Vec<RecordedEvent>,
}

impl Transactions {
    /// Takes the next message; returns the transaction its COMMIT ends.
    pub(super) fn feed(&mut self, message: &[u8]) -> Result<Option<Committed>, StoreError> {
        match decode(message)? {
            Message::Relation { id, relation } => {
                self.relations.insert(id, relation);
            }
            Message::Insert { relation, values } => {
                let rel = self
                    .relations
                    .get(&relation)
                    .ok_or_else(|| StoreError::Corrupt(format!("insert into unknown relation {relation}")))?;
                if rel.namespace == "es" && rel.name == "events" {
                    self.events.push(event_from_columns(&rel.columns, values)?);
                }
            }
            Message::Begin => self.events.clear(),
            Message::Commit { end_lsn } => {
                return Ok(Some(Committed { events: std::mem::take(&mut self.events), end_lsn }));
            }
            Message::Other => {}
        }
        Ok(None)
    }
}

#[derive(Debug)]
enum Message {
    Begin,
    /// `end_lsn`: the WAL position just after the commit record.
    Commit {
        end_lsn: u64,
    },
    Relation {
        id: u32,
        relation: Relation,
    },
    Insert {
        relation: u32,
        values: Vec<Option<String>>,
    },
    Other,
}

/// A cursor over one pgoutput message.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.bytes.len() < n {
            return Err(StoreError::Corrupt("truncated pgoutput message".into()));
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, StoreError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        Ok((u64::from(self.u32()?) << 32) | u64::from(self.u32()?))
    }
    fn string(&mut self) -> Result<String, StoreError> {
        let end =
            self.bytes.iter().position(|b| *b == 0).ok_or_else(|| StoreError::Corrupt("unterminated string".into()))?;
        let s = String::from_utf8_lossy(&self.bytes[..end]).into_owned();
        self.bytes = &self.bytes[end + 1..];
        Ok(s)
    }
}

/// Decodes the pgoutput (protocol 1) messages the tailer needs.
fn decode(data: &[u8]) -> Result<Message, StoreError> {
    let mut r = Reader { bytes: data };
    Ok(match r.u8()? {
        b'B' => Message::Begin,
        b'C' => {
            let _flags = r.u8()?;
            let _commit_lsn = r.u64()?;
            Message::Commit { end_lsn: r.u64()? }
        }
        b'R' => {
            let id = r.u32()?;
            let namespace = r.string()?;
            let name = r.string()?;
            let _replica_identity = r.u8()?;
            let n = r.u16()?;
            let mut columns = Vec::with_capacity(n as usize);
            for _ in 0..n {
                let _flags = r.u8()?;
                columns.push(r.string()?);
                let _type_oid = r.u32()?;
                let _type_modifier = r.u32()?;
            }
            Message::Relation { id, relation: Relation { namespace, name, columns } }
        }
        b'I' => {
            let relation = r.u32()?;
            if r.u8()? != b'N' {
                return Err(StoreError::Corrupt("insert without a new tuple".into()));
            }
            let n = r.u16()?;
            let mut values = Vec::with_capacity(n as usize);
            for _ in 0..n {
                values.push(match r.u8()? {
                    b'n' | b'u' => None,
                    b't' => {
                        let len = r.u32()? as usize;
                        Some(String::from_utf8_lossy(r.take(len)?).into_owned())
                    }
                    other => return Err(StoreError::Corrupt(format!("unknown tuple column kind {other}"))),
                });
            }
            Message::Insert { relation, values }
        }
        _ => Message::Other,
    })
}

/// Builds an event from the text values of an `es.events` row.
fn event_from_columns(columns: &[String], values: Vec<Option<String>>) -> Result<RecordedEvent, StoreError> {
    let mut by_name: HashMap<&str, String> = HashMap::new();
    for (name, value) in columns.iter().zip(values) {
        if let Some(v) = value {
            by_name.insert(name.as_str(), v);
        }
    }
    let get =
        |name: &str| by_name.get(name).ok_or_else(|| StoreError::Corrupt(format!("decoded event without {name}")));
    let bad = |name: &str| StoreError::Corrupt(format!("decoded event with a bad {name}"));
    let uuid = |name: &str| get(name).and_then(|v| Uuid::parse_str(v).map_err(|_| bad(name)));
    let json = |name: &str| get(name).and_then(|v| serde_json::from_str::<serde_json::Value>(v).map_err(|_| bad(name)));
    Ok(RecordedEvent {
        position: get("position")?.parse().map_err(|_| bad("position"))?,
        stream_id: uuid("stream_id")?,
        stream_type: get("stream_type")?.clone(),
        version: get("version")?.parse().map_err(|_| bad("version"))?,
        event_id: uuid("event_id")?,
        event_type: get("type")?.clone(),
        schema_version: get("schema_version")?.parse().map_err(|_| bad("schema_version"))?,
        data: json("data")?,
        metadata: serde_json::from_value::<EventMetadata>(json("metadata")?).unwrap_or_default(),
        recorded_at: parse_timestamptz(get("recorded_at")?).ok_or_else(|| bad("recorded_at"))?,
    })
}

/// Parses Postgres's text form of a timestamptz (`2026-11-21 10:00:00.123+00`).
fn parse_timestamptz(text: &str) -> Option<DateTime<Utc>> {
    let sign = text.rfind(['+', '-'])?;
    let mut normalized = text.to_owned();
    if text.len() - sign == 3 {
        normalized.push_str(":00");
    }
    DateTime::parse_from_str(&normalized, "%Y-%m-%d %H:%M:%S%.f%:z").ok().map(|d| d.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_postgres_timestamptz_text() {
        let t = parse_timestamptz("2026-11-21 10:00:00.123456+00").expect("parses");
        assert_eq!(t.to_rfc3339(), "2026-11-21T10:00:00.123456+00:00");
        let t = parse_timestamptz("2026-11-21 12:00:00+02").expect("parses");
        assert_eq!(t.to_rfc3339(), "2026-11-21T10:00:00+00:00");
        let t = parse_timestamptz("2026-11-21 04:30:00-05:30").expect("parses");
        assert_eq!(t.to_rfc3339(), "2026-11-21T10:00:00+00:00");
    }

    #[test]
    fn decodes_relation_and_insert_messages() {
        let mut rel = vec![b'R'];
        rel.extend(16384u32.to_be_bytes());
        rel.extend(b"es\0events\0");
        rel.push(b'd');
        rel.extend(2u16.to_be_bytes());
        for name in ["position", "type"] {
            rel.push(0);
            rel.extend(name.as_bytes());
            rel.push(0);
            rel.extend(20u32.to_be_bytes());
            rel.extend(u32::MAX.to_be_bytes());
        }
        let Message::Relation { id, relation } = decode(&rel).expect("decodes") else { panic!("not a relation") };
        assert_eq!((id, relation.namespace.as_str(), relation.name.as_str()), (16384, "es", "events"));
        assert_eq!(relation.columns, vec!["position", "type"]);

        let mut ins = vec![b'I'];
        ins.extend(16384u32.to_be_bytes());
        ins.push(b'N');
        ins.extend(2u16.to_be_bytes());
        ins.push(b't');
        ins.extend(2u32.to_be_bytes());
        ins.extend(b"42");
        ins.push(b'n');
        let Message::Insert { relation, values } = decode(&ins).expect("decodes") else { panic!("not an insert") };
        assert_eq!((relation, values), (16384, vec![Some("42".to_owned()), None]));
        assert!(decode(&ins[..8]).is_err(), "a truncated message is an error, not a guess");
    }
}
