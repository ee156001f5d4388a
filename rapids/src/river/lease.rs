//! Shard leases: which instance of a river reads which shard.
//!
//! Every instance, every `renew_every`: renews its own leases, then plans what to take
//! from the table's rows ([`plan`], pure). A shard may be read when it is not finished
//! and its parents are finished (so a stream's events before a reshard are handled
//! before those after it). The readable shards are split evenly between the instances
//! that hold a live lease: an instance below its share first takes free or expired
//! shards, then steals one shard per round from the instance holding the most, if that
//! one holds more than its share. A stolen shard's old reader notices at its next
//! checkpoint (the checkpoint is written only where the lease is still its own) or its
//! next renewal, whichever comes first.

use sqlx::PgPool;
use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

/// A shard as the lease table knows it.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct ShardRow {
    pub shard_id: String,
    pub parent_shard_id: Option<String>,
    pub adjacent_parent_shard_id: Option<String>,
    pub owner: Option<String>,
    /// The lease is unexpired.
    pub live: bool,
    pub finished: bool,
}

/// A lease to take: free (`from: None`) or stolen from a live owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Take {
    pub shard_id: String,
    pub from: Option<String>,
}

/// The shards that may be read now: unfinished, every known parent finished.
pub fn readable(rows: &[ShardRow]) -> Vec<&ShardRow> {
    let finished: HashSet<&str> = rows.iter().filter(|r| r.finished).map(|r| r.shard_id.as_str()).collect();
    let known: HashSet<&str> = rows.iter().map(|r| r.shard_id.as_str()).collect();
    // a parent gone from the stream (past retention) counts as finished
    let done = |parent: &Option<String>| parent.as_deref().is_none_or(|p| finished.contains(p) || !known.contains(p));
    rows.iter().filter(|r| !r.finished && done(&r.parent_shard_id) && done(&r.adjacent_parent_shard_id)).collect()
}

/// What `me` should take this round.
pub fn plan(rows: &[ShardRow], me: &str) -> Vec<Take> {
    let readable = readable(rows);
    let mut held: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    held.insert(me, Vec::new());
    for row in &readable {
        if let (Some(owner), true) = (&row.owner, row.live) {
            held.entry(owner.as_str()).or_default().push(row.shard_id.as_str());
        }
    }
    let share = readable.len().div_ceil(held.len());
    let mine = held[me].len();
    if mine >= share {
        return Vec::new();
    }
    let mut takes: Vec<Take> = readable
        .iter()
        .filter(|r| r.owner.is_none() || !r.live)
        .take(share - mine)
        .map(|r| Take { shard_id: r.shard_id.clone(), from: None })
        .collect();
    if mine + takes.len() < share {
        let richest = held.iter().filter(|(owner, _)| **owner != me).max_by_key(|(_, shards)| shards.len());
        if let Some((owner, shards)) = richest
            && shards.len() > share
            && let Some(shard) = shards.first()
        {
            takes.push(Take { shard_id: shard.to_string(), from: Some(owner.to_string()) });
        }
    }
    takes
}

/// The lease table of one river, for one instance.
#[derive(Debug, Clone)]
pub struct Leases {
    pool: PgPool,
    river: String,
    worker: String,
    duration_ms: i64,
}

