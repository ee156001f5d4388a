//! Generic rivers: a river with no service behind it is a durable queue over the
//! rapids, served by the event bus.
//!
//! The bus runs each generic river with the rapids' river framework (per-shard leases
//! and checkpoints in Postgres, so several bus instances share the work and a restart
//! loses nothing). Its handler, [`QueueHandler`], receives every event and keeps, in
//! the river's own transaction with its checkpoint, those its subscriptions select
//! and that were recorded after the subscription was made: an event sent before a
//! subscription is never delivered, one sent after it always is (the subscription
//! commits before the event does, and the handler reads the subscriptions of each
//! page in its own transaction).
//!
//! Readers [`receive`] up to N messages, long-polling up to `wait_ms` like an SQS
//! receive: a received message is invisible for `visibility_ms`, with a receipt; an
//! [`ack`] with that receipt removes it for good; one not acknowledged in time comes
//! back. `for update skip locked` keeps two concurrent readers from getting the same
//! message.

use crate::names;
use rapids::river::{Handler, HandlerError, RiverEvent, TopicFilter};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use service_kit::auth::Caller;
use service_kit::{ApiError, ErrorCode};
use sqlx::{PgConnection, PgPool};
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use utoipa::ToSchema;
use uuid::Uuid;

/// The NOTIFY channel on which a generic river announces new messages (payload: its name).
pub const CHANNEL: &str = "river_messages";

/// Writes the events a generic river's subscriptions select into its queue.
pub struct QueueHandler {
    pub river: String,
}

/// The message of an event, with the field names the CLI shows, and who posted it
/// (the token's subject and role the store recorded, as the tailer published them).
pub fn message(event: &RiverEvent) -> Value {
    let e = &event.envelope;
    json!({
        "eventType": e.event_type,
        "eventDomain": e.source,
        "payload": e.data,
        "timestamp": e.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "eventId": e.event_id,
        "poster": {"subject": e.actor, "role": e.role},
        "tags": e.tags,
    })
}

/// The shape of a message ([`message`]), for the OpenAPI document: what a generic
/// river's reader gets.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BusMessage {
    /// The event's type.
    pub event_type: String,
    /// Its emitting domain (`source`).
    pub event_domain: String,
    /// Its data.
    #[schema(value_type = Object)]
    pub payload: Value,
    /// When it was recorded (RFC 3339).
    pub timestamp: String,
    pub event_id: Uuid,
    /// Who posted it, as the event store recorded it.
    pub poster: Poster,
    /// Its tags: the producer's, and `region` and `service` (messages queued before
    /// tags were carried have none).
    #[serde(default)]
    #[schema(value_type = Option<std::collections::HashMap<String, String>>)]
    pub tags: Option<Value>,
}

/// The poster of a message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Poster {
    pub subject: String,
    pub role: Option<String>,
}

impl Handler for QueueHandler {
    async fn handle(&self, tx: &mut PgConnection, events: &[RiverEvent]) -> Result<(), HandlerError> {
        let transient = |e: sqlx::Error| {
            if rapids::river::is_transient(&e) {
                HandlerError::Transient(e.to_string())
            } else {
                HandlerError::Permanent(e.to_string())
            }
        };
        let subscriptions: Vec<(String, Vec<String>, chrono::DateTime<chrono::Utc>)> =
            sqlx::query_as("select pattern, tags, created_at from rapids.river_subscriptions where river = $1")
                .bind(&self.river)
                .fetch_all(&mut *tx)
                .await
                .map_err(transient)?;
        let mut ids = Vec::new();
        let mut messages = Vec::new();
        let mut seen = HashSet::new();
        for event in events {
            let e = &event.envelope;
            let wanted = subscriptions.iter().any(|(pattern, tags, since)| {
                names::matches(pattern, &e.event_type)
                    && rapids::river::tags_match(tags, &e.tags)
                    && e.recorded_at >= *since
            });
            if wanted && seen.insert(e.event_id) {
                ids.push(e.event_id);
                messages.push(message(event));
            }
        }
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(
            "insert into rapids.river_messages (river, event_id, message)
             select $1, e, m from unnest($2::uuid[], $3::jsonb[]) as t(e, m)
             on conflict (river, event_id) do nothing",
        )
        .bind(&self.river)
        .bind(&ids)
        .bind(&messages)
        .execute(&mut *tx)
        .await
        .map_err(transient)?;
        sqlx::query("select pg_notify($1, $2)")
            .bind(CHANNEL)
            .bind(&self.river)
            .execute(&mut *tx)
            .await
            .map_err(transient)?;
        Ok(())
    }
}

