//! The view tables: applying a stream's events to them (version + 1 only, duplicates
//! skipped, gaps filled from the event store) and the `views` river's handler.
//!
//! Every function takes the schema to write: `views` (live) or `views_rebuild` (a
//! rebuild in progress). Schema names are constants of this module, never input.

use crate::projection::{self, AccountView, BankLegs, ProjectionError, TransactionRow, TransferView, ViewEvent};
use rapids::river::{Handler, HandlerError, RiverEvent, is_transient};
use sqlx::PgConnection;
use uuid::Uuid;

/// The live views.
pub const LIVE: &str = "views";
/// Where a rebuild builds the views before it swaps them in.
pub const REBUILD: &str = "views_rebuild";
/// NOTIFY channel: payload `<stream id>:<version>` for every stream a commit advanced.
pub const ADVANCED_CHANNEL: &str = "views_advanced";

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error("the event store has no version {version} of {stream_id}")]
    MissingInStore { stream_id: Uuid, version: i32 },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

impl From<ApplyError> for HandlerError {
    fn from(e: ApplyError) -> Self {
        match &e {
            ApplyError::Database(db) if is_transient(db) => HandlerError::Transient(e.to_string()),
            _ => HandlerError::Permanent(e.to_string()),
        }
    }
}

pub(crate) const ACCOUNT_COLUMNS: &str = "id, owner, currency, status, balance, version, opened_at, updated_at";
pub(crate) const TRANSFER_COLUMNS: &str = "id, from_account, to_account, amount, currency, state, failure_reason, \
                                           initiated_by, memo, version, created_at, updated_at";

/// Applies `events` (one stream's, in version order; duplicates and gaps allowed) to
/// the views in `schema`, in `tx`, the bank's legs under `part`. Returns the stream's
/// version when it advanced.
pub async fn apply_stream(
    tx: &mut PgConnection,
    schema: &str,
    part: &str,
    stream_id: Uuid,
    stream_type: &str,
    events: &[ViewEvent],
) -> Result<Option<i32>, ApplyError> {
    let streams = [StreamEvents { stream_id, stream_type: stream_type.to_owned(), events: events.to_vec() }];
    Ok(apply_streams(tx, schema, part, &streams).await?.first().map(|(_, version)| *version))
}

/// One stream's events of a page.
#[derive(Debug, Clone)]
pub struct StreamEvents {
    pub stream_id: Uuid,
    pub stream_type: String,
    pub events: Vec<ViewEvent>,
}

