//! Rebuilding the views from the event store (not from Kinesis, whose retention is
//! short).
//!
//! * [`rebuild`]: builds every view anew in the schema `views_rebuild` while the live
//!   views keep serving and updating: reads `es.events` in position order, folds them
//!   in memory with the same projections as the live updater, writes in bulk, adds the
//!   live tables' indexes, and catches up. Then, in one transaction that holds the live
//!   tables against writes, it applies what committed meanwhile and swaps the schemas.
//!   The live updater then goes on against the new tables: its next events are at or
//!   below their versions (skipped) or the next ones (applied).
//! * `verify`: the same build, not swapped but compared with the live views row by
//!   row where both are at the same version; the differences are reported.
//! * [`rebuild_account`]: one account's view and transactions, from its stream, in one
//!   transaction.

use crate::projection::{self, AccountView, At, BankLegs, TransactionRow, TransferView};
use crate::store::{self, ApplyError, LIVE, REBUILD};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgPool, Row};
use std::collections::HashMap;
use std::io::Write;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use uuid::Uuid;

const TABLES: [&str; 4] = ["accounts", "account_transactions", "transfers", "bank_balances"];
/// The rebuild's rows of the bank's own accounts (the live river writes one per shard).
const REBUILT_PART: &str = "rebuild";
/// Events read per query.
const CHUNK: i64 = 20_000;
/// Chunks read ahead of the fold; batches of transaction rows waiting for the COPY.
const AHEAD: usize = 2;

/// What a rebuild did.
#[derive(Debug, Default)]
pub struct Rebuilt {
    pub events: u64,
    pub seconds: f64,
    /// Streams found behind the store at the end and caught up.
    pub caught_up: usize,
}

/// A difference found by `verify`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub table: &'static str,
    pub key: String,
    pub what: String,
}

/// What `verify` found.
#[derive(Debug, Default)]
pub struct Verified {
    pub rebuilt: Rebuilt,
    pub compared: i64,
    /// Rows at different versions in the two (the live updater is behind or ahead).
    pub not_compared: i64,
    pub differences: Vec<Difference>,
}

/// Prints progress on stderr (events done, events/s, ETA), at most twice a second.
pub struct Progress {
    enabled: bool,
    total: i64,
    started: Instant,
    shown: Instant,
}

impl Progress {
    pub fn new(enabled: bool, total: i64) -> Self {
        let now = Instant::now();
        Progress { enabled, total: total.max(1), started: now, shown: now - Duration::from_secs(1) }
    }

    fn show(&mut self, done: u64, last: bool) {
        if !self.enabled || (!last && self.shown.elapsed() < Duration::from_millis(500)) {
            return;
        }
        self.shown = Instant::now();
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-3);
        let rate = done as f64 / elapsed;
        let left = (self.total - done as i64).max(0) as f64;
        let eta = if rate > 0.0 { left / rate } else { 0.0 };
        let width = 30usize;
        let filled = ((done as f64 / self.total as f64).min(1.0) * width as f64) as usize;
        let mut err = std::io::stderr();
        let _ = write!(
            err,
            "\r[{}{}] {done:>10} / ~{} events  {rate:>9.0} events/s  ETA {eta:>5.0}s ",
            "#".repeat(filled),
            " ".repeat(width - filled),
            self.total
        );
        if last {
            let _ = writeln!(err);
        }
        let _ = err.flush();
    }
}

/// Rebuilds every view and swaps the new ones in.
pub async fn rebuild(pool: &PgPool, progress: bool) -> Result<Rebuilt, ApplyError> {
    let mut rebuilt = build(pool, progress).await?;
    let mut tx = pool.begin().await?;
    // the live updater waits here; readers go on
    for table in TABLES {
        sqlx::query(&format!("lock table {LIVE}.{table} in exclusive mode")).execute(&mut *tx).await?;
    }
    rebuilt.caught_up += catch_up(&mut tx).await?;
    sqlx::query(&format!("alter schema {LIVE} rename to views_old")).execute(&mut *tx).await?;
    sqlx::query(&format!("alter schema {REBUILD} rename to {LIVE}")).execute(&mut *tx).await?;
    sqlx::query("drop schema views_old cascade").execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(rebuilt)
}

