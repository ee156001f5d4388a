//! Events posted to the bus: checked, stored in the event store (one stream each,
//! stream type `bus`) and answered only after their commit; the tailer then plays
//! them to the rapids like every other event. Also the paged query of every stored
//! event by type, source and stream.

use crate::{names, registry};
use eventstore::envelope::EventMetadata;
use eventstore::store::{Append, NewEvent};
use eventstore::{EventStore, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use service_kit::auth::{Caller, Role};
use service_kit::{ApiError, ErrorCode};
use sqlx::PgPool;
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// The stream type of events posted to the bus.
pub const STREAM_TYPE: &str = "bus";

/// Most tags a producer may set.
pub const MAX_TAGS: usize = 16;
/// Tags the tailer sets on every envelope: a producer may not.
pub const RESERVED_TAGS: [&str; 2] = ["region", "service"];

/// `POST /events`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostEvent {
    /// One to three dot-separated segments: a topic (`ViewPage`), an event
    /// (`page.viewed`) or a task (`transfers.transfer.create`). Not `account.*` nor
    /// `transfer.*`, which only the bank's aggregates emit.
    #[serde(rename = "type")]
    #[schema(pattern = "^[A-Za-z][A-Za-z0-9_-]*(\\.[A-Za-z][A-Za-z0-9_-]*){0,2}$", max_length = 128)]
    pub event_type: String,
    /// The emitting domain.
    #[schema(pattern = "^[A-Za-z][A-Za-z0-9_.-]*$", max_length = 64)]
    pub source: String,
    /// The payload: a JSON object.
    #[schema(value_type = Object)]
    pub data: Value,
    /// The Kinesis partition key (events with one key keep their order); default a
    /// random UUID.
    #[serde(default)]
    #[schema(min_length = 1, max_length = 256)]
    pub partition_key: Option<String>,
    /// The event's id; posting the same id again answers the first answer and stores
    /// nothing. Default a new UUIDv7.
    #[serde(default)]
    pub event_id: Option<Uuid>,
    /// The producer's tags: at most 16 pairs of string values; not `region` or `service`
    /// (the tailer sets those).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub tags: Option<Map<String, Value>>,
}

/// A stored event, as `POST /events` answers it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PostedEvent {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub source: String,
    /// The event's own stream in the event store.
    pub stream_id: Uuid,
    /// Its position in the store's log.
    pub position: i64,
    pub partition_key: String,
    /// When it was recorded, epoch milliseconds.
    pub timestamp: i64,
    #[schema(value_type = Object)]
    pub tags: Map<String, Value>,
}

impl PostEvent {
    /// Every check of a posted event, before anything is stored.
    pub fn check(&self) -> Result<(), ApiError> {
        if names::kind(&self.event_type).is_none() {
            return Err(ApiError::new(
                ErrorCode::InvalidEventType,
                "type must be 1 to 3 dot-separated segments of [A-Za-z][A-Za-z0-9_-]* (at most 128 characters)",
            ));
        }
        if rapids::river::is_reserved(&self.event_type) {
            return Err(ApiError::new(
                ErrorCode::ReservedEventType,
                "account.* and transfer.* events come only from the bank's aggregates",
            ));
        }
        if !names::valid_source(&self.source) {
            return Err(ApiError::new(ErrorCode::InvalidSource, ErrorCode::InvalidSource.meaning()));
        }
        if names::reserved_source(&self.source) {
            return Err(ApiError::new(ErrorCode::ReservedSource, ErrorCode::ReservedSource.meaning()));
        }
        if !self.data.is_object() {
            return Err(ApiError::new(ErrorCode::InvalidData, "data must be a JSON object"));
        }
        if let Some(key) = &self.partition_key
            && (key.is_empty() || key.chars().count() > 256)
        {
            return Err(ApiError::new(ErrorCode::InvalidPartitionKey, ErrorCode::InvalidPartitionKey.meaning()));
        }
        if let Some(tags) = &self.tags {
            let bad = tags.len() > MAX_TAGS
                || tags.iter().any(|(k, v)| {
                    k.is_empty() || k.chars().count() > 64 || v.as_str().is_none_or(|v| v.chars().count() > 256)
                });
            if bad {
                return Err(ApiError::new(ErrorCode::InvalidTags, ErrorCode::InvalidTags.meaning()));
            }
            // the tailer's own: it would replace them on the way to the stream
            if let Some(key) = RESERVED_TAGS.iter().find(|k| tags.contains_key(**k)) {
                return Err(ApiError::new(
                    ErrorCode::InvalidTags,
                    format!("the tag `{key}` is the tailer's (it says where and by whom the event was stored)"),
                ));
            }
        }
        Ok(())
    }
}