/// Applies several streams' events with a handful of statements: their rows are read
/// (and locked, in id order) at once, folded in memory, and written back at once.
/// The legs on the bank's own accounts go to their rows of `part` (the river's shard:
/// each shard's worker writes its own rows, so the bank's accounts are no hot rows).
/// Returns each stream that advanced, with its new version.
pub async fn apply_streams(
    tx: &mut PgConnection,
    schema: &str,
    part: &str,
    streams: &[StreamEvents],
) -> Result<Vec<(Uuid, i32)>, ApplyError> {
    let ids = |kind: &str| streams.iter().filter(|s| s.stream_type == kind).map(|s| s.stream_id).collect::<Vec<_>>();
    let (account_ids, transfer_ids) = (ids("account"), ids("transfer"));
    let mut accounts: std::collections::HashMap<Uuid, AccountView> = if account_ids.is_empty() {
        Default::default()
    } else {
        sqlx::query_as::<_, AccountView>(&format!(
            "select {ACCOUNT_COLUMNS} from {schema}.accounts where id = any($1) order by id for update"
        ))
        .bind(&account_ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|v| (v.id, v))
        .collect()
    };
    let mut transfers: std::collections::HashMap<Uuid, TransferView> = if transfer_ids.is_empty() {
        Default::default()
    } else {
        sqlx::query_as::<_, TransferView>(&format!(
            "select {TRANSFER_COLUMNS} from {schema}.transfers where id = any($1) order by id for update"
        ))
        .bind(&transfer_ids)
        .fetch_all(&mut *tx)
        .await?
        .into_iter()
        .map(|v| (v.id, v))
        .collect()
    };
    let mut advanced = Vec::new();
    let (mut changed_accounts, mut changed_transfers, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    let mut legs = BankLegs::default();
    for stream in streams {
        let id = stream.stream_id;
        match stream.stream_type.as_str() {
            "account" => {
                let mut view = accounts.remove(&id);
                let start = view.as_ref().map_or(0, |v| v.version);
                let version = fold(tx, id, start, &stream.events, |e| {
                    let (next, row) = projection::apply_account_with_legs(view.take(), e, &mut legs)?;
                    view = Some(next);
                    rows.extend(row);
                    Ok(())
                })
                .await?;
                if let (Some(view), true) = (view, version > start) {
                    changed_accounts.push(view);
                    advanced.push((id, version));
                }
            }
            "transfer" => {
                let mut view = transfers.remove(&id);
                let start = view.as_ref().map_or(0, |v| v.version);
                let version = fold(tx, id, start, &stream.events, |e| {
                    view = Some(projection::apply_transfer(view.take(), e)?);
                    Ok(())
                })
                .await?;
                if let (Some(view), true) = (view, version > start) {
                    changed_transfers.push(view);
                    advanced.push((id, version));
                }
            }
            // not a stream the views show
            _ => {}
        }
    }
    upsert_accounts(tx, schema, &changed_accounts).await?;
    upsert_transfers(tx, schema, &changed_transfers).await?;
    insert_transactions(tx, schema, &rows).await?;
    add_bank_legs(tx, schema, part, &legs).await?;
    Ok(advanced)
}

/// Adds the legs to the bank accounts' rows of `part`.
pub async fn add_bank_legs(tx: &mut PgConnection, schema: &str, part: &str, legs: &BankLegs) -> sqlx::Result<()> {
    if legs.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "insert into {schema}.bank_balances (account_id, part, currency, balance, postings)
         select id, $2, currency, balance, postings
         from unnest($1::uuid[], $3::text[], $4::int8[], $5::int8[]) as l(id, currency, balance, postings)
         on conflict (account_id, part) do update
             set balance = {schema}.bank_balances.balance + excluded.balance,
                 postings = {schema}.bank_balances.postings + excluded.postings"
    ))
    .bind(legs.0.keys().copied().collect::<Vec<_>>())
    .bind(part)
    .bind(legs.0.values().map(|v| v.0.as_str()).collect::<Vec<_>>())
    .bind(legs.0.values().map(|v| v.1).collect::<Vec<_>>())
    .bind(legs.0.values().map(|v| v.2).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Feeds `apply` the events after version `start`: each exactly once, in version
/// order; a gap before an event is filled from the event store first. Returns the
/// version reached.
async fn fold(
    tx: &mut PgConnection,
    stream_id: Uuid,
    start: i32,
    events: &[ViewEvent],
    mut apply: impl FnMut(&ViewEvent) -> Result<(), ProjectionError>,
) -> Result<i32, ApplyError> {
    let mut version = start;
    for event in events {
        if event.version <= version {
            continue; // a duplicate
        }
        if event.version > version + 1 {
            for missing in read_store(tx, stream_id, version, Some(event.version)).await? {
                apply(&missing)?;
            }
        }
        apply(event)?;
        version = event.version;
    }
    Ok(version)
}

/// The stream's events after `after` (and before `before`), contiguous, from the store.
pub async fn read_store(
    tx: &mut PgConnection,
    stream_id: Uuid,
    after: i32,
    before: Option<i32>,
) -> Result<Vec<ViewEvent>, ApplyError> {
    type Row = (String, i32, String, i16, sqlx::types::Json<serde_json::Value>, chrono::DateTime<chrono::Utc>);
    let rows: Vec<Row> = sqlx::query_as(
        "select stream_type, version, type, schema_version, data, recorded_at from es.events
             where stream_id = $1 and version > $2 and ($3::int is null or version < $3) order by version",
    )
    .bind(stream_id)
    .bind(after)
    .bind(before)
    .fetch_all(&mut *tx)
    .await?;
    let mut expected = after + 1;
    let mut events = Vec::with_capacity(rows.len());
    for (stream_type, version, event_type, schema_version, data, recorded_at) in rows {
        if version != expected {
            return Err(ApplyError::MissingInStore { stream_id, version: expected });
        }
        expected += 1;
        events.push(ViewEvent {
            stream_id,
            stream_type,
            version,
            event_type,
            schema_version,
            data: data.0,
            recorded_at,
        });
    }
    if let Some(before) = before
        && expected != before
    {
        return Err(ApplyError::MissingInStore { stream_id, version: expected });
    }
    Ok(events)
}

/// Writes account rows; a row already at a newer version is left alone.
pub async fn upsert_accounts(tx: &mut PgConnection, schema: &str, views: &[AccountView]) -> sqlx::Result<()> {
    if views.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "insert into {schema}.accounts ({ACCOUNT_COLUMNS})
         select * from unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::int8[], $6::int4[],
                              $7::timestamptz[], $8::timestamptz[])
         on conflict (id) do update set owner = excluded.owner, currency = excluded.currency,
             status = excluded.status, balance = excluded.balance, version = excluded.version,
             opened_at = excluded.opened_at, updated_at = excluded.updated_at
         where {schema}.accounts.version < excluded.version"
    ))
    .bind(views.iter().map(|v| v.id).collect::<Vec<_>>())
    .bind(views.iter().map(|v| v.owner.as_str()).collect::<Vec<_>>())
    .bind(views.iter().map(|v| v.currency.as_str()).collect::<Vec<_>>())
    .bind(views.iter().map(|v| v.status.as_str()).collect::<Vec<_>>())
    .bind(views.iter().map(|v| v.balance).collect::<Vec<_>>())
    .bind(views.iter().map(|v| v.version).collect::<Vec<_>>())
    .bind(views.iter().map(|v| v.opened_at).collect::<Vec<_>>())
    .bind(views.iter().map(|v| v.updated_at).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub async fn upsert_transfers(tx: &mut PgConnection, schema: &str, views: &[TransferView]) -> sqlx::Result<()> {
    if views.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "insert into {schema}.transfers ({TRANSFER_COLUMNS})
         select * from unnest($1::uuid[], $2::uuid[], $3::uuid[], $4::int8[], $5::text[], $6::text[], $7::text[],
                              $8::text[], $9::text[], $10::int4[], $11::timestamptz[], $12::timestamptz[])
         on conflict (id) do update set state = excluded.state, failure_reason = excluded.failure_reason,
             version = excluded.version, updated_at = excluded.updated_at
         where {schema}.transfers.version < excluded.version"
    ))
    .bind(views.iter().map(|v| v.id).collect::<Vec<_>>())
    .bind(views.iter().map(|v| v.from_account).collect::<Vec<_>>())
    .bind(views.iter().map(|v| v.to_account).collect::<Vec<_>>())
    .bind(views.iter().map(|v| v.amount).collect::<Vec<_>>())
    .bind(views.iter().map(|v| v.currency.as_str()).collect::<Vec<_>>())
    .bind(views.iter().map(|v| v.state.as_str()).collect::<Vec<_>>())
    .bind(views.iter().map(|v| v.failure_reason.as_deref()).collect::<Vec<_>>())
    .bind(views.iter().map(|v| v.initiated_by.as_str()).collect::<Vec<_>>())
    .bind(views.iter().map(|v| v.memo.as_str()).collect::<Vec<_>>())
    .bind(views.iter().map(|v| v.version).collect::<Vec<_>>())
    .bind(views.iter().map(|v| v.created_at).collect::<Vec<_>>())
    .bind(views.iter().map(|v| v.updated_at).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Adds transaction rows (one already there is a duplicate and kept).
pub async fn insert_transactions(tx: &mut PgConnection, schema: &str, rows: &[TransactionRow]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(&format!(
        "insert into {schema}.account_transactions
             (account_id, version, kind, amount, currency, balance_after, transfer_id, counterparty, recorded_at)
         select * from unnest($1::uuid[], $2::int4[], $3::text[], $4::int8[], $5::text[], $6::int8[], $7::uuid[],
                              $8::uuid[], $9::timestamptz[])
         on conflict do nothing"
    ))
    .bind(rows.iter().map(|r| r.account_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.version).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.kind.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.amount).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.currency.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.balance_after).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.transfer_id).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.counterparty).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.recorded_at).collect::<Vec<_>>())
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Adds transaction rows with one `COPY` (binary format): the rebuild's bulk load,
/// several times cheaper for the server than [`insert_transactions`]. No conflict
/// handling: for a table without keys yet, whose rows are known to be new.
pub async fn copy_transactions(conn: &mut PgConnection, schema: &str, rows: &[TransactionRow]) -> sqlx::Result<()> {
    if rows.is_empty() {
        return Ok(());
    }
    let data = copy_binary(rows)?;
    let mut copy = conn
        .copy_in_raw(&format!(
            "copy {schema}.account_transactions
                 (account_id, version, kind, amount, currency, balance_after, transfer_id, counterparty, recorded_at)
             from stdin (format binary)"
        ))
        .await?;
    copy.send(data).await?;
    copy.finish().await?;
    Ok(())
}