/// Builds the views anew and compares them with the live ones; drops the build.
pub async fn verify(pool: &PgPool, progress: bool) -> Result<Verified, ApplyError> {
    let rebuilt = build(pool, progress).await?;
    let mut conn = pool.acquire().await?;
    let mut verified = compare(&mut conn).await?;
    verified.rebuilt = rebuilt;
    sqlx::query(&format!("drop schema {REBUILD} cascade")).execute(&mut *conn).await?;
    Ok(verified)
}

/// Rebuilds one account's view and transactions from its stream. Returns its version.
pub async fn rebuild_account(pool: &PgPool, account: Uuid) -> Result<Option<i32>, ApplyError> {
    let mut tx = pool.begin().await?;
    // holds the live updater off this account until the commit
    let before: Option<i32> =
        sqlx::query_scalar(&format!("select version from {LIVE}.accounts where id = $1 for update"))
            .bind(account)
            .fetch_optional(&mut *tx)
            .await?;
    sqlx::query(&format!("delete from {LIVE}.account_transactions where account_id = $1"))
        .bind(account)
        .execute(&mut *tx)
        .await?;
    sqlx::query(&format!("delete from {LIVE}.accounts where id = $1")).bind(account).execute(&mut *tx).await?;
    let events = store::read_store(&mut tx, account, 0, None).await?;
    if events.iter().any(|e| e.stream_type != "account") {
        return Ok(None);
    }
    let version = store::apply_stream(&mut tx, LIVE, REBUILT_PART, account, "account", &events).await?;
    // the bank's legs of the events the view had already applied were counted then
    let mut counted = BankLegs::default();
    for e in events.iter().filter(|e| e.version <= before.unwrap_or(0)) {
        counted.add(account, &projection::decode_event(e)?, -1);
    }
    store::add_bank_legs(&mut tx, LIVE, REBUILT_PART, &counted).await?;
    if let Some(version) = version {
        store::notify_advanced(&mut tx, &[format!("{account}:{version}")]).await?;
    }
    tx.commit().await?;
    Ok(version)
}

/// Builds `views_rebuild` from the store up to about now; returns what it did.
///
/// Three steps run at once, each on its own connection, so that the two server
/// processes and the fold overlap: [`read_events`] reads the store chunk by chunk,
/// [`Fold`] folds each chunk in memory (filling gaps from the store on a third
/// connection), [`write_transactions`] COPYs the chunk's transaction rows. Bounded
/// channels between them keep at most a few chunks in memory.
async fn build(pool: &PgPool, progress: bool) -> Result<Rebuilt, ApplyError> {
    let started = Instant::now();
    let mut conn = pool.acquire().await?;
    create_schema(&mut conn).await?;
    // only the progress bar needs it; a full count costs a scan of the store
    let total: i64 =
        if progress { sqlx::query_scalar("select count(*) from es.events").fetch_one(&mut *conn).await? } else { 0 };
    let mut progress = Progress::new(progress, total);

    // three connections, taken now: a build that cannot have them fails before it
    // reads (after the pool's acquire timeout), not at the first gap
    let mut reader = pool.acquire().await?;
    let mut gaps = pool.acquire().await?;
    let (chunks, chunks_in) = mpsc::channel(AHEAD);
    let (batches, batches_in) = mpsc::channel(AHEAD);
    let mut fold = Fold::default();
    tokio::try_join!(
        read_events(&mut reader, chunks),
        fold.run(&mut gaps, chunks_in, batches, &mut progress),
        write_transactions(&mut conn, batches_in),
    )?;
    drop((reader, gaps));
    progress.total = fold.done as i64;
    progress.show(fold.done, true);

    // keys and indexes after the bulk of rows (the transactions), before the upserts
    add_indexes(&mut conn).await?;
    let accounts: Vec<AccountView> = fold.accounts.into_values().collect();
    for chunk in accounts.chunks(CHUNK as usize) {
        store::upsert_accounts(&mut conn, REBUILD, chunk).await?;
    }
    let transfers: Vec<TransferView> = fold.transfers.into_values().collect();
    for chunk in transfers.chunks(CHUNK as usize) {
        store::upsert_transfers(&mut conn, REBUILD, chunk).await?;
    }
    store::add_bank_legs(&mut conn, REBUILD, REBUILT_PART, &fold.legs).await?;
    // what committed while this ran (out of position order included)
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    let caught_up = catch_up(&mut tx).await?;
    tx.commit().await?;
    Ok(Rebuilt { events: fold.done, seconds: started.elapsed().as_secs_f64(), caught_up })
}

