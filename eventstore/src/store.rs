//! The Postgres event store: `es.events`, `es.snapshots`, `es.idempotency`.
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
}

impl NewEvent {
    pub fn from_domain<E: DomainEvent>(event: &E) -> Result<Self, EventCodecError> {
        let (event_type, data) = aggregate::encode(event)?;
        Ok(NewEvent { event_id: Uuid::now_v7(), event_type, schema_version: E::SCHEMA_VERSION, data })
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
    pub status: u16,
    pub body: serde_json::Value,
}

/// A stored idempotency record.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredResponse {
    pub request_hash: String,
    pub status: u16,
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
    pub idempotency: Option<IdempotencyWrite>,
}

/// Where the appended events landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    pub new_version: i32,
    pub first_position: i64,
    pub last_position: i64,
}

const EVENTS_VERSION_KEY: &str = "events_stream_version_key";
const IDEMPOTENCY_KEY: &str = "idempotency_pkey";

/// One statement: the events (only if the stream is at the expected version), the
/// snapshot when one is due, the idempotency record when a key was given.
const APPEND_SQL: &str = r#"
with ev as (
    insert into es.events (stream_id, stream_type, version, event_id, type, schema_version, data, metadata)
    select $1, $2, $3 + e.ord::int, e.event_id, e.type, e.schema_version, e.data, $4
    from unnest($5::uuid[], $6::text[], $7::int2[], $8::jsonb[])
         with ordinality as e(event_id, type, schema_version, data, ord)
    -- never leave a gap: the expected version must be the stream's last one
    where $3 = 0 or exists (select 1 from es.events where stream_id = $1 and version = $3)
    order by e.ord
    returning position
), snap as (
    insert into es.snapshots (stream_id, stream_type, version, schema_version, state)
    select $1, $2, $9, $10, $11
    where $9::int is not null and exists (select 1 from ev)
    on conflict (stream_id) do update
        set version = excluded.version, schema_version = excluded.schema_version,
            state = excluded.state, taken_at = now()
        where es.snapshots.version < excluded.version
), idem as (
    insert into es.idempotency (actor, key, request_hash, status, body, stream_id)
    select $12, $13, $14, $15, $16, $1
    where $13::text is not null and exists (select 1 from ev)
)
select min(position) as first_position, max(position) as last_position, count(*) as appended from ev
"#;

/// The Postgres event store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventStore {
    pool: PgPool,
}

