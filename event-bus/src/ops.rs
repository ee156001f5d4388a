//! What an operator sees of the machinery (tellers and admins): the rivers with their
//! shards, leases, checkpoints and lag; the tailer's lag; parked events, with a retry;
//! transfers not settled after a while.

use serde::{Deserialize, Serialize};
use service_kit::{ApiError, ErrorCode};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

fn fault(e: sqlx::Error) -> ApiError {
    ApiError::from(eventstore::StoreError::from(e))
}

/// One shard of a river.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Shard {
    pub shard_id: String,
    pub parent_shard_id: Option<String>,
    /// The instance holding the lease, if any.
    pub owner: Option<String>,
    pub lease_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The sequence number of the last record handled.
    pub checkpoint: Option<String>,
    /// Set once a closed shard was read to its end.
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    /// How far behind the stream's tip its reader was at its last read (ms).
    pub millis_behind: Option<i64>,
    pub lag_reported_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A river as an operator sees it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RiverState {
    pub river: String,
    pub managed: bool,
    pub topics: Vec<String>,
    pub shards: Vec<Shard>,
    /// Parked events not yet resolved.
    pub dead_letters: i64,
}

/// Every river the registry or the lease table knows.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RiverStates {
    pub items: Vec<RiverState>,
}

pub async fn rivers(pool: &PgPool) -> Result<RiverStates, ApiError> {
    let registered = crate::registry::rivers(pool).await?;
    let leased: Vec<String> = sqlx::query_scalar("select distinct river from rapids.river_shards order by river")
        .fetch_all(pool)
        .await
        .map_err(fault)?;
    let mut names: Vec<(String, bool, Vec<String>)> =
        registered.into_iter().map(|r| (r.river, r.managed, r.topics)).collect();
    for river in leased {
        if !names.iter().any(|(n, _, _)| *n == river) {
            names.push((river, false, Vec::new()));
        }
    }
    names.sort_by(|a, b| a.0.cmp(&b.0));
    let mut items = Vec::with_capacity(names.len());
    for (river, managed, topics) in names {
        let shards: Vec<Shard> = sqlx::query_as(
            "select shard_id, parent_shard_id, owner, lease_expires_at, checkpoint, finished_at, millis_behind,
                    lag_reported_at
             from rapids.river_shards where river = $1 order by shard_id",
        )
        .bind(&river)
        .fetch_all(pool)
        .await
        .map_err(fault)?;
        let dead_letters: i64 = sqlx::query_scalar(
            "select count(*) from rapids.river_dead_letters where river = $1 and status <> 'resolved'",
        )
        .bind(&river)
        .fetch_one(pool)
        .await
        .map_err(fault)?;
        items.push(RiverState { river, managed, topics, shards, dead_letters });
    }
    Ok(RiverStates { items })
}

/// How far the tailer has published.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct TailerState {
    /// The tailer's source (`wal` slot name, or `poll`).
    pub source: String,
    /// The last event position it published up to.
    pub position: i64,
    /// The newest event position in the store.
    pub latest_position: i64,
    /// Events stored after its position (an upper bound of what it still has to publish).
    pub events_behind: i64,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// The tailers' positions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct TailerStates {
    pub items: Vec<TailerState>,
}

pub async fn tailer(pool: &PgPool) -> Result<TailerStates, ApiError> {
    let items = sqlx::query_as(
        "with latest as (select coalesce(max(position), 0) as p from es.events)
         select t.source, t.position, latest.p as latest_position,
                (select count(*) from es.events e where e.position > t.position) as events_behind, t.updated_at
         from rapids.tailer_position t, latest order by t.source",
    )
    .fetch_all(pool)
    .await
    .map_err(fault)?;
    Ok(TailerStates { items })
}

/// A parked event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeadLetter {
    pub id: i64,
    pub river: String,
    pub shard_id: String,
    pub sequence_number: String,
    pub stream_id: Option<Uuid>,
    pub event_type: Option<String>,
    pub version: Option<i32>,
    /// Why the handler refused it.
    pub error: String,
    pub attempts: i32,
    /// `parked`, or `retry` while the river has not picked it up yet.
    pub status: String,
    pub parked_at: chrono::DateTime<chrono::Utc>,
}

/// `GET /ops/dead-letters`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLettersQuery {
    /// Only this river's.
    #[param(max_length = 64, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")]
    pub river: Option<String>,
}

/// Parked events not yet resolved.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct DeadLetters {
    pub items: Vec<DeadLetter>,
}

pub async fn dead_letters(pool: &PgPool, river: Option<&str>) -> Result<DeadLetters, ApiError> {
    // the rivers' own listing (bankctl dead-letters uses it too), as the API's type
    let parked = rapids::river::dead_letter::list(pool, river).await.map_err(fault)?;
    let items = parked
        .into_iter()
        .map(|d| DeadLetter {
            id: d.id,
            river: d.river,
            shard_id: d.shard_id,
            sequence_number: d.sequence_number,
            stream_id: d.stream_id,
            event_type: d.event_type,
            version: d.version,
            error: d.error,
            attempts: d.attempts,
            status: d.status,
            parked_at: d.parked_at,
        })
        .collect();
    Ok(DeadLetters { items })
}

/// The answer of a retry.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RetryRequested {
    pub id: i64,
    /// `retry`: the river hands it to its handler again within a few seconds.
    pub status: String,
}

/// Asks the river to hand a parked event to its handler again.
pub async fn retry(pool: &PgPool, id: i64) -> Result<RetryRequested, ApiError> {
    let status: Option<String> = sqlx::query_scalar(
        "update rapids.river_dead_letters set status = 'retry'
         where id = $1 and status in ('parked', 'retry') returning status",
    )
    .bind(id)
    .fetch_optional(pool)
    .await
    .map_err(fault)?;
    match status {
        Some(status) => Ok(RetryRequested { id, status }),
        None => Err(ApiError::new(ErrorCode::NotFound, format!("no parked event {id}"))),
    }
}

/// `GET /ops/unsettled`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UnsettledQuery {
    /// Transfers created more than this many seconds ago (default 30).
    #[param(minimum = 0, maximum = 31536000)]
    pub older_than_s: Option<i64>,
}

/// A transfer not settled (neither completed nor failed).
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Unsettled {
    pub id: Uuid,
    /// Where it stopped: `initiated`, `debited` or `refunding`.
    pub state: String,
    pub from_account: Uuid,
    pub to_account: Uuid,
    pub amount: i64,
    pub currency: String,
    pub initiated_by: String,
    pub version: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    /// Seconds since it was created.
    pub age_s: f64,
}

/// Transfers not settled, oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UnsettledTransfers {
    pub older_than_s: i64,
    pub items: Vec<Unsettled>,
}

pub async fn unsettled(pool: &PgPool, older_than_s: Option<i64>) -> Result<UnsettledTransfers, ApiError> {
    let older_than_s = service_kit::extract::in_range("older_than_s", older_than_s, 31_536_000)?.unwrap_or(30);
    let items = sqlx::query_as(
        "select id, state, from_account, to_account, amount, currency, initiated_by, version, created_at, updated_at,
                extract(epoch from now() - created_at)::float8 as age_s
         from views.transfers
         where state not in ('completed', 'failed') and created_at < now() - make_interval(secs => $1::float8)
         order by created_at limit 1000",
    )
    .bind(older_than_s as f64)
    .fetch_all(pool)
    .await
    .map_err(fault)?;
    Ok(UnsettledTransfers { older_than_s, items })
}
