//! The event bus's routes: post and query events, topics, river subscriptions, and
//! the receive/ack of generic rivers.

use crate::AppState;
use crate::events::{self, EventPage, EventsQuery, PostEvent, PostedEvent};
use crate::ops::{
    self, DeadLetters, DeadLettersQuery, RetryRequested, RiverStates, TailerStates, UnsettledQuery, UnsettledTransfers,
};
use crate::queue::{self, Ack, Acked, Messages, Receive};
use crate::registry::{self, Advertise, RiverSubscriptions, Topic};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use service_kit::auth::Caller;
use service_kit::extract::{ApiJson, ApiQuery, CORRELATION_ID, REQUEST_ID};
use service_kit::{ApiError, ErrorCode};
use utoipa::ToSchema;

/// The generated OpenAPI document of these routes (completed by [`crate::openapi`]).
#[derive(utoipa::OpenApi)]
#[openapi(paths(
    post_event,
    list_events,
    list_topics,
    advertise,
    list_rivers,
    list_subscriptions,
    subscribe,
    unsubscribe,
    receive,
    ack,
    ops_rivers,
    ops_tailer,
    ops_dead_letters,
    ops_retry,
    ops_unsettled,
    ops_ledger
))]
pub struct Api;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/events", post(post_event).get(list_events))
        .route("/topics", get(list_topics).post(advertise))
        .route("/rivers", get(list_rivers))
        .route("/rivers/{river}/subscriptions", get(list_subscriptions))
        .route("/rivers/{river}/subscriptions/{topic}", put(subscribe).delete(unsubscribe))
        .route("/rivers/{river}/receive", post(receive))
        .route("/rivers/{river}/ack", post(ack))
        .route("/ops/rivers", get(ops_rivers))
        .route("/ops/tailer", get(ops_tailer))
        .route("/ops/dead-letters", get(ops_dead_letters))
        .route("/ops/dead-letters/{id}/retry", post(ops_retry))
        .route("/ops/unsettled", get(ops_unsettled))
        .route("/ops/ledger", get(ops_ledger))
}

fn staff(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_staff() {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Forbidden, "tellers and admins only: the rapids carry every customer's events"))
    }
}

/// Who may own and read generic rivers: staff and machine identities (role
/// `service`); each river is then its owner's (and an admin's).
fn river_user(caller: &Caller) -> Result<(), ApiError> {
    if caller.is_staff() || caller.role == service_kit::auth::Role::Service {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Forbidden, "staff and services only: the rapids carry every customer's events"))
    }
}

fn header(headers: &axum::http::HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty() && v.len() <= 128).map(str::to_owned)
}

/// The errors of `POST /events`, beside the common ones.
pub const POST_ERRORS: &[ErrorCode] = &[
    ErrorCode::MalformedJson,
    ErrorCode::InvalidBody,
    ErrorCode::PayloadTooLarge,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::InvalidEventType,
    ErrorCode::InvalidSource,
    ErrorCode::InvalidData,
    ErrorCode::InvalidTags,
    ErrorCode::InvalidPartitionKey,
    ErrorCode::ReservedEventType,
    ErrorCode::ReservedSource,
    ErrorCode::TopicNotAdvertised,
    ErrorCode::EventIdReused,
    ErrorCode::RateLimited,
];
pub const QUERY_ERRORS: &[ErrorCode] = &[ErrorCode::InvalidQuery, ErrorCode::Forbidden];
pub const TOPIC_ERRORS: &[ErrorCode] = &[
    ErrorCode::MalformedJson,
    ErrorCode::InvalidBody,
    ErrorCode::PayloadTooLarge,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::InvalidEventType,
    ErrorCode::ReservedEventType,
    ErrorCode::Forbidden,
];
pub const RIVER_READ_ERRORS: &[ErrorCode] = &[ErrorCode::InvalidRiver, ErrorCode::Forbidden];
pub const SUBSCRIPTION_ERRORS: &[ErrorCode] = &[
    ErrorCode::InvalidRiver,
    ErrorCode::InvalidTopic,
    ErrorCode::InvalidTags,
    ErrorCode::InvalidQuery,
    ErrorCode::Forbidden,
    ErrorCode::RiverManaged,
];