/// What is stored of a posted event, to answer a repeat of its id.
#[derive(Debug, sqlx::FromRow)]
struct StoredRow {
    position: i64,
    stream_id: Uuid,
    #[sqlx(rename = "type")]
    event_type: String,
    data: sqlx::types::Json<Value>,
    metadata: sqlx::types::Json<EventMetadata>,
    recorded_at: chrono::DateTime<chrono::Utc>,
}

impl StoredRow {
    fn answer(&self) -> PostedEvent {
        let m = &self.metadata.0;
        PostedEvent {
            event_id: Uuid::nil(),
            event_type: self.event_type.clone(),
            source: m.source.clone().unwrap_or_default(),
            stream_id: self.stream_id,
            position: self.position,
            partition_key: m.partition_key.clone().unwrap_or_else(|| self.stream_id.to_string()),
            timestamp: self.recorded_at.timestamp_millis(),
            tags: m.tags.clone(),
        }
    }
}

async fn find(pool: &PgPool, event_id: Uuid) -> Result<Option<StoredRow>, ApiError> {
    sqlx::query_as("select position, stream_id, type, data, metadata, recorded_at from es.events where event_id = $1")
        .bind(event_id)
        .fetch_optional(pool)
        .await
        .map_err(|e| ApiError::from(StoreError::from(e)))
}

/// The first answer for a repeated `event_id`, or 422 when the repeat differs.
fn repeat(post: &PostEvent, event_id: Uuid, stored: &StoredRow) -> Result<PostedEvent, ApiError> {
    let same = stored.event_type == post.event_type
        && stored.metadata.0.source.as_deref() == Some(post.source.as_str())
        && stored.data.0 == post.data;
    if !same {
        return Err(ApiError::new(ErrorCode::EventIdReused, ErrorCode::EventIdReused.meaning()));
    }
    Ok(PostedEvent { event_id, ..stored.answer() })
}

/// What a customer's post must meet beyond every post's checks: an advertised topic
/// (or a bank's task), and at most `max_bytes` of data and tags.
async fn customer_may_post(pool: &PgPool, post: &PostEvent, max_bytes: usize) -> Result<(), ApiError> {
    let data = serde_json::to_vec(&post.data).map_or(usize::MAX, |b| b.len());
    let tags = post.tags.as_ref().map_or(Ok(0), |t| serde_json::to_vec(t).map(|b| b.len())).unwrap_or(usize::MAX);
    let bytes = data.saturating_add(tags);
    if bytes > max_bytes {
        return Err(ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("a customer's event holds at most {max_bytes} bytes of data and tags"),
        ));
    }
    if !registry::postable_by_customers(pool, &post.event_type).await? {
        return Err(ApiError::new(ErrorCode::TopicNotAdvertised, ErrorCode::TopicNotAdvertised.meaning()));
    }
    Ok(())
}