/// `rows` in `COPY`'s binary format: a header, then per row the field count and each
/// field as its length (-1: null) and its value as Postgres sends it (big-endian).
fn copy_binary(rows: &[TransactionRow]) -> sqlx::Result<Vec<u8>> {
    const FIELDS: i16 = 9;
    let mut out = Vec::with_capacity(19 + rows.len() * 130 + 2);
    // signature, flags, header extension length
    out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    out.extend_from_slice(&0i32.to_be_bytes());
    out.extend_from_slice(&0i32.to_be_bytes());
    let field = |out: &mut Vec<u8>, bytes: &[u8]| -> sqlx::Result<()> {
        let len = i32::try_from(bytes.len()).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(bytes);
        Ok(())
    };
    let uuid = |out: &mut Vec<u8>, id: Option<Uuid>| match id {
        Some(id) => field(out, id.as_bytes()),
        None => {
            out.extend_from_slice(&(-1i32).to_be_bytes());
            Ok(())
        }
    };
    for r in rows {
        out.extend_from_slice(&FIELDS.to_be_bytes());
        field(&mut out, r.account_id.as_bytes())?;
        field(&mut out, &r.version.to_be_bytes())?;
        field(&mut out, r.kind.as_bytes())?;
        field(&mut out, &r.amount.to_be_bytes())?;
        field(&mut out, r.currency.as_bytes())?;
        field(&mut out, &r.balance_after.to_be_bytes())?;
        uuid(&mut out, r.transfer_id)?;
        uuid(&mut out, r.counterparty)?;
        field(&mut out, &postgres_micros(r.recorded_at)?.to_be_bytes())?;
    }
    out.extend_from_slice(&(-1i16).to_be_bytes());
    Ok(out)
}