/// `POST /rivers/{river}/receive`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Receive {
    /// At most this many messages (default 10).
    #[serde(default, deserialize_with = "service_kit::extract::optional_whole")]
    #[schema(minimum = 1, maximum = 100)]
    pub max_messages: Option<i64>,
    /// Wait up to this long for a first message, in ms (default 0; capped by
    /// `BUS_MAX_WAIT_MS` and always ending before the request timeout).
    #[serde(default, deserialize_with = "service_kit::extract::optional_whole")]
    #[schema(minimum = 0)]
    pub wait_ms: Option<i64>,
    /// How long the received messages stay invisible to other receives, in ms
    /// (default 30,000).
    #[serde(default, deserialize_with = "service_kit::extract::optional_whole")]
    #[schema(minimum = 1, maximum = 43200000)]
    pub visibility_ms: Option<i64>,
}

/// A received message.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Received {
    /// Acknowledge with it; a later receive of the same message has another.
    pub receipt: Uuid,
    /// How many times the message was received (1 the first time).
    pub receive_count: i32,
    /// `eventType`, `eventDomain`, `payload`, `timestamp` (RFC 3339), `eventId`,
    /// `poster`, `tags`.
    #[schema(value_type = BusMessage)]
    pub message: Value,
}

/// The answer of a receive.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Messages {
    pub messages: Vec<Received>,
}

/// `POST /rivers/{river}/ack`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    /// At most [`MAX_ACK`]: a whole ack fits the gateway's 16 KiB body limit.
    #[schema(max_items = 250)]
    pub receipts: Vec<Uuid>,
}

/// The most receipts one ack takes (two receives of the most messages, and then some).
pub const MAX_ACK: usize = 250;

/// The answer of an ack.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Acked {
    /// The receipts that acknowledged a message (an expired or unknown receipt does not).
    pub acked: i64,
}

fn fault(e: sqlx::Error) -> ApiError {
    ApiError::from(eventstore::StoreError::from(e))
}

/// Wakes receivers when a generic river has new messages.
#[derive(Default)]
pub struct Arrivals {
    notify: tokio::sync::Notify,
}