/// Stores a checked event; `Ok((answer, replayed))`. A customer's event is held to
/// advertised topics and `customer_max_bytes`.
pub async fn post(
    store: &EventStore,
    pool: &PgPool,
    caller: &Caller,
    customer_max_bytes: usize,
    request_id: Option<String>,
    correlation_id: Option<String>,
    post: PostEvent,
) -> Result<(PostedEvent, bool), ApiError> {
    post.check()?;
    if caller.role == Role::Customer {
        customer_may_post(pool, &post, customer_max_bytes).await?;
    }
    let event_id = post.event_id.unwrap_or_else(Uuid::now_v7);
    let stream_id = Uuid::now_v7();
    let partition_key = post.partition_key.clone().unwrap_or_else(|| Uuid::new_v4().to_string());
    let tags = post.tags.clone().unwrap_or_default();
    let append = Append {
        stream_id,
        stream_type: STREAM_TYPE,
        expected_version: 0,
        events: vec![NewEvent {
            event_id,
            event_type: post.event_type.clone(),
            schema_version: 1,
            data: post.data.clone(),
            metadata: None,
        }],
        metadata: EventMetadata {
            correlation_id: correlation_id.or_else(|| request_id.clone()),
            causation_id: request_id.clone(),
            request_id,
            actor: caller.subject.clone(),
            role: Some(caller.role.as_str().to_owned()),
            source: Some(post.source.clone()),
            service: Some("event-bus".into()),
            partition_key: Some(partition_key),
            tags,
            traceparent: eventstore::trace::current(),
        },
        snapshot: None,
        idempotency: Vec::new(),
    };
    // no look-up first: a repeated id (posted again, or concurrently) fails the append
    // on the events' unique event id, and only then is the first answer read
    match store.append(&append).await {
        Ok(_) => {}
        Err(e) => {
            return match find(pool, event_id).await? {
                Some(stored) => repeat(&post, event_id, &stored).map(|a| (a, true)),
                None => Err(e.into()),
            };
        }
    }
    let stored = find(pool, event_id).await?.ok_or_else(|| ApiError::internal("a stored event is not found"))?;
    Ok((PostedEvent { event_id, ..stored.answer() }, false))
}

/// `GET /events`: every stored event (the bank's and the bus's), by position.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Only this event type.
    #[serde(rename = "type")]
    #[param(rename = "type", max_length = 128, pattern = "^[^\\x00]*$")]
    pub event_type: Option<String>,
    /// Only this emitting domain (a bus event's `source`; `account`, `transfer`).
    #[param(max_length = 64, pattern = "^[^\\x00]*$")]
    pub source: Option<String>,
    /// Only this stream (an account's or a transfer's id).
    pub stream: Option<Uuid>,
    /// Only events after this position (the previous page's `next_after`).
    #[param(minimum = 0)]
    pub after: Option<i64>,
    /// Events per page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<i64>,
}

/// One stored event.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct StoredEvent {
    pub position: i64,
    pub event_id: Uuid,
    #[serde(rename = "type")]
    #[sqlx(rename = "type")]
    pub event_type: String,
    pub source: String,
    pub stream_id: Uuid,
    pub stream_type: String,
    pub version: i32,
    #[schema(value_type = Object)]
    pub data: sqlx::types::Json<Value>,
    /// Who stored it (token subject and role), request, correlation and causation ids.
    #[schema(value_type = Object)]
    pub metadata: sqlx::types::Json<Value>,
    pub recorded_at: chrono::DateTime<chrono::Utc>,
}

/// A page of stored events.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct EventPage {
    pub items: Vec<StoredEvent>,
    /// The `after` of the next page; null on the last.
    pub next_after: Option<i64>,
}