/// A `timestamptz` as Postgres stores it: microseconds since 2000-01-01 UTC (as sqlx
/// encodes it for a bound parameter).
fn postgres_micros(at: chrono::DateTime<chrono::Utc>) -> sqlx::Result<i64> {
    let epoch = chrono::DateTime::from_timestamp(946_684_800, 0).unwrap_or_default();
    (at - epoch).num_microseconds().ok_or_else(|| sqlx::Error::Encode(format!("{at} is out of range").into()))
}

/// Tells query-service waiters which streams advanced (delivered at commit).
pub async fn notify_advanced(tx: &mut PgConnection, advanced: &[String]) -> sqlx::Result<()> {
    if advanced.is_empty() {
        return Ok(());
    }
    sqlx::query("select pg_notify($1, payload) from unnest($2::text[]) payload")
        .bind(ADVANCED_CHANNEL)
        .bind(advanced)
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// The river `views`: applies each page's events stream by stream in the river's
/// transaction (with the checkpoint), then NOTIFYs the streams it advanced.
#[derive(Debug, Default, Clone, Copy)]
pub struct ViewsHandler;

impl Handler for ViewsHandler {
    async fn handle(&self, tx: &mut PgConnection, events: &[RiverEvent]) -> Result<(), HandlerError> {
        let mut streams: Vec<StreamEvents> = Vec::new();
        let mut index = std::collections::HashMap::new();
        // only the aggregates' own events: a task's refusal is `transfer.*` too
        for event in events.iter().filter(|e| e.from_aggregate("account") || e.from_aggregate("transfer")) {
            let e = &event.envelope;
            let at = *index.entry(e.stream_id).or_insert_with(|| {
                streams.push(StreamEvents {
                    stream_id: e.stream_id,
                    stream_type: e.stream_type.clone(),
                    events: Vec::new(),
                });
                streams.len() - 1
            });
            streams[at].events.push(ViewEvent::from(e));
        }
        let part = events.first().map_or("", |e| &*e.shard_id);
        let advanced = apply_streams(tx, LIVE, part, &streams).await?;
        let payloads: Vec<String> = advanced.iter().map(|(id, version)| format!("{id}:{version}")).collect();
        notify_advanced(tx, &payloads).await.map_err(ApplyError::from)?;
        Ok(())
    }
}
