//! The Postgres event store: `es.events`, `es.snapshots` (with `es.snapshot_history`),
//! `es.idempotency`.
//!
//! An append is one SQL statement (events, the snapshot when due, and the
//! idempotency record), so it is one round trip and atomic without an explicit
//! transaction. Its `unique (stream_id, version)` constraint is the optimistic
//! concurrency check: the loser of a race gets [`StoreError::Conflict`].

use crate::aggregate::{self, Aggregate, DomainEvent, EventCodecError};
use crate::envelope::{EventMetadata, RecordedEvent};
use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

/// What can go wrong talking to the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another writer appended to the stream first (or the expected version is not
    /// the stream's current one).
    #[error("stream {stream_id} is not at version {expected}")]
    Conflict { stream_id: Uuid, expected: i32 },
    /// Another request with the same actor and Idempotency-Key committed first.
    #[error("idempotency key already used")]
    IdempotencyKeyTaken,
    #[error(transparent)]
    Codec(#[from] EventCodecError),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The database cannot be reached or has no free connection.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// The batch this append was part of failed as a whole.
    #[error("the batch of appends failed: {0}")]
    Batch(String),
}

impl StoreError {
    /// The same failure for each member of a batch (sqlx errors cannot be cloned).
    pub fn shared(&self) -> StoreError {
        match self {
            // known to have written nothing; an I/O error mid-statement is not (its
            // outcome is unknown), so it stays an opaque fault
            StoreError::Database(sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed) | StoreError::Unavailable(_) => {
                StoreError::Unavailable(self.to_string())
            }
            other => StoreError::Batch(other.to_string()),
        }
    }
}

/// An aggregate's state and the version of its last event (0 for a stream that does not exist).
#[derive(Debug, Clone)]
pub struct Loaded<A> {
    pub state: A,
    pub version: i32,
}

impl<A: Aggregate> Loaded<A> {
    pub fn new_stream() -> Self {
        Loaded { state: A::default(), version: 0 }
    }
}

/// An event about to be appended.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i16,
    pub data: serde_json::Value,
    /// Its own metadata, when it is not the append's (one append carrying several
    /// commands of one stream: each event keeps its request's ids and actor).
    pub metadata: Option<EventMetadata>,
}

impl NewEvent {
    pub fn from_domain<E: DomainEvent>(event: &E) -> Result<Self, EventCodecError> {
        let (event_type, data) = aggregate::encode(event)?;
        let schema_version = E::schema_version(&event_type);
        Ok(NewEvent { event_id: Uuid::now_v7(), event_type, schema_version, data, metadata: None })
    }
}

/// A snapshot to write with an append.
#[derive(Debug, Clone)]
pub struct SnapshotWrite {
    pub version: i32,
    pub schema_version: i16,
    pub state: serde_json::Value,
}

/// The idempotency record to write with an append.
#[derive(Debug, Clone)]
pub struct IdempotencyWrite {
    pub actor: String,
    pub key: String,
    pub request_hash: String,
    /// The command's answer, opaque to the store.
    pub body: serde_json::Value,
}

/// A stored idempotency record.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub request_hash: String,
    pub body: serde_json::Value,
}

/// Everything one append writes.
#[derive(Debug, Clone)]
pub struct Append {
    pub stream_id: Uuid,
    pub stream_type: &'static str,
    pub expected_version: i32,
    pub events: Vec<NewEvent>,
    pub metadata: EventMetadata,
    pub snapshot: Option<SnapshotWrite>,
    /// The idempotency records to write with it (one per command it carries that has
    /// a key).
    pub idempotency: Vec<IdempotencyWrite>,
}

/// Where the appended events landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub new_version: i32,
    pub first_position: i64,
    pub last_position: i64,
}

/// The actors of the saga's idempotency records (`saga:accounts`): they never expire.
pub const SAGA_ACTOR_PREFIX: &str = "saga:";

const EVENTS_VERSION_KEY: &str = "events_stream_version_key";
const IDEMPOTENCY_KEY: &str = "idempotency_pkey";

