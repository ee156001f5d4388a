//! The dead-letter table of the rivers: records a handler kept failing on.

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

/// A parked record, as an operator sees it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeadLetter {
    pub id: i64,
    pub river: String,
    pub shard_id: String,
    pub sequence_number: String,
    pub stream_id: Option<Uuid>,
    pub event_type: Option<String>,
    pub version: Option<i32>,
    pub error: String,
    pub attempts: i32,
    pub status: String,
    pub parked_at: DateTime<Utc>,
}

/// What is parked: the record and what is known of it.
#[derive(Debug, Clone)]
pub(crate) struct Parked<'a> {
    pub shard_id: &'a str,
    pub sequence_number: &'a str,
    pub stream_id: Option<Uuid>,
    pub event_type: Option<&'a str>,
    pub version: Option<i32>,
    pub record: &'a [u8],
    pub error: &'a str,
    pub attempts: i32,
}

pub(crate) async fn park(tx: &mut PgConnection, river: &str, p: &Parked<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "insert into rapids.river_dead_letters
             (river, shard_id, sequence_number, stream_id, event_type, version, record, error, attempts)
         values ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         on conflict (river, shard_id, sequence_number) do update
             set status = 'parked', error = excluded.error, resolved_at = null,
                 attempts = rapids.river_dead_letters.attempts + excluded.attempts",
    )
    .bind(river)
    .bind(p.shard_id)
    .bind(p.sequence_number)
    .bind(p.stream_id)
    .bind(p.event_type)
    .bind(p.version)
    .bind(p.record)
    .bind(p.error)
    .bind(p.attempts)
    .execute(tx)
    .await?;
    Ok(())
}

/// Parked records (and those waiting for a retry), oldest first; all rivers when `river` is `None`.
pub async fn list(pool: &PgPool, river: Option<&str>) -> sqlx::Result<Vec<DeadLetter>> {
    sqlx::query_as(
        "select id, river, shard_id, sequence_number, stream_id, event_type, version, error, attempts, status, parked_at
         from rapids.river_dead_letters
         where status <> 'resolved' and ($1::text is null or river = $1)
         order by id",
    )
    .bind(river)
    .fetch_all(pool)
    .await
}

/// Asks the river's instances to hand parked records to the handler again: one
/// (`id`) or all of the river. Returns how many were marked.
pub async fn request_retry(pool: &PgPool, river: &str, id: Option<i64>) -> sqlx::Result<u64> {
    let marked = sqlx::query(
        "update rapids.river_dead_letters set status = 'retry'
         where river = $1 and status = 'parked' and ($2::bigint is null or id = $2)",
    )
    .bind(river)
    .bind(id)
    .execute(pool)
    .await?;
    Ok(marked.rows_affected())
}

/// How many records of each river are parked or waiting for a retry.
pub(crate) async fn open_count(pool: &PgPool, river: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("select count(*) from rapids.river_dead_letters where river = $1 and status <> 'resolved'")
        .bind(river)
        .fetch_one(pool)
        .await
}

/// A record marked for retry, locked (skipped by other instances) in `tx`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RetryRow {
    pub id: i64,
    pub shard_id: String,
    pub sequence_number: String,
    pub record: Vec<u8>,
}

pub(crate) async fn next_retry(tx: &mut PgConnection, river: &str) -> sqlx::Result<Option<RetryRow>> {
    sqlx::query_as(
        "select id, shard_id, sequence_number, record from rapids.river_dead_letters
         where river = $1 and status = 'retry' order by id limit 1 for update skip locked",
    )
    .bind(river)
    .fetch_optional(tx)
    .await
}

pub(crate) async fn resolve(tx: &mut PgConnection, id: i64) -> sqlx::Result<()> {
    sqlx::query("update rapids.river_dead_letters set status = 'resolved', resolved_at = now() where id = $1")
        .bind(id)
        .execute(tx)
        .await?;
    Ok(())
}

pub(crate) async fn park_again(pool: &PgPool, id: i64, error: &str) -> sqlx::Result<()> {
    sqlx::query(
        "update rapids.river_dead_letters set status = 'parked', error = $2, attempts = attempts + 1 where id = $1",
    )
    .bind(id)
    .bind(error)
    .execute(pool)
    .await?;
    Ok(())
}