/// The tag selectors of a subscription, as a query.
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TagsQuery {
    /// Comma-separated selectors, all of which an event's tags must meet: `vip` (the
    /// tag is there), `segment=road-warrior` (it has that value); at most 8.
    /// Subscribing: none selects any tags. Unsubscribing: none removes the topic's
    /// every subscription, some the one with exactly these.
    #[param(
        pattern = "^[A-Za-z][A-Za-z0-9_.-]{0,63}(=[A-Za-z0-9_.:@-]{1,64})?(,[A-Za-z][A-Za-z0-9_.-]{0,63}(=[A-Za-z0-9_.:@-]{1,64})?){0,7}$"
    )]
    pub tags: Option<String>,
}

impl TagsQuery {
    fn selectors(&self) -> Result<Option<Vec<String>>, ApiError> {
        self.tags
            .as_deref()
            .map(|raw| {
                crate::names::tag_selectors(raw).ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidTags,
                        "tags are at most 8 comma-separated selectors `key` or `key=value` (key: a letter, then \
                         letters, digits, `_.-`, at most 64; value: letters, digits, `_.:@-`, at most 64)",
                    )
                })
            })
            .transpose()
    }
}
pub const QUEUE_ERRORS: &[ErrorCode] = &[
    ErrorCode::MalformedJson,
    ErrorCode::InvalidBody,
    ErrorCode::PayloadTooLarge,
    ErrorCode::UnsupportedMediaType,
    ErrorCode::InvalidRiver,
    ErrorCode::InvalidQuery,
    ErrorCode::Forbidden,
    ErrorCode::RiverNotFound,
    ErrorCode::RiverManaged,
    ErrorCode::RiverServed,
];

/// Stores an event (201 after its commit); the tailer plays it to the rapids. Any
/// authenticated caller may post, at a rate per subject (429 `rate_limited`); a
/// customer only advertised topics and the bank's tasks, with less data. The token's
/// subject and role are recorded with it.
#[utoipa::path(post, path = "/events", tag = "events",
    request_body = PostEvent,
    responses((status = 201, description = "stored; a repeat of its event_id answers the same", body = PostedEvent)))]
async fn post_event(
    State(state): State<AppState>,
    caller: Caller,
    headers: axum::http::HeaderMap,
    body: ApiJson<PostEvent>,
) -> Result<Response, ApiError> {
    state.post_limit.check(&caller.subject)?;
    let (answer, replayed) = events::post(
        &state.store,
        &state.kit.pool,
        &caller,
        state.customer_max_event_bytes,
        header(&headers, REQUEST_ID),
        header(&headers, CORRELATION_ID),
        body.value,
    )
    .await?;
    let mut response = (StatusCode::CREATED, Json(answer)).into_response();
    if replayed {
        response.headers_mut().insert("idempotent-replayed", axum::http::HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Every stored event (the bank's and the bus's), by position (tellers and admins).
#[utoipa::path(get, path = "/events", tag = "events",
    params(EventsQuery),
    responses((status = 200, description = "a page of events", body = EventPage)))]
async fn list_events(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    staff(&caller)?;
    Ok(Json(events::query(&state.kit.pool, &query).await?))
}

/// The topics: those advertised, then the bank's own event types.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Topics {
    pub items: Vec<Topic>,
}

#[utoipa::path(get, path = "/topics", tag = "control plane",
    responses((status = 200, description = "the topics", body = Topics)))]
async fn list_topics(State(state): State<AppState>, _caller: Caller) -> Result<Json<Topics>, ApiError> {
    Ok(Json(Topics { items: registry::topics(&state.kit.pool).await? }))
}

/// Advertises a topic (tellers and admins): 201, or 200 when it was advertised before.
#[utoipa::path(post, path = "/topics", tag = "control plane",
    request_body = Advertise,
    responses(
        (status = 201, description = "advertised", body = Topic),
        (status = 200, description = "advertised before; unchanged", body = Topic)))]
async fn advertise(
    State(state): State<AppState>,
    caller: Caller,
    body: ApiJson<Advertise>,
) -> Result<Response, ApiError> {
    staff(&caller)?;
    let (topic, created) = registry::advertise(&state.kit.pool, &caller.subject, &body.value).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(topic)).into_response())
}

/// Every river with its subscriptions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Rivers {
    pub items: Vec<RiverSubscriptions>,
}

#[utoipa::path(get, path = "/rivers", tag = "control plane",
    responses((status = 200, description = "the rivers", body = Rivers)))]