/// One statement appends a batch: for each append whose expected version is its
/// stream's last one (or 0 for a new stream), its events, its snapshot when one is
/// due, and its idempotency records. An append whose expected version is not the
/// stream's last writes nothing and is missing from the result. A unique violation
/// (another writer took a version or the idempotency key) aborts the whole statement.
const APPEND_SQL: &str = r#"
with appends as (
    select * from unnest($1::uuid[], $2::text[], $3::int[], $4::jsonb[])
        with ordinality as a(stream_id, stream_type, expected, metadata, idx)
), ready as (
    -- never leave a gap: the expected version must be the stream's last one
    select a.* from appends a
    where a.expected = 0
       or exists (select 1 from es.events x where x.stream_id = a.stream_id and x.version = a.expected)
), ev as (
    insert into es.events (stream_id, stream_type, version, event_id, type, schema_version, data, metadata)
    select r.stream_id, r.stream_type, r.expected + e.n, e.event_id, e.type, e.schema_version, e.data,
           coalesce(e.metadata, r.metadata)
    from unnest($5::int8[], $6::int[], $7::uuid[], $8::text[], $9::int2[], $10::jsonb[], $20::jsonb[])
        as e(idx, n, event_id, type, schema_version, data, metadata)
    join ready r on r.idx = e.idx
    order by e.idx, e.n
    returning stream_id, position
), snap as (
    insert into es.snapshots (stream_id, stream_type, version, schema_version, state)
    select r.stream_id, r.stream_type, s.version, s.schema_version, s.state
    from unnest($11::int8[], $12::int[], $13::int2[], $14::jsonb[]) as s(idx, version, schema_version, state)
    join ready r on r.idx = s.idx
    on conflict (stream_id) do update
        set version = excluded.version, schema_version = excluded.schema_version,
            state = excluded.state, taken_at = now()
        where es.snapshots.version < excluded.version
), snap_history as (
    -- every snapshot, for reads of the past (load_at)
    insert into es.snapshot_history (stream_id, stream_type, version, schema_version, state)
    select r.stream_id, r.stream_type, s.version, s.schema_version, s.state
    from unnest($11::int8[], $12::int[], $13::int2[], $14::jsonb[]) as s(idx, version, schema_version, state)
    join ready r on r.idx = s.idx
    on conflict (stream_id, version) do nothing
), idem as (
    insert into es.idempotency (actor, key, request_hash, body, stream_id)
    select i.actor, i.key, i.request_hash, i.body, r.stream_id
    from unnest($15::int8[], $16::text[], $17::text[], $18::text[], $19::jsonb[])
        as i(idx, actor, key, request_hash, body)
    join ready r on r.idx = i.idx
)
select r.idx, min(ev.position) as first_position, max(ev.position) as last_position
from ready r join ev on ev.stream_id = r.stream_id
group by r.idx
"#;

/// The column arrays of one batch statement.
#[derive(Default)]
struct BatchColumns {
    stream_ids: Vec<Uuid>,
    stream_types: Vec<&'static str>,
    expected: Vec<i32>,
    metadata: Vec<serde_json::Value>,
    ev_idx: Vec<i64>,
    ev_n: Vec<i32>,
    ev_ids: Vec<Uuid>,
    ev_types: Vec<String>,
    ev_schemas: Vec<i16>,
    ev_data: Vec<serde_json::Value>,
    ev_metadata: Vec<Option<serde_json::Value>>,
    snap_idx: Vec<i64>,
    snap_versions: Vec<i32>,
    snap_schemas: Vec<i16>,
    snap_states: Vec<serde_json::Value>,
    idem_idx: Vec<i64>,
    idem_actors: Vec<String>,
    idem_keys: Vec<String>,
    idem_hashes: Vec<String>,
    idem_bodies: Vec<serde_json::Value>,
}