impl Leases {
    pub fn new(pool: PgPool, river: &str, worker: &str, duration: Duration) -> Self {
        Leases { pool, river: river.into(), worker: worker.into(), duration_ms: duration.as_millis() as i64 }
    }

    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// Records shards listed by Kinesis (new ones only; known rows keep their state).
    pub async fn add_shards(&self, shards: &[(String, Option<String>, Option<String>)]) -> sqlx::Result<()> {
        let ids: Vec<&str> = shards.iter().map(|s| s.0.as_str()).collect();
        let parents: Vec<Option<&str>> = shards.iter().map(|s| s.1.as_deref()).collect();
        let adjacent: Vec<Option<&str>> = shards.iter().map(|s| s.2.as_deref()).collect();
        sqlx::query(
            "insert into rapids.river_shards (river, shard_id, parent_shard_id, adjacent_parent_shard_id)
             select $1, * from unnest($2::text[], $3::text[], $4::text[])
             on conflict do nothing",
        )
        .bind(&self.river)
        .bind(&ids)
        .bind(&parents)
        .bind(&adjacent)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Extends this instance's leases; returns the shards it still holds.
    pub async fn renew(&self) -> sqlx::Result<Vec<String>> {
        sqlx::query_scalar(
            "update rapids.river_shards set lease_expires_at = now() + $3 * interval '1 millisecond'
             where river = $1 and owner = $2 and finished_at is null
             returning shard_id",
        )
        .bind(&self.river)
        .bind(&self.worker)
        .bind(self.duration_ms as f64)
        .fetch_all(&self.pool)
        .await
    }

    pub async fn rows(&self) -> sqlx::Result<Vec<ShardRow>> {
        sqlx::query_as(
            "select shard_id, parent_shard_id, adjacent_parent_shard_id, owner,
                    coalesce(lease_expires_at > now(), false) as live, finished_at is not null as finished
             from rapids.river_shards where river = $1 order by shard_id",
        )
        .bind(&self.river)
        .fetch_all(&self.pool)
        .await
    }

    /// Takes a lease if it is still as planned (free or expired; or still `from`'s).
    pub async fn take(&self, take: &Take) -> sqlx::Result<bool> {
        let taken = sqlx::query(
            "update rapids.river_shards set owner = $3, lease_expires_at = now() + $5 * interval '1 millisecond',
                    lease_counter = lease_counter + 1
             where river = $1 and shard_id = $2 and finished_at is null
               and (case when $4::text is null then owner is null or lease_expires_at <= now()
                         else owner = $4 end)",
        )
        .bind(&self.river)
        .bind(&take.shard_id)
        .bind(&self.worker)
        .bind(take.from.as_deref())
        .bind(self.duration_ms as f64)
        .execute(&self.pool)
        .await?;
        Ok(taken.rows_affected() == 1)
    }

    /// Gives up every lease of this instance (on shutdown: others take over at once).
    pub async fn release_all(&self) -> sqlx::Result<()> {
        // the other instances hear of it at once (NOTIFY is sent at the commit) and
        // take the shards then, not at their next renewal
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "update rapids.river_shards set owner = null, lease_expires_at = null where river = $1 and owner = $2",
        )
        .bind(&self.river)
        .bind(&self.worker)
        .execute(&mut *tx)
        .await?;
        sqlx::query("select pg_notify($1, $2)")
            .bind(crate::LEASES_RELEASED_CHANNEL)
            .bind(&self.river)
            .execute(&mut *tx)
            .await?;
        tx.commit().await
    }

    /// The last handled sequence number of a shard this instance holds (`None` inside:
    /// none yet) and the lease's counter (the fence of its reader); `None` when the
    /// lease is no longer this instance's.
    pub async fn checkpoint(&self, shard_id: &str) -> sqlx::Result<Option<(Option<String>, i64)>> {
        sqlx::query_as(
            "select checkpoint, lease_counter from rapids.river_shards where river = $1 and shard_id = $2 and owner = $3",
        )
        .bind(&self.river)
        .bind(shard_id)
        .bind(&self.worker)
        .fetch_optional(&self.pool)
        .await
    }