impl EventStore {
    pub fn new(pool: PgPool) -> Self {
        EventStore { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Appends events at `expected_version + 1 ..` in one statement.
    #[tracing::instrument(skip_all, fields(stream_id = %append.stream_id, expected = append.expected_version), err(level = "debug"))]
    pub async fn append(&self, append: &Append) -> Result<Appended, StoreError> {
        if append.events.is_empty() {
            return Err(StoreError::Corrupt("an append needs at least one event".into()));
        }
        let metadata = serde_json::to_value(&append.metadata).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let ids: Vec<Uuid> = append.events.iter().map(|e| e.event_id).collect();
        let types: Vec<&str> = append.events.iter().map(|e| e.event_type.as_str()).collect();
        let schemas: Vec<i16> = append.events.iter().map(|e| e.schema_version).collect();
        let data: Vec<serde_json::Value> = append.events.iter().map(|e| e.data.clone()).collect();
        let snapshot = append.snapshot.as_ref();
        let idem = append.idempotency.as_ref();

        let row: Result<(Option<i64>, Option<i64>, i64), sqlx::Error> = sqlx::query_as(APPEND_SQL)
            .bind(append.stream_id)
            .bind(append.stream_type)
            .bind(append.expected_version)
            .bind(sqlx::types::Json(&metadata))
            .bind(&ids)
            .bind(&types)
            .bind(&schemas)
            .bind(&data)
            .bind(snapshot.map(|s| s.version))
            .bind(snapshot.map(|s| s.schema_version))
            .bind(snapshot.map(|s| sqlx::types::Json(&s.state)))
            .bind(idem.map(|i| i.actor.as_str()))
            .bind(idem.map(|i| i.key.as_str()))
            .bind(idem.map(|i| i.request_hash.as_str()))
            .bind(idem.map(|i| i.status as i16))
            .bind(idem.map(|i| sqlx::types::Json(&i.body)))
            .fetch_one(&self.pool)
            .await;

        let conflict = StoreError::Conflict { stream_id: append.stream_id, expected: append.expected_version };
        match row {
            Ok((Some(first), Some(last), n)) if n == append.events.len() as i64 => Ok(Appended {
                new_version: append.expected_version + append.events.len() as i32,
                first_position: first,
                last_position: last,
            }),
            // the expected version is not the stream's last one
            Ok(_) => Err(conflict),
            Err(sqlx::Error::Database(db)) if db.constraint() == Some(EVENTS_VERSION_KEY) => Err(conflict),
            Err(sqlx::Error::Database(db)) if db.constraint() == Some(IDEMPOTENCY_KEY) => {
                Err(StoreError::IdempotencyKeyTaken)
            }
            Err(e) => Err(StoreError::Database(e)),
        }
    }

    /// Loads an aggregate: the latest snapshot of the code's schema version, then the
    /// events after it. `None` when the stream has no events of this stream type.
    #[tracing::instrument(skip_all, fields(stream_id = %stream_id), err(level = "debug"))]
    pub async fn load<A: Aggregate>(&self, stream_id: Uuid) -> Result<Option<Loaded<A>>, StoreError> {
        let snapshot: Option<(i32, sqlx::types::Json<serde_json::Value>)> = sqlx::query_as(
            "select version, state from es.snapshots
             where stream_id = $1 and stream_type = $2 and schema_version = $3",
        )
        .bind(stream_id)
        .bind(A::STREAM_TYPE)
        .bind(A::SNAPSHOT_SCHEMA_VERSION)
        .fetch_optional(&self.pool)
        .await?;

        let (mut state, mut version) = match snapshot {
            Some((version, state)) => match serde_json::from_value::<A>(state.0) {
                Ok(state) => (state, version),
                // a snapshot the code cannot read is as good as none
                Err(error) => {
                    tracing::warn!(%error, "ignoring unreadable snapshot");
                    (A::default(), 0)
                }
            },
            None => (A::default(), 0),
        };

        let rows: Vec<(i32, String, sqlx::types::Json<serde_json::Value>)> = sqlx::query_as(
            "select version, type, data from es.events
             where stream_id = $1 and stream_type = $2 and version > $3
             order by version",
        )
        .bind(stream_id)
        .bind(A::STREAM_TYPE)
        .bind(version)
        .fetch_all(&self.pool)
        .await?;

        for (v, event_type, data) in rows {
            if v != version + 1 {
                return Err(StoreError::Corrupt(format!("stream {stream_id} jumps from version {version} to {v}")));
            }
            let event: A::Event = aggregate::decode(&event_type, data.0)?;
            state = state.apply(&event);
            version = v;
        }
        Ok((version > 0).then_some(Loaded { state, version }))
    }

    /// Loads an aggregate by replaying every event, ignoring snapshots.
    pub async fn load_full_replay<A: Aggregate>(&self, stream_id: Uuid) -> Result<Option<Loaded<A>>, StoreError> {
        let events = self.read_stream(stream_id, 0, None).await?;
        let mut loaded = Loaded { state: A::default(), version: 0 };
        for e in events.iter().filter(|e| e.stream_type == A::STREAM_TYPE) {
            let event: A::Event = aggregate::decode(&e.event_type, e.data.clone())?;
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

    /// The stored response for an actor's Idempotency-Key, if any.
    pub async fn find_idempotent_response(&self, actor: &str, key: &str) -> Result<Option<StoredResponse>, StoreError> {
        let row: Option<(String, i16, sqlx::types::Json<serde_json::Value>)> =
            sqlx::query_as("select request_hash, status, body from es.idempotency where actor = $1 and key = $2")
                .bind(actor)
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map(|(request_hash, status, body)| StoredResponse {
            request_hash,
            status: u16::try_from(status).unwrap_or(500),
            body: body.0,
        }))
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    position: i64,
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