/// Reads `es.events` in position order, a chunk per query (no snapshot held for the
/// whole build), and hands the rows over as they are: the fold decodes only what it
/// applies. Ends at the first empty chunk, or when the fold stopped.
async fn read_events(conn: &mut PgConnection, chunks: mpsc::Sender<Vec<PgRow>>) -> Result<(), ApplyError> {
    let mut last = 0i64;
    loop {
        let rows = sqlx::query(
            "select position, stream_id, stream_type, version, type, schema_version, data::text, recorded_at
             from es.events where position > $1 order by position limit $2",
        )
        .bind(last)
        .bind(CHUNK)
        .fetch_all(&mut *conn)
        .await?;
        let Some(end) = rows.last() else { return Ok(()) };
        last = end.try_get(0)?;
        if chunks.send(rows).await.is_err() {
            return Ok(());
        }
    }
}

/// COPYs each batch of transaction rows into `views_rebuild`. Ends when the fold is done.
async fn write_transactions(
    conn: &mut PgConnection,
    mut batches: mpsc::Receiver<Vec<TransactionRow>>,
) -> Result<(), ApplyError> {
    while let Some(rows) = batches.recv().await {
        store::copy_transactions(conn, REBUILD, &rows).await?;
    }
    Ok(())
}

/// The views folded in memory so far.
#[derive(Default)]
struct Fold {
    accounts: HashMap<Uuid, AccountView>,
    transfers: HashMap<Uuid, TransferView>,
    /// The bank's own accounts' legs of every account event folded.
    legs: BankLegs,
    done: u64,
    /// Reused by every decode.
    scratch: Vec<u8>,
}

impl Fold {
    /// Folds every chunk read, and sends each chunk's transaction rows on.
    async fn run(
        &mut self,
        gaps: &mut PgConnection,
        mut chunks: mpsc::Receiver<Vec<PgRow>>,
        batches: mpsc::Sender<Vec<TransactionRow>>,
        progress: &mut Progress,
    ) -> Result<(), ApplyError> {
        while let Some(rows) = chunks.recv().await {
            let mut changes = Vec::with_capacity(rows.len());
            for row in &rows {
                self.fold_row(gaps, row, &mut changes).await?;
                self.done += 1;
            }
            if batches.send(changes).await.is_err() {
                return Ok(()); // the writer failed: its error is the one reported
            }
            progress.show(self.done, false);
        }
        Ok(())
    }

    /// Folds one event (position order); a gap in a stream (an earlier version
    /// committed after a later position was read) is filled from the store.
    async fn fold_row(
        &mut self,
        gaps: &mut PgConnection,
        row: &PgRow,
        changes: &mut Vec<TransactionRow>,
    ) -> Result<(), ApplyError> {
        let stream_id: Uuid = row.try_get(1)?;
        let stream_type: &str = row.try_get(2)?;
        let version: i32 = row.try_get(3)?;
        let current = match stream_type {
            "account" => self.accounts.get(&stream_id).map_or(0, |v| v.version),
            "transfer" => self.transfers.get(&stream_id).map_or(0, |v| v.version),
            _ => return Ok(()),
        };
        if version <= current {
            return Ok(());
        }
        if version > current + 1 {
            let missing = store::read_store(gaps, stream_id, current, Some(version)).await?;
            tracing::debug!(stream = %stream_id, missing = missing.len(), "filled a gap from the store");
            for e in &missing {
                if e.stream_type == "account" {
                    let (view, row) =
                        projection::apply_account_with_legs(self.accounts.remove(&e.stream_id), e, &mut self.legs)?;
                    self.accounts.insert(e.stream_id, view);
                    changes.extend(row);
                } else {
                    let view = projection::apply_transfer(self.transfers.remove(&e.stream_id), e)?;
                    self.transfers.insert(e.stream_id, view);
                }
            }
        }
        let at = At { stream_id, version, recorded_at: row.try_get(7)? };
        let (event_type, schema_version, data): (&str, i16, &str) = (row.try_get(4)?, row.try_get(5)?, row.try_get(6)?);
        if stream_type == "account" {
            let event = projection::decode_text(stream_id, event_type, schema_version, data, &mut self.scratch)?;
            self.legs.add(stream_id, &event, 1);
            let (view, row) = projection::project_account(self.accounts.remove(&stream_id), at, &event)?;
            self.accounts.insert(stream_id, view);
            changes.extend(row);
        } else {
            let event = projection::decode_text(stream_id, event_type, schema_version, data, &mut self.scratch)?;
            let view = projection::project_transfer(self.transfers.remove(&stream_id), at, &event)?;
            self.transfers.insert(stream_id, view);
        }
        Ok(())
    }
}