impl Arrivals {
    /// Listens for the rivers' announcements until `shutdown`, reconnecting after a pause.
    pub async fn listen(self: Arc<Self>, pool: PgPool, shutdown: CancellationToken) {
        loop {
            let listening = async {
                let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
                listener.listen(CHANNEL).await?;
                self.notify.notify_waiters();
                loop {
                    listener.recv().await?;
                    self.notify.notify_waiters();
                }
                #[allow(unreachable_code)]
                Ok::<(), sqlx::Error>(())
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                outcome = listening => if let Err(error) = outcome {
                    tracing::warn!(%error, "not listening for river messages; polling meanwhile");
                },
            }
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Whether `river` is a generic river that `caller` may read: 404 `river_not_found`
/// for none, 409 for a managed or a served one, 403 for someone else's (an admin reads
/// any).
pub async fn check_generic(pool: &PgPool, caller: &Caller, river: &str) -> Result<(), ApiError> {
    crate::registry::check_river(river)?;
    match crate::registry::river(pool, river).await? {
        None => Err(ApiError::new(ErrorCode::RiverNotFound, format!("no generic river `{river}`"))),
        Some(row) if row.managed => Err(ApiError::new(
            ErrorCode::RiverManaged,
            format!("`{river}` is a built-in river, read by its service, not a queue"),
        )),
        Some(row) if row.served => Err(ApiError::new(
            ErrorCode::RiverServed,
            format!("`{river}` is read by a service of its own, not a queue"),
        )),
        Some(row) => crate::registry::may_use(caller, row.owner.as_deref()),
    }
}

async fn claim(pool: &PgPool, river: &str, max: i64, visibility_ms: i64) -> Result<Vec<Received>, ApiError> {
    let mut rows: Vec<(i64, Uuid, i32, sqlx::types::Json<Value>)> = sqlx::query_as(
        "with picked as (
             select id from rapids.river_messages
             where river = $1 and acked_at is null and visible_at <= now()
             order by id limit $2
             for update skip locked
         )
         update rapids.river_messages m
         set visible_at = now() + make_interval(secs => $3::float8 / 1000),
             receipt = gen_random_uuid(),
             receive_count = m.receive_count + 1
         from picked where m.id = picked.id
         returning m.id, m.receipt, m.receive_count, m.message",
    )
    .bind(river)
    .bind(max)
    .bind(visibility_ms as f64)
    .fetch_all(pool)
    .await
    .map_err(fault)?;
    rows.sort_by_key(|r| r.0);
    Ok(rows
        .into_iter()
        .map(|(_, receipt, receive_count, message)| Received { receipt, receive_count, message: message.0 })
        .collect())
}

/// Receives up to `max_messages`, waiting up to `wait` for a first one.
pub async fn receive(
    pool: &PgPool,
    arrivals: &Arrivals,
    caller: &Caller,
    river: &str,
    request: &Receive,
    max_wait: Duration,
) -> Result<Messages, ApiError> {
    check_generic(pool, caller, river).await?;
    let max = service_kit::extract::in_range("max_messages", request.max_messages, 100)?.unwrap_or(10);
    if max < 1 {
        return Err(ApiError::new(ErrorCode::InvalidBody, "max_messages must be from 1 to 100"));
    }
    let wait = service_kit::extract::in_range("wait_ms", request.wait_ms, i64::MAX)?.unwrap_or(0);
    let visibility = request.visibility_ms.unwrap_or(30_000);
    if !(1..=43_200_000).contains(&visibility) {
        return Err(ApiError::new(ErrorCode::InvalidBody, "visibility_ms must be from 1 to 43,200,000 (12 h)"));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait.unsigned_abs()).min(max_wait);
    loop {
        let arrived = arrivals.notify.notified();
        let messages = claim(pool, river, max, visibility).await?;
        if !messages.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(Messages { messages });
        }
        // a new message, a message becoming visible again (checked twice a second), or the end
        tokio::select! {
            _ = arrived => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = tokio::time::sleep_until(deadline) => {}
        }
    }
}

/// Acknowledges received messages: they never come back.
pub async fn ack(pool: &PgPool, caller: &Caller, river: &str, request: &Ack) -> Result<Acked, ApiError> {
    check_generic(pool, caller, river).await?;
    if request.receipts.len() > MAX_ACK {
        return Err(ApiError::new(ErrorCode::InvalidBody, "at most 250 receipts per ack"));
    }
    let done = sqlx::query(
        "update rapids.river_messages set acked_at = now()
         where river = $1 and receipt = any($2) and acked_at is null",
    )
    .bind(river)
    .bind(&request.receipts)
    .execute(pool)
    .await
    .map_err(fault)?;
    Ok(Acked { acked: done.rows_affected() as i64 })
}

/// Runs every generic river (one with subscriptions and no service behind it) until
/// `shutdown`, starting the new ones within `every` and stopping those that are no
/// longer generic (a service now reads it: it marked itself served).
pub async fn run_generic_rivers(
    pool: PgPool,
    rapids: rapids::Rapids,
    args: rapids::config::RiverArgs,
    metrics: rapids::river::RiverMetrics,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut running: std::collections::HashMap<String, (tokio::task::JoinHandle<()>, CancellationToken)> =
        Default::default();
    loop {
        let generic: Result<Vec<String>, sqlx::Error> = sqlx::query_scalar(
            "select r.name from rapids.rivers r
             where not r.managed and not r.served
               and exists (select 1 from rapids.river_subscriptions s where s.river = r.name)",
        )
        .fetch_all(&pool)
        .await;
        match generic {
            Ok(names) => {
                for (name, (_, stop)) in &running {
                    if !names.contains(name) && !stop.is_cancelled() {
                        tracing::info!(river = %name, "no longer a generic river: stopped");
                        stop.cancel();
                    }
                }
                running.retain(|_, (task, _)| !task.is_finished());
                for name in names {
                    if running.contains_key(&name) {
                        continue;
                    }
                    // every event reaches the handler, which applies the subscriptions
                    // in its own transaction (see the module's doc)
                    let config = args.river_config(&name, TopicFilter::new(&["*"]));
                    let river = rapids::river::River::new(
                        config,
                        // a pool of its own (opened as needed), like a service's river: each
                        // river holds a LISTEN connection and its readers' transactions,
                        // which must never starve the bus's requests however many rivers run
                        args.river_pool(&pool),
                        rapids.clone(),
                        QueueHandler { river: name.clone() },
                        metrics.clone(),
                    );
                    tracing::info!(river = %name, "generic river started");
                    let stop = shutdown.child_token();
                    running.insert(name, (tokio::spawn(river.run(stop.clone())), stop));
                }
            }
            Err(error) => tracing::warn!(%error, "cannot list the generic rivers; retrying"),
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(every) => {}
        }
    }
    for (_, (task, _)) in running {
        let _ = task.await;
    }
}