    /// Moves the checkpoint, inside the handler's transaction when `tx` is one; false
    /// when the lease is no longer this instance's, or was taken again since the reader
    /// started (`fence`, its counter then): a transaction must then roll back.
    pub async fn advance(
        &self,
        tx: &mut sqlx::PgConnection,
        shard_id: &str,
        sequence: &str,
        fence: i64,
    ) -> sqlx::Result<bool> {
        let done = sqlx::query(
            "update rapids.river_shards set checkpoint = $4
             where river = $1 and shard_id = $2 and owner = $3 and lease_counter = $5",
        )
        .bind(&self.river)
        .bind(shard_id)
        .bind(&self.worker)
        .bind(sequence)
        .bind(fence)
        .execute(&mut *tx)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records how far behind the stream's tip this instance's readers were, per shard
    /// (for operators; only shards whose lease it holds).
    pub async fn report_lag(&self, lags: &[(String, i64)]) -> sqlx::Result<()> {
        let (shards, millis): (Vec<String>, Vec<i64>) = lags.iter().cloned().unzip();
        sqlx::query(
            "update rapids.river_shards s set millis_behind = l.millis, lag_reported_at = now()
             from unnest($3::text[], $4::int8[]) as l(shard, millis)
             where s.river = $1 and s.owner = $2 and s.shard_id = l.shard",
        )
        .bind(&self.river)
        .bind(&self.worker)
        .bind(&shards)
        .bind(&millis)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks a closed shard read to its end; its children become readable.
    pub async fn finish(&self, shard_id: &str) -> sqlx::Result<bool> {
        let done = sqlx::query(
            "update rapids.river_shards set finished_at = now(), owner = null, lease_expires_at = null
             where river = $1 and shard_id = $2 and owner = $3",
        )
        .bind(&self.river)
        .bind(shard_id)
        .bind(&self.worker)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: &str, owner: Option<&str>, live: bool) -> ShardRow {
        ShardRow {
            shard_id: id.into(),
            parent_shard_id: None,
            adjacent_parent_shard_id: None,
            owner: owner.map(Into::into),
            live,
            finished: false,
        }
    }

    fn ids(takes: &[Take]) -> Vec<&str> {
        takes.iter().map(|t| t.shard_id.as_str()).collect()
    }

    #[test]
    fn a_lone_instance_takes_every_free_shard() {
        let rows = [row("a", None, false), row("b", None, false), row("c", None, false)];
        assert_eq!(ids(&plan(&rows, "me")), ["a", "b", "c"]);
    }

    #[test]
    fn a_second_instance_takes_its_share_of_free_shards_only() {
        let rows = [row("a", Some("x"), true), row("b", Some("x"), true), row("c", None, false), row("d", None, false)];
        assert_eq!(ids(&plan(&rows, "me")), ["c", "d"]);
    }

    #[test]
    fn expired_leases_are_free() {
        let rows = [row("a", Some("dead"), false), row("b", Some("dead"), false)];
        assert_eq!(ids(&plan(&rows, "me")), ["a", "b"]);
    }

    #[test]
    fn one_shard_is_stolen_per_round_from_an_instance_above_its_share() {
        let rows = [
            row("a", Some("x"), true),
            row("b", Some("x"), true),
            row("c", Some("x"), true),
            row("d", Some("x"), true),
        ];
        assert_eq!(plan(&rows, "me"), [Take { shard_id: "a".into(), from: Some("x".into()) }]);
    }

    #[test]
    fn a_balanced_split_is_left_alone() {
        let rows = [row("a", Some("x"), true), row("b", Some("x"), true), row("c", Some("me"), true)];
        assert!(plan(&rows, "me").is_empty());
        let rows = [
            row("a", Some("x"), true),
            row("b", Some("me"), true),
            row("c", Some("y"), true),
            row("d", Some("x"), true),
        ];
        assert!(plan(&rows, "me").is_empty(), "x holds 2 = its share of 4 among 3");
    }

    #[test]
    fn children_wait_until_both_parents_are_finished() {
        let mut parent = row("p", None, false);
        let mut merged = row("m", None, false);
        let mut child = row("c", None, false);
        child.parent_shard_id = Some("p".into());
        child.adjacent_parent_shard_id = Some("m".into());
        assert_eq!(ids(&plan(&[parent.clone(), merged.clone(), child.clone()], "me")), ["p", "m"]);
        parent.finished = true;
        assert_eq!(ids(&plan(&[parent.clone(), merged.clone(), child.clone()], "me")), ["m"]);
        merged.finished = true;
        assert_eq!(ids(&plan(&[parent, merged, child], "me")), ["c"]);
    }

    #[test]
    fn a_parent_past_retention_does_not_block_its_child() {
        let mut child = row("c", None, false);
        child.parent_shard_id = Some("gone".into());
        assert_eq!(ids(&plan(&[child], "me")), ["c"]);
    }
}