impl BatchColumns {
    fn push(&mut self, idx: i64, append: &Append) -> Result<(), StoreError> {
        if append.events.is_empty() {
            return Err(StoreError::Corrupt("an append needs at least one event".into()));
        }
        self.stream_ids.push(append.stream_id);
        self.stream_types.push(append.stream_type);
        self.expected.push(append.expected_version);
        self.metadata.push(serde_json::to_value(&append.metadata).map_err(|e| StoreError::Corrupt(e.to_string()))?);
        for (n, event) in append.events.iter().enumerate() {
            self.ev_idx.push(idx);
            self.ev_n.push(n as i32 + 1);
            self.ev_ids.push(event.event_id);
            self.ev_types.push(event.event_type.clone());
            self.ev_schemas.push(event.schema_version);
            self.ev_data.push(event.data.clone());
            let own = event.metadata.as_ref().map(serde_json::to_value).transpose();
            self.ev_metadata.push(own.map_err(|e| StoreError::Corrupt(e.to_string()))?);
        }
        if let Some(snapshot) = &append.snapshot {
            self.snap_idx.push(idx);
            self.snap_versions.push(snapshot.version);
            self.snap_schemas.push(snapshot.schema_version);
            self.snap_states.push(snapshot.state.clone());
        }
        for idem in &append.idempotency {
            self.idem_idx.push(idx);
            self.idem_actors.push(idem.actor.clone());
            self.idem_keys.push(idem.key.clone());
            self.idem_hashes.push(idem.request_hash.clone());
            self.idem_bodies.push(idem.body.clone());
        }
        Ok(())
    }
}

/// The Postgres event store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventStore {
    pool: PgPool,
}

impl EventStore {
    pub fn new(pool: PgPool) -> Self {
        EventStore { pool }
    }

    /// Appends events at `expected_version + 1 ..` in one statement.
    pub async fn append(&self, append: &Append) -> Result<Appended, StoreError> {
        let mut results = self.append_batch(std::slice::from_ref(append)).await?;
        results.pop().unwrap_or_else(|| Err(StoreError::Corrupt("an append without a result".into())))
    }