/// Brings every stream of `views_rebuild` that is behind the store up to it. Returns
/// how many streams were behind.
async fn catch_up(tx: &mut PgConnection) -> Result<usize, ApplyError> {
    let behind: Vec<(Uuid, String)> = sqlx::query_as(&format!(
        "select e.stream_id, e.stream_type
         from (select stream_id, stream_type, max(version) as version from es.events
               where stream_type in ('account', 'transfer') group by 1, 2) e
         left join {REBUILD}.accounts a on a.id = e.stream_id
         left join {REBUILD}.transfers t on t.id = e.stream_id
         where e.version > coalesce(a.version, t.version, 0)"
    ))
    .fetch_all(&mut *tx)
    .await?;
    for (stream_id, stream_type) in &behind {
        let current: Option<i32> = sqlx::query_scalar(&format!(
            "select version from {REBUILD}.accounts where id = $1 union all select version from {REBUILD}.transfers where id = $1"
        ))
        .bind(stream_id)
        .fetch_optional(&mut *tx)
        .await?;
        let events = store::read_store(tx, *stream_id, current.unwrap_or(0), None).await?;
        store::apply_stream(tx, REBUILD, REBUILT_PART, *stream_id, stream_type, &events).await?;
    }
    Ok(behind.len())
}

/// A fresh `views_rebuild` with the live tables' columns and defaults, no indexes yet
/// (bulk loading is faster without them).
async fn create_schema(conn: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query(&format!("drop schema if exists {REBUILD} cascade")).execute(&mut *conn).await?;
    sqlx::query(&format!("create schema {REBUILD}")).execute(&mut *conn).await?;
    for table in TABLES {
        sqlx::query(&format!(
            "create table {REBUILD}.{table} (like {LIVE}.{table} including defaults including constraints)"
        ))
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The live tables' primary keys and indexes, on the rebuilt tables.
async fn add_indexes(conn: &mut PgConnection) -> sqlx::Result<()> {
    for table in TABLES {
        let keys: Vec<(String, String)> = sqlx::query_as(
            "select conname::text, pg_get_constraintdef(oid) from pg_constraint
             where conrelid = format('%I.%I', $1::text, $2::text)::regclass and contype in ('p', 'u')",
        )
        .bind(LIVE)
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        for (name, definition) in keys {
            sqlx::query(&format!("alter table {REBUILD}.{table} add constraint {name} {definition}"))
                .execute(&mut *conn)
                .await?;
        }
        let indexes: Vec<String> = sqlx::query_scalar(
            "select indexdef from pg_indexes i
             where schemaname = $1 and tablename = $2
               and not exists (select 1 from pg_constraint c where c.conname = i.indexname
                                 and c.conrelid = format('%I.%I', $1::text, $2::text)::regclass)",
        )
        .bind(LIVE)
        .bind(table)
        .fetch_all(&mut *conn)
        .await?;
        for definition in indexes {
            let on_live = format!(" ON {LIVE}.{table} ");
            let on_rebuilt = format!(" ON {REBUILD}.{table} ");
            sqlx::query(&definition.replacen(&on_live, &on_rebuilt, 1)).execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// Compares `views_rebuild` with the live views where both are at the same version.
async fn compare(conn: &mut PgConnection) -> Result<Verified, ApplyError> {
    let mut verified = Verified::default();
    let account_rows: Vec<(Uuid, Option<i32>, Option<i32>, bool)> = sqlx::query_as(&format!(
        "select coalesce(l.id, r.id), l.version, r.version,
                (l.owner, l.currency, l.status, l.balance, l.opened_at, l.updated_at)
                  is distinct from (r.owner, r.currency, r.status, r.balance, r.opened_at, r.updated_at)
         from {LIVE}.accounts l full join {REBUILD}.accounts r on l.id = r.id"
    ))
    .fetch_all(&mut *conn)
    .await?;
    let known = newer_than_build(conn, &account_rows).await?;
    tally(&mut verified, "accounts", account_rows, &known);
    let transfer_rows: Vec<(Uuid, Option<i32>, Option<i32>, bool)> = sqlx::query_as(&format!(
        "select coalesce(l.id, r.id), l.version, r.version,
                ({cols_l}) is distinct from ({cols_r})
         from {LIVE}.transfers l full join {REBUILD}.transfers r on l.id = r.id",
        cols_l = "l.from_account, l.to_account, l.amount, l.currency, l.state, l.failure_reason, l.initiated_by, l.memo, l.created_at, l.updated_at",
        cols_r = "r.from_account, r.to_account, r.amount, r.currency, r.state, r.failure_reason, r.initiated_by, r.memo, r.created_at, r.updated_at",
    ))
    .fetch_all(&mut *conn)
    .await?;
    let known = newer_than_build(conn, &transfer_rows).await?;
    tally(&mut verified, "transfers", transfer_rows, &known);
    // transactions up to the version both account rows have reached
    let transaction_rows: Vec<(Uuid, i32, bool, bool)> = sqlx::query_as(&format!(
        "with upto as (
             select l.id, least(l.version, r.version) as version
             from {LIVE}.accounts l join {REBUILD}.accounts r on l.id = r.id
         ),
         live as (select t.* from {LIVE}.account_transactions t join upto u on u.id = t.account_id and t.version <= u.version),
         rebuilt as (select t.* from {REBUILD}.account_transactions t join upto u on u.id = t.account_id and t.version <= u.version)
         select coalesce(l.account_id, r.account_id), coalesce(l.version, r.version),
                l.account_id is null or r.account_id is null,
                (l.kind, l.amount, l.currency, l.balance_after, l.transfer_id, l.counterparty, l.recorded_at)
                  is distinct from (r.kind, r.amount, r.currency, r.balance_after, r.transfer_id, r.counterparty, r.recorded_at)
         from live l full join rebuilt r on l.account_id = r.account_id and l.version = r.version"
    ))
    .fetch_all(&mut *conn)
    .await?;
    for (account, version, missing, differs) in transaction_rows {
        verified.compared += 1;
        if missing || differs {
            verified.differences.push(Difference {
                table: "account_transactions",
                key: format!("{account} v{version}"),
                what: if missing { "present on one side only".into() } else { "columns differ".into() },
            });
        }
    }
    Ok(verified)
}

/// Live rows the build does not have whose streams are in the store: written after
/// the build's catch-up (the store goes on), not differences.
async fn newer_than_build(
    conn: &mut PgConnection,
    rows: &[(Uuid, Option<i32>, Option<i32>, bool)],
) -> sqlx::Result<std::collections::HashSet<Uuid>> {
    let live_only: Vec<Uuid> = rows.iter().filter(|r| r.1.is_some() && r.2.is_none()).map(|r| r.0).collect();
    if live_only.is_empty() {
        return Ok(Default::default());
    }
    let known: Vec<Uuid> = sqlx::query_scalar("select distinct stream_id from es.events where stream_id = any($1)")
        .bind(&live_only)
        .fetch_all(&mut *conn)
        .await?;
    Ok(known.into_iter().collect())
}

fn tally(
    verified: &mut Verified,
    table: &'static str,
    rows: Vec<(Uuid, Option<i32>, Option<i32>, bool)>,
    newer_than_build: &std::collections::HashSet<Uuid>,
) {
    for (id, live, rebuilt, differs) in rows {
        match (live, rebuilt) {
            (Some(l), Some(r)) if l == r => {
                verified.compared += 1;
                if differs {
                    verified.differences.push(Difference {
                        table,
                        key: id.to_string(),
                        what: format!("columns differ at version {l}"),
                    });
                }
            }
            (Some(_), Some(_)) => verified.not_compared += 1,
            (Some(_), None) if newer_than_build.contains(&id) => verified.not_compared += 1,
            (Some(l), None) => verified.differences.push(Difference {
                table,
                key: id.to_string(),
                what: format!("in the live views (version {l}) but not in the event store"),
            }),
            (None, Some(r)) => verified.differences.push(Difference {
                table,
                key: id.to_string(),
                what: format!("missing from the live views (the store is at version {r})"),
            }),
            (None, None) => {}
        }
    }
}