async fn list_rivers(State(state): State<AppState>, caller: Caller) -> Result<Json<Rivers>, ApiError> {
    staff(&caller)?;
    Ok(Json(Rivers { items: registry::rivers(&state.kit.pool).await? }))
}

/// A river's subscriptions (none for a river not known yet).
#[utoipa::path(get, path = "/rivers/{river}/subscriptions", tag = "control plane",
    params(("river" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")),
    responses((status = 200, description = "the river's topics", body = RiverSubscriptions)))]
async fn list_subscriptions(
    State(state): State<AppState>,
    caller: Caller,
    Names(river): Names<String>,
) -> Result<Json<RiverSubscriptions>, ApiError> {
    staff(&caller)?;
    Ok(Json(registry::subscriptions(&state.kit.pool, &river).await?))
}

/// Subscribes a river to a topic pattern, creating a generic river at its first
/// subscription; a running river follows within seconds. Built-in rivers: 409.
#[utoipa::path(put, path = "/rivers/{river}/subscriptions/{topic}", tag = "control plane",
    params(
        ("river" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$"),
        ("topic" = String, Path, description = "an event type, a prefix `entity.*`, or `*`"),
        TagsQuery),
    responses((status = 200, description = "the river's topics", body = RiverSubscriptions)))]
async fn subscribe(
    State(state): State<AppState>,
    caller: Caller,
    Names((river, topic)): Names<(String, String)>,
    ApiQuery(query): ApiQuery<TagsQuery>,
) -> Result<Json<RiverSubscriptions>, ApiError> {
    river_user(&caller)?;
    let tags = query.selectors()?.unwrap_or_default();
    // the bank's own events (every customer's balances) are staff's to read
    let bank_wide = topic == "*" || rapids::river::is_reserved(topic.trim_end_matches('*'));
    if bank_wide && !caller.is_staff() {
        return Err(ApiError::new(ErrorCode::Forbidden, "account.* and transfer.* events are staff's to read"));
    }
    Ok(Json(registry::subscribe(&state.kit.pool, &caller, &river, &topic, &tags).await?))
}

/// Removes a subscription. Built-in rivers: 409.
#[utoipa::path(delete, path = "/rivers/{river}/subscriptions/{topic}", tag = "control plane",
    params(
        ("river" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$"),
        ("topic" = String, Path),
        TagsQuery),
    responses((status = 200, description = "the river's topics", body = RiverSubscriptions)))]
async fn unsubscribe(
    State(state): State<AppState>,
    caller: Caller,
    Names((river, topic)): Names<(String, String)>,
    ApiQuery(query): ApiQuery<TagsQuery>,
) -> Result<Json<RiverSubscriptions>, ApiError> {
    river_user(&caller)?;
    let tags = query.selectors()?;
    Ok(Json(registry::unsubscribe(&state.kit.pool, &caller, &river, &topic, tags.as_deref()).await?))
}

/// Receives messages of a generic river (long-polling up to `wait_ms`); they stay
/// invisible for `visibility_ms`, then come back unless acknowledged.
#[utoipa::path(post, path = "/rivers/{river}/receive", tag = "generic rivers",
    params(("river" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")),
    request_body = Receive,
    responses((status = 200, description = "the messages, oldest first (none when the wait ended first)", body = Messages)))]
async fn receive(
    State(state): State<AppState>,
    caller: Caller,
    Names(river): Names<String>,
    body: ApiJson<Receive>,
) -> Result<Json<Messages>, ApiError> {
    river_user(&caller)?;
    Ok(Json(queue::receive(&state.kit.pool, &state.arrivals, &caller, &river, &body.value, state.max_wait).await?))
}

/// Acknowledges received messages by their receipts: they never come back.
#[utoipa::path(post, path = "/rivers/{river}/ack", tag = "generic rivers",
    params(("river" = String, Path, pattern = "^[A-Za-z][A-Za-z0-9_-]{0,63}$")),
    request_body = Ack,
    responses((status = 200, description = "how many were acknowledged", body = Acked)))]
async fn ack(
    State(state): State<AppState>,
    caller: Caller,
    Names(river): Names<String>,
    body: ApiJson<Ack>,
) -> Result<Json<Acked>, ApiError> {
    river_user(&caller)?;
    Ok(Json(queue::ack(&state.kit.pool, &caller, &river, &body.value).await?))
}

