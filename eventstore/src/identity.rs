//! The event store's identity (`es.store`, migration 0016): a UUID the tailer puts in
//! every envelope, so that a river can tell the events of another store on the stream
//! (a fresh database, a restore) from its own store's not yet visible ones.

use sqlx::PgExecutor;
use uuid::Uuid;

/// This store's identity.
pub async fn identity(conn: impl PgExecutor<'_>) -> sqlx::Result<Uuid> {
    sqlx::query_scalar("select id from es.store").fetch_one(conn).await
}

/// The tailer's leader lock (`pg_try_advisory_lock`): held by the active tailer.
pub const TAILER_LEADER_LOCK: i64 = 0x7261_7069_6473;

#[derive(Debug, thiserror::Error)]
pub enum RenewError {
    /// A tailer leads: it stamps envelopes with the identity it read when it took the
    /// lead, and the rivers would take this store's new events for another's.
    #[error("a tailer is running (it holds its leader lock): stop the tailers and the services first")]
    TailerRunning,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

/// Gives the store a new identity and returns it: a step of every restore (the stream
/// still holds the events of the timeline the restore left, under the old one), taken
/// with the tailers stopped (refused while one leads).
pub async fn renew(pool: &sqlx::PgPool) -> Result<Uuid, RenewError> {
    let mut tx = pool.begin().await?;
    // held for the transaction: no tailer can take the lead meanwhile
    let free: bool =
        sqlx::query_scalar("select pg_try_advisory_xact_lock($1)").bind(TAILER_LEADER_LOCK).fetch_one(&mut *tx).await?;
    if !free {
        return Err(RenewError::TailerRunning);
    }
    let id = sqlx::query_scalar("update es.store set id = gen_random_uuid(), renewed_at = now() returning id")
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(id)
}
