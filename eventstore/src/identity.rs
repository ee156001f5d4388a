//! The event store's identity (`es.store`, migration 0016): a UUID the tailer puts in
//! every envelope, so that a river can tell the events of another store on the stream
//! (a fresh database, a restore) from its own store's not yet visible ones.

use sqlx::PgExecutor;
use uuid::Uuid;

/// This store's identity.
pub async fn identity(conn: impl PgExecutor<'_>) -> sqlx::Result<Uuid> {
    sqlx::query_scalar("select id from es.store").fetch_one(conn).await
}

/// Gives the store a new identity and returns it: a step of every restore (the stream
/// still holds the events of the timeline the restore left, under the old one).
pub async fn renew(conn: impl PgExecutor<'_>) -> sqlx::Result<Uuid> {
    sqlx::query_scalar("update es.store set id = gen_random_uuid(), renewed_at = now() returning id")
        .fetch_one(conn)
        .await
}