/// The names in a path; a rejection is 400 `invalid_river` in the JSON error shape
/// (axum's own is plain text, e.g. for `%FF`).
struct Names<T>(T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned + Send> FromRequestParts<S> for Names<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| Names(value))
            .map_err(|_| ApiError::new(ErrorCode::InvalidRiver, "the river or topic in the path is not valid"))
    }
}

/// The errors of the operator's reads, beside the common ones.
pub const OPS_ERRORS: &[ErrorCode] = &[ErrorCode::InvalidQuery, ErrorCode::Forbidden];
pub const RETRY_ERRORS: &[ErrorCode] = &[ErrorCode::InvalidQuery, ErrorCode::Forbidden, ErrorCode::NotFound];

/// Every river with its shards, leases, checkpoints, lag and parked events (staff).
#[utoipa::path(get, path = "/ops/rivers", tag = "operations",
    responses((status = 200, description = "the rivers", body = RiverStates)))]
async fn ops_rivers(State(state): State<AppState>, caller: Caller) -> Result<Json<RiverStates>, ApiError> {
    staff(&caller)?;
    Ok(Json(ops::rivers(&state.kit.pool).await?))
}

/// How far the tailer has published (staff).
#[utoipa::path(get, path = "/ops/tailer", tag = "operations",
    responses((status = 200, description = "the tailers' positions", body = TailerStates)))]
async fn ops_tailer(State(state): State<AppState>, caller: Caller) -> Result<Json<TailerStates>, ApiError> {
    staff(&caller)?;
    Ok(Json(ops::tailer(&state.kit.pool).await?))
}

/// Parked events not yet resolved (staff).
#[utoipa::path(get, path = "/ops/dead-letters", tag = "operations",
    params(DeadLettersQuery),
    responses((status = 200, description = "the parked events", body = DeadLetters)))]
async fn ops_dead_letters(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<DeadLettersQuery>,
) -> Result<Json<DeadLetters>, ApiError> {
    staff(&caller)?;
    if let Some(river) = &query.river
        && !crate::names::valid_river(river)
    {
        return Err(
            ApiError::new(ErrorCode::InvalidQuery, ErrorCode::InvalidRiver.meaning()).with_detail("parameter", "river")
        );
    }
    Ok(Json(ops::dead_letters(&state.kit.pool, query.river.as_deref()).await?))
}

/// Hands a parked event to its river's handler again (staff).
#[utoipa::path(post, path = "/ops/dead-letters/{id}/retry", tag = "operations",
    params(("id" = i64, Path, minimum = 1)),
    responses((status = 200, description = "the retry is requested", body = RetryRequested)))]
async fn ops_retry(
    State(state): State<AppState>,
    caller: Caller,
    id: Result<Path<i64>, axum::extract::rejection::PathRejection>,
) -> Result<Json<RetryRequested>, ApiError> {
    let Ok(Path(id)) = id else {
        return Err(ApiError::new(ErrorCode::InvalidQuery, "the id in the path is not a whole number"));
    };
    staff(&caller)?;
    Ok(Json(ops::retry(&state.kit.pool, id).await?))
}

/// Transfers not settled after `older_than_s` seconds, and where each stopped (staff).
#[utoipa::path(get, path = "/ops/unsettled", tag = "operations",
    params(UnsettledQuery),
    responses((status = 200, description = "the unsettled transfers", body = UnsettledTransfers)))]
async fn ops_unsettled(
    State(state): State<AppState>,
    caller: Caller,
    ApiQuery(query): ApiQuery<UnsettledQuery>,
) -> Result<Json<UnsettledTransfers>, ApiError> {
    staff(&caller)?;
    Ok(Json(ops::unsettled(&state.kit.pool, query.older_than_s).await?))
}

/// The books as the reconciliation last checked them (view-updater checks every few
/// seconds): each currency's sum of balances (0: balanced), `in_transit` beside the
/// unsettled transfers, and every difference found. Staff only.
#[utoipa::path(get, path = "/ops/ledger", tag = "operations",
    responses((status = 200, description = "the reconciliation's report", body = ledger::Report)))]
async fn ops_ledger(State(state): State<AppState>, caller: Caller) -> Result<Json<ledger::Report>, ApiError> {
    staff(&caller)?;
    let report = ledger::report(&state.kit.pool).await.map_err(|e| match e.0 {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
            ApiError::new(ErrorCode::Unavailable, "the database is busy or unreachable; retry")
        }
        other => ApiError::internal(other),
    })?;
    Ok(Json(report))
}