    /// Appends a batch of appends to distinct streams in one statement and one commit
    /// (group commit), with a result per append. When a unique violation aborts the
    /// statement, each append is retried alone, so a conflict of one never fails the
    /// others. The outer error is a fault of the whole batch.
    #[tracing::instrument(skip_all, fields(appends = appends.len()), err(level = "debug"))]
    pub async fn append_batch(&self, appends: &[Append]) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        match self.append_once(appends).await {
            Ok(results) => Ok(results),
            Err(StoreError::Conflict { .. } | StoreError::IdempotencyKeyTaken) if appends.len() > 1 => {
                let mut results = Vec::with_capacity(appends.len());
                // each alone; a fault of one is that one's result, never the others'
                // (those before it have committed)
                for append in appends {
                    results.push(match self.append_once(std::slice::from_ref(append)).await {
                        Ok(mut one) => one.pop().unwrap_or_else(|| Err(StoreError::Corrupt("no result".into()))),
                        Err(e) => Err(e),
                    });
                }
                Ok(results)
            }
            Err(e) if appends.len() == 1 => Ok(vec![Err(e)]),
            Err(e) => Err(e),
        }
    }

    async fn append_once(&self, appends: &[Append]) -> Result<Vec<Result<Appended, StoreError>>, StoreError> {
        let mut c = BatchColumns::default();
        for (i, append) in appends.iter().enumerate() {
            c.push(i as i64 + 1, append)?;
        }
        let rows: Result<Vec<(i64, i64, i64)>, sqlx::Error> = sqlx::query_as(APPEND_SQL)
            .bind(&c.stream_ids)
            .bind(&c.stream_types)
            .bind(&c.expected)
            .bind(&c.metadata)
            .bind(&c.ev_idx)
            .bind(&c.ev_n)
            .bind(&c.ev_ids)
            .bind(&c.ev_types)
            .bind(&c.ev_schemas)
            .bind(&c.ev_data)
            .bind(&c.snap_idx)
            .bind(&c.snap_versions)
            .bind(&c.snap_schemas)
            .bind(&c.snap_states)
            .bind(&c.idem_idx)
            .bind(&c.idem_actors)
            .bind(&c.idem_keys)
            .bind(&c.idem_hashes)
            .bind(&c.idem_bodies)
            .bind(&c.ev_metadata)
            .fetch_all(&self.pool)
            .await;
        let rows = match rows {
            Ok(rows) => rows,
            Err(sqlx::Error::Database(db)) if db.constraint() == Some(EVENTS_VERSION_KEY) => {
                let first = &appends[0];
                return Err(StoreError::Conflict { stream_id: first.stream_id, expected: first.expected_version });
            }
            Err(sqlx::Error::Database(db)) if db.constraint() == Some(IDEMPOTENCY_KEY) => {
                return Err(StoreError::IdempotencyKeyTaken);
            }
            // a deadlock with another instance's batch, or a serialization failure:
            // nothing was written, so it is a conflict like any other
            Err(sqlx::Error::Database(db)) if matches!(db.code().as_deref(), Some("40P01" | "40001")) => {
                let first = &appends[0];
                return Err(StoreError::Conflict { stream_id: first.stream_id, expected: first.expected_version });
            }
            Err(e) => return Err(StoreError::Database(e)),
        };
        let mut done: Vec<Option<(i64, i64)>> = vec![None; appends.len()];
        for (idx, first, last) in rows {
            if let Some(slot) = usize::try_from(idx - 1).ok().and_then(|i| done.get_mut(i)) {
                *slot = Some((first, last));
            }
        }
        Ok(appends
            .iter()
            .zip(done)
            .map(|(append, positions)| match positions {
                Some((first_position, last_position)) => Ok(Appended {
                    new_version: append.expected_version + append.events.len() as i32,
                    first_position,
                    last_position,
                }),
                // its expected version is not the stream's last one
                None => Err(StoreError::Conflict { stream_id: append.stream_id, expected: append.expected_version }),
            })
            .collect())
    }

    /// Loads an aggregate: the latest snapshot of the code's schema version (one of
    /// another version is ignored: the stream is replayed instead), then the events
    /// after it, each upcast from its stored schema version. `None` when the stream has
    /// no events of this stream type.
    #[tracing::instrument(skip_all, fields(stream_id = %stream_id), err(level = "debug"))]
    pub async fn load<A: Aggregate>(&self, stream_id: Uuid) -> Result<Option<Loaded<A>>, StoreError> {
        // one round trip: the snapshot (kind 0), then the events after it (kind 1)
        type Row = (i16, i32, Option<String>, i16, sqlx::types::Json<serde_json::Value>);
        let rows: Vec<Row> = sqlx::query_as(
            "with snapshot as (
                 select version, state from es.snapshots
                 where stream_id = $1 and stream_type = $2 and schema_version = $3
             )
             select 0::int2, version, null::text, 0::int2, state from snapshot
             union all
             select 1::int2, version, type, schema_version, data from es.events
             where stream_id = $1 and stream_type = $2
               and version > coalesce((select version from snapshot), 0)
             order by 1, 2",
        )
        .bind(stream_id)
        .bind(A::STREAM_TYPE)
        .bind(A::SNAPSHOT_SCHEMA_VERSION)
        .fetch_all(&self.pool)
        .await?;

        let mut rows = rows.into_iter().peekable();
        let (mut state, mut version) = match rows.next_if(|row| row.0 == 0) {
            Some((_, version, _, _, state)) => match serde_json::from_value::<A>(state.0) {
                Ok(state) => (state, version),
                // a snapshot the code cannot read is as good as none
                Err(error) => {
                    tracing::warn!(%error, "ignoring unreadable snapshot");
                    return self.load_full_replay(stream_id).await;
                }
            },
            None => (A::default(), 0),
        };
        for (_, v, event_type, schema_version, data) in rows {
            state = apply_next(stream_id, state, version, v, event_type.as_deref(), schema_version, data.0)?;
            version = v;
        }
        Ok((version > 0).then_some(Loaded { state, version }))
    }

    /// An aggregate folded from its stream's first event and, when the stream holds
    /// one, its first event of `marker_type`: for checks that need only what the
    /// first event fixed and whether one later change happened (an account's owner and
    /// currency, and whether it is closed) without loading the whole stream. Two index
    /// probes when `marker_type` is indexed by stream (`account.closed` is, migration
    /// 0011). `None` when there is no such stream.
    pub async fn load_first_and<A: Aggregate>(
        &self,
        stream_id: Uuid,
        marker_type: &str,
    ) -> Result<Option<A>, StoreError> {
        type Row = (i32, String, i16, sqlx::types::Json<serde_json::Value>);
        let rows: Vec<Row> = sqlx::query_as(
            "(select version, type, schema_version, data from es.events
              where stream_id = $1 and version = 1 and stream_type = $2)
             union all
             (select version, type, schema_version, data from es.events
              where stream_id = $1 and type = $3 and stream_type = $2 order by version limit 1)
             order by 1",
        )
        .bind(stream_id)
        .bind(A::STREAM_TYPE)
        .bind(marker_type)
        .fetch_all(&self.pool)
        .await?;
        if rows.first().is_none_or(|row| row.0 != 1) {
            return Ok(None);
        }
        let mut state = A::default();
        let mut applied = 0;
        for (version, event_type, schema_version, data) in rows {
            // the first event may be of the marker's type itself: once
            if version == applied {
                continue;
            }
            let event: A::Event = aggregate::decode_versioned(&event_type, schema_version, data.0)?;
            state = state.apply(&event);
            applied = version;
        }
        Ok(Some(state))
    }

    /// Loads an aggregate by replaying every event, ignoring snapshots.
    pub async fn load_full_replay<A: Aggregate>(&self, stream_id: Uuid) -> Result<Option<Loaded<A>>, StoreError> {
        let events = self.read_stream(stream_id, 0, None).await?;
        let mut loaded = Loaded { state: A::default(), version: 0 };
        for e in events.iter().filter(|e| e.stream_type == A::STREAM_TYPE) {
            let event: A::Event = aggregate::decode_versioned(&e.event_type, e.schema_version, e.data.clone())?;
            loaded = Loaded { state: loaded.state.apply(&event), version: e.version };
        }
        Ok((loaded.version > 0).then_some(loaded))
    }

    /// The stream's events after `after_version`, oldest first, at most `limit`.
    pub async fn read_stream(
        &self,
        stream_id: Uuid,
        after_version: i32,
        limit: Option<i64>,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "select position, stream_id, stream_type, version, event_id, type, schema_version,
                    data, metadata, recorded_at
             from es.events where stream_id = $1 and version > $2
             order by version limit $3",
        )
        .bind(stream_id)
        .bind(after_version)
        .bind(limit.unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(RecordedEvent::from).collect())
    }

    /// The stream's newest events of the given types, newest first.
    pub async fn latest_of_types(
        &self,
        stream_id: Uuid,
        types: &[&str],
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "select position, stream_id, stream_type, version, event_id, type, schema_version,
                    data, metadata, recorded_at
             from es.events where stream_id = $1 and type = any($2)
             order by version desc limit $3",
        )
        .bind(stream_id)
        .bind(types)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(RecordedEvent::from).collect())
    }

    /// Whether a stream of this type exists (its first event does): one index probe,
    /// for checks that need no state.
    pub async fn stream_exists(&self, stream_id: Uuid, stream_type: &str) -> Result<bool, StoreError> {
        let exists = sqlx::query_scalar(
            "select exists (select 1 from es.events where stream_id = $1 and version = 1 and stream_type = $2)",
        )
        .bind(stream_id)
        .bind(stream_type)
        .fetch_one(&self.pool)
        .await?;
        Ok(exists)
    }

    /// The stored response for an actor's Idempotency-Key, if any.
    pub async fn find_idempotent_response(&self, actor: &str, key: &str) -> Result<Option<StoredResponse>, StoreError> {
        let row: Option<(String, sqlx::types::Json<serde_json::Value>)> =
            sqlx::query_as("select request_hash, body from es.idempotency where actor = $1 and key = $2")
                .bind(actor)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(request_hash, body)| StoredResponse { request_hash, body: body.0 }))
    }

    /// Deletes up to `batch` HTTP Idempotency-Key records created more than `older_than`
    /// ago, oldest first; returns how many. The saga's step records (actor `saga:…`,
    /// see [`SAGA_ACTOR_PREFIX`]) are never deleted: they keep a redelivered step from
    /// applying twice, however late it comes. Rows another cleanup is deleting are
    /// skipped, not waited for, so instances may run the cleanup at once.
    #[tracing::instrument(skip_all, fields(batch = batch), err(level = "debug"))]
    pub async fn expire_idempotency(&self, older_than: std::time::Duration, batch: i64) -> Result<u64, StoreError> {
        // the predicate is the partial index's (migration 0009), word for word
        let deleted = sqlx::query(
            "delete from es.idempotency
             where (actor, key) in (
                 select actor, key from es.idempotency
                 where actor not like 'saga:%' and created_at < now() - make_interval(secs => $1)
                 order by created_at
                 limit $2
                 for update skip locked)",
        )
        .bind(older_than.as_secs_f64())
        .bind(batch.max(1))
        .execute(&self.pool)
        .await?;
        Ok(deleted.rows_affected())
    }

    /// An aggregate as it was: the fold of its stream's events up to `max_version`
    /// (when given) and before the first event recorded after `recorded_by` (when
    /// given), each upcast like [`EventStore::load`]'s. It starts from the newest
    /// snapshot of the code's schema version at or before that point
    /// (`es.snapshot_history`) and reads only the events up to the next snapshot, so
    /// the rows read are bounded by the snapshot interval however long the stream is.
    /// `loaded` is `None` when the stream had no event by then.
    ///
    /// A stream's recording times follow its versions (an append starts after the
    /// version it extends committed, and `recorded_at` is its statement's `now()`), so
    /// a snapshot taken by `recorded_by` lies within the point's prefix.
    #[tracing::instrument(skip_all, fields(stream_id = %stream_id), err(level = "debug"))]
    pub async fn load_at<A: Aggregate>(
        &self,
        stream_id: Uuid,
        max_version: Option<i32>,
        recorded_by: Option<DateTime<Utc>>,
    ) -> Result<PastState<A>, StoreError> {
        match self.fold_at(stream_id, max_version, recorded_by, true).await? {
            Some(past) => Ok(past),
            // a snapshot the code cannot read is as good as none (as in `load`)
            None => Ok(self
                .fold_at(stream_id, max_version, recorded_by, false)
                .await?
                .unwrap_or(PastState { loaded: None, rows_read: 0 })),
        }
    }

    /// [`EventStore::load_at`]'s fold, from a snapshot when `snapshots`; `None` when
    /// the snapshot it found does not decode.
    async fn fold_at<A: Aggregate>(
        &self,
        stream_id: Uuid,
        max_version: Option<i32>,
        recorded_by: Option<DateTime<Utc>>,
        snapshots: bool,
    ) -> Result<Option<PastState<A>>, StoreError> {
        type Row = (i16, i32, Option<String>, i16, sqlx::types::Json<serde_json::Value>, Option<DateTime<Utc>>);
        // by a time, the snapshot index on taken_at finds the start; by a version, the key
        let order = if recorded_by.is_some() { "taken_at desc, version desc" } else { "version desc" };
        let sql = format!(
            "with snapshot as (
                 select version, state from es.snapshot_history
                 where $6 and stream_id = $1 and stream_type = $2 and schema_version = $3
                   and ($4::int4 is null or version <= $4)
                   and ($5::timestamptz is null or taken_at <= $5)
                 order by {order} limit 1
             ), start as (
                 select coalesce((select version from snapshot), 0) as version
             ), stop as (
                 -- the next snapshot lies past the point: no event after it is needed
                 select coalesce(min(h.version), 2147483647) as version from es.snapshot_history h, start
                 where $6 and h.stream_id = $1 and h.stream_type = $2 and h.schema_version = $3
                   and h.version > start.version
             )
             select 0::int2, version, null::text, 0::int2, state, null::timestamptz from snapshot
             union all
             select 1::int2, e.version, e.type, e.schema_version, e.data, e.recorded_at
             from es.events e, start, stop
             where e.stream_id = $1 and e.stream_type = $2
               and e.version > start.version and e.version <= stop.version
               and ($4::int4 is null or e.version <= $4)
             order by 1, 2"
        );
        let rows: Vec<Row> = sqlx::query_as(&sql)
            .bind(stream_id)
            .bind(A::STREAM_TYPE)
            .bind(A::SNAPSHOT_SCHEMA_VERSION)
            .bind(max_version)
            .bind(recorded_by)
            .bind(snapshots)
            .fetch_all(&self.pool)
            .await?;
        let rows_read = rows.len();
        let mut rows = rows.into_iter().peekable();
        let (mut state, mut version) = match rows.next_if(|row| row.0 == 0) {
            Some((_, version, _, _, state, _)) => match serde_json::from_value::<A>(state.0) {
                Ok(state) => (state, version),
                Err(error) => {
                    tracing::warn!(%error, version, "ignoring unreadable snapshot");
                    return Ok(None);
                }
            },
            None => (A::default(), 0),
        };
        for (_, v, event_type, schema_version, data, recorded_at) in rows {
            if recorded_by.is_some_and(|by| recorded_at.is_some_and(|at| at > by)) {
                break;
            }
            state = apply_next(stream_id, state, version, v, event_type.as_deref(), schema_version, data.0)?;
            version = v;
        }
        let loaded = (version > 0).then_some(Loaded { state, version });
        Ok(Some(PastState { loaded, rows_read }))
    }

    /// The stream's newest events of the given types at or below `max_version`, newest first.
    pub async fn latest_of_types_until(
        &self,
        stream_id: Uuid,
        types: &[&str],
        max_version: i32,
        limit: i64,
    ) -> Result<Vec<RecordedEvent>, StoreError> {
        let rows: Vec<EventRow> = sqlx::query_as(
            "select position, stream_id, stream_type, version, event_id, type, schema_version,
                    data, metadata, recorded_at
             from es.events where stream_id = $1 and type = any($2) and version <= $3
             order by version desc limit $4",
        )
        .bind(stream_id)
        .bind(types)
        .bind(max_version)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(RecordedEvent::from).collect())
    }

    /// The stream's newest event for each distinct value of its data's `key` (events
    /// without it are left out), newest first, at most `limit`: e.g. an account's
    /// latest step of each transfer (`transfer_id`). Read backwards by version a page
    /// at a time, so the rows read are those since the `limit`-th value's newest
    /// event, not the whole stream; also returns how many rows were read (all of them,
    /// with the key or not).
    pub async fn latest_per_data_key(
        &self,
        stream_id: Uuid,
        key: &str,
        limit: i64,
    ) -> Result<(Vec<RecordedEvent>, usize), StoreError> {
        let page = limit.saturating_mul(2).clamp(64, 2000);
        let wanted = usize::try_from(limit).unwrap_or(0);
        let (mut seen, mut latest, mut rows_read) = (std::collections::HashSet::new(), Vec::new(), 0);
        let mut before = i32::MAX;
        while latest.len() < wanted {
            let rows: Vec<EventRow> = sqlx::query_as(
                "select position, stream_id, stream_type, version, event_id, type, schema_version,
                        data, metadata, recorded_at
                 from es.events where stream_id = $1 and version < $2
                 order by version desc limit $3",
            )
            .bind(stream_id)
            .bind(before)
            .bind(page)
            .fetch_all(&self.pool)
            .await?;
            rows_read += rows.len();
            let last_page = (rows.len() as i64) < page;
            for row in rows {
                before = row.version;
                let Some(value) = row.data.0.get(key).map(ToString::to_string) else { continue };
                if latest.len() < wanted && seen.insert(value) {
                    latest.push(RecordedEvent::from(row));
                }
            }
            if last_page {
                break;
            }
        }
        Ok((latest, rows_read))
    }
}