/// A page of stored events by position.
pub async fn query(pool: &PgPool, q: &EventsQuery) -> Result<EventPage, ApiError> {
    let too_long = |name: &str, value: &Option<String>, max: usize| match value {
        Some(v) if v.chars().count() > max => {
            Err(ApiError::new(ErrorCode::InvalidQuery, format!("{name} is longer than {max} characters"))
                .with_detail("parameter", name))
        }
        _ => Ok(()),
    };
    too_long("type", &q.event_type, names::MAX_NAME)?;
    too_long("source", &q.source, 64)?;
    let limit = service_kit::extract::in_range("limit", q.limit, 1000)?.unwrap_or(100);
    if limit < 1 {
        return Err(ApiError::new(ErrorCode::InvalidQuery, "limit must be an integer from 1 to 1000")
            .with_detail("parameter", "limit"));
    }
    let after = service_kit::extract::in_range("after", q.after, i64::MAX)?.unwrap_or(0);
    let mut items: Vec<StoredEvent> = sqlx::query_as(
        "select position, event_id, type, coalesce(metadata ->> 'source', stream_type) as source, stream_id,
                stream_type, version, data, metadata, recorded_at
         from es.events
         where position > $1
           and ($2::text is null or type = $2)
           and ($3::text is null or coalesce(metadata ->> 'source', stream_type) = $3)
           and ($4::uuid is null or stream_id = $4)
         order by position
         limit $5",
    )
    .bind(after)
    .bind(&q.event_type)
    .bind(&q.source)
    .bind(q.stream)
    .bind(limit + 1)
    .fetch_all(pool)
    .await
    .map_err(|e| ApiError::from(StoreError::from(e)))?;
    let more = items.len() as i64 > limit;
    items.truncate(limit as usize);
    let next_after = if more { items.last().map(|e| e.position) } else { None };
    Ok(EventPage { items, next_after })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn post(body: Value) -> Result<(), ErrorCode> {
        let post: PostEvent = serde_json::from_value(body).map_err(|_| ErrorCode::InvalidBody)?;
        post.check().map_err(|e| e.code)
    }

    #[test]
    fn a_posted_event_is_checked_before_anything_is_stored() {
        assert_eq!(post(json!({"type": "ViewPage", "source": "TheSource", "data": {"name": "Sally"}})), Ok(()));
        assert_eq!(post(json!({"type": "a.b.c.d", "source": "s", "data": {}})), Err(ErrorCode::InvalidEventType));
        assert_eq!(
            post(json!({"type": "account.credited", "source": "s", "data": {}})),
            Err(ErrorCode::ReservedEventType)
        );
        assert_eq!(
            post(json!({"type": "transfer.created", "source": "s", "data": {}})),
            Err(ErrorCode::ReservedEventType)
        );
        assert_eq!(post(json!({"type": "accounts.x", "source": "s", "data": {}})), Ok(()));
        assert_eq!(post(json!({"type": "a", "source": "", "data": {}})), Err(ErrorCode::InvalidSource));
        assert_eq!(post(json!({"type": "a", "source": "s", "data": [1]})), Err(ErrorCode::InvalidData));
        assert_eq!(post(json!({"type": "a", "source": "s", "data": "x"})), Err(ErrorCode::InvalidData));
        assert_eq!(
            post(json!({"type": "a", "source": "s", "data": {}, "partition_key": ""})),
            Err(ErrorCode::InvalidPartitionKey)
        );
        let many: Map<String, Value> = (0..17).map(|i| (format!("t{i}"), json!("v"))).collect();
        assert_eq!(post(json!({"type": "a", "source": "s", "data": {}, "tags": many})), Err(ErrorCode::InvalidTags));
        assert_eq!(
            post(json!({"type": "a", "source": "s", "data": {}, "tags": {"n": 1}})),
            Err(ErrorCode::InvalidTags)
        );
        assert_eq!(post(json!({"type": "a", "source": "s", "data": {}, "tags": {"app": "eu"}})), Ok(()));
        for reserved in RESERVED_TAGS {
            let tags = json!({reserved: "mine"});
            assert_eq!(
                post(json!({"type": "a", "source": "s", "data": {}, "tags": tags})),
                Err(ErrorCode::InvalidTags)
            );
        }
        assert_eq!(post(json!({"type": "a", "source": "s", "data": {}, "extra": 1})), Err(ErrorCode::InvalidBody));
    }
}