/// `state` (at `version`) with the stored event at version `v` applied, upcast from
/// its schema version; only the next version may follow (a gap is corruption).
fn apply_next<A: Aggregate>(
    stream_id: Uuid,
    state: A,
    version: i32,
    v: i32,
    event_type: Option<&str>,
    schema_version: i16,
    data: serde_json::Value,
) -> Result<A, StoreError> {
    if v != version + 1 {
        return Err(StoreError::Corrupt(format!("stream {stream_id} jumps from version {version} to {v}")));
    }
    let event: A::Event = aggregate::decode_versioned(event_type.unwrap_or_default(), schema_version, data)?;
    Ok(state.apply(&event))
}

/// An aggregate as it was at a point ([`EventStore::load_at`]), and the rows read
/// to fold it (the snapshot's and the events').
#[derive(Debug)]
pub struct PastState<A> {
    pub loaded: Option<Loaded<A>>,
    pub rows_read: usize,
}

/// A row of `es.events` as the readers select it.
#[derive(sqlx::FromRow)]
pub struct EventRow {
    pub position: i64,
    stream_id: Uuid,
    stream_type: String,
    version: i32,
    event_id: Uuid,
    #[sqlx(rename = "type")]
    event_type: String,
    schema_version: i16,
    data: sqlx::types::Json<serde_json::Value>,
    metadata: sqlx::types::Json<serde_json::Value>,
    recorded_at: DateTime<Utc>,
}

impl From<EventRow> for RecordedEvent {
    fn from(r: EventRow) -> Self {
        RecordedEvent {
            position: r.position,
            stream_id: r.stream_id,
            stream_type: r.stream_type,
            version: r.version,
            event_id: r.event_id,
            event_type: r.event_type,
            schema_version: r.schema_version,
            data: r.data.0,
            metadata: serde_json::from_value(r.metadata.0).unwrap_or_default(),
            recorded_at: r.recorded_at,
        }
    }
}
