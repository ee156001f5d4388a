//! The control plane's registry in Postgres: advertised topics, rivers and their
//! subscriptions (`rapids.topics`, `rapids.rivers`, `rapids.river_subscriptions`).
//! Built-in rivers write their own topics at start-up (managed); any change to them
//! is refused, since the saga depends on them.

use crate::names;
use serde::{Deserialize, Serialize};
use service_kit::auth::{Caller, Role};
use service_kit::{ApiError, ErrorCode};
use sqlx::PgPool;
use utoipa::ToSchema;

/// The event types the bank's aggregates emit (their events need no advertising).
pub const BANK_TOPICS: &[&str] = &[
    "account.opened",
    "account.deposited",
    "account.withdrawn",
    "account.closed",
    "account.debited",
    "account.debit_rejected",
    "account.credited",
    "account.credit_rejected",
    "account.refunded",
    "account.payment_received",
    "account.payment_sent",
    "account.refund_diverted",
    "account.task_rejected",
    "transfer.created",
    "transfer.debited",
    "transfer.completed",
    "transfer.refund_requested",
    "transfer.failed",
    "transfer.task_rejected",
];

fn fault(e: sqlx::Error) -> ApiError {
    ApiError::from(eventstore::StoreError::from(e))
}

/// An advertised topic.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, sqlx::FromRow)]
pub struct Topic {
    pub name: String,
    pub description: String,
    /// Who advertised it (the token's subject); `bank` for the bank's own events.
    pub advertised_by: String,
    pub advertised_at: Option<chrono::DateTime<chrono::Utc>>,
    /// One of the bank's own event types.
    pub builtin: bool,
}

/// `POST /topics`.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Advertise {
    #[schema(pattern = "^[A-Za-z][A-Za-z0-9_-]*(\\.[A-Za-z][A-Za-z0-9_-]*){0,2}$", max_length = 128)]
    pub name: String,
    #[serde(default)]
    #[schema(max_length = 1000)]
    pub description: Option<String>,
}

/// Advertised topics first (by name), then the bank's own events and tasks.
pub async fn topics(pool: &PgPool) -> Result<Vec<Topic>, ApiError> {
    let mut topics: Vec<Topic> = sqlx::query_as(
        "select name, description, advertised_by, advertised_at, false as builtin from rapids.topics order by name",
    )
    .fetch_all(pool)
    .await
    .map_err(fault)?;
    let builtin = |name: &str, description: &str| Topic {
        name: name.into(),
        description: description.into(),
        advertised_by: "bank".into(),
        advertised_at: None,
        builtin: true,
    };
    topics.extend(BANK_TOPICS.iter().map(|name| builtin(name, "an event of the bank's aggregates")));
    topics.extend(rapids::tasks::BANK_TASKS.iter().map(|name| builtin(name, "a task the bank's services take")));
    Ok(topics)
}

/// Whether a customer may post `event_type`: an advertised topic or a bank's task.
pub async fn postable_by_customers(pool: &PgPool, event_type: &str) -> Result<bool, ApiError> {
    if rapids::tasks::BANK_TASKS.contains(&event_type) {
        return Ok(true);
    }
    sqlx::query_scalar("select exists (select 1 from rapids.topics where name = $1)")
        .bind(event_type)
        .fetch_one(pool)
        .await
        .map_err(fault)
}

/// Advertises a topic; `Ok((topic, created))` (advertising it again changes nothing).
pub async fn advertise(pool: &PgPool, by: &str, ad: &Advertise) -> Result<(Topic, bool), ApiError> {
    if names::kind(&ad.name).is_none() {
        return Err(ApiError::new(ErrorCode::InvalidEventType, ErrorCode::InvalidEventType.meaning()));
    }
    if rapids::river::is_reserved(&ad.name) {
        return Err(ApiError::new(ErrorCode::ReservedEventType, ErrorCode::ReservedEventType.meaning()));
    }
    let description = ad.description.clone().unwrap_or_default();
    if description.chars().count() > 1000 {
        return Err(ApiError::new(ErrorCode::InvalidBody, "description is longer than 1000 characters"));
    }
    let created: Option<Topic> = sqlx::query_as(
        "insert into rapids.topics (name, description, advertised_by) values ($1, $2, $3)
         on conflict (name) do nothing
         returning name, description, advertised_by, advertised_at, false as builtin",
    )
    .bind(&ad.name)
    .bind(&description)
    .bind(by)
    .fetch_optional(pool)
    .await
    .map_err(fault)?;
    if let Some(topic) = created {
        return Ok((topic, true));
    }
    let topic = sqlx::query_as(
        "select name, description, advertised_by, advertised_at, false as builtin from rapids.topics where name = $1",
    )
    .bind(&ad.name)
    .fetch_one(pool)
    .await
    .map_err(fault)?;
    Ok((topic, false))
}

/// A river and its subscriptions.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct RiverSubscriptions {
    pub river: String,
    /// A built-in river run by a service: its topics cannot be changed here.
    pub managed: bool,
    /// The topic patterns, in the order they were subscribed (each once).
    pub topics: Vec<String>,
    /// Each subscription: a topic pattern and the tags an event must carry.
    pub subscriptions: Vec<Subscription>,
    /// Who created it (a generic river's first subscriber); none for a built-in river.
    pub owner: Option<String>,
}

/// One subscription of a river.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Subscription {
    /// An event type, a prefix `entity.*`, or `*`.
    pub topic: String,
    /// Tag selectors, all of which an event must meet: `vip` (the tag is there),
    /// `segment=road-warrior` (it has that value). None: any tags.
    pub tags: Vec<String>,
}

impl RiverSubscriptions {
    fn of(river: String, managed: bool, owner: Option<String>, rows: Vec<(String, Vec<String>)>) -> Self {
        let mut topics: Vec<String> = Vec::new();
        for (pattern, _) in &rows {
            if !topics.contains(pattern) {
                topics.push(pattern.clone());
            }
        }
        let subscriptions = rows.into_iter().map(|(topic, tags)| Subscription { topic, tags }).collect();
        RiverSubscriptions { river, managed, topics, subscriptions, owner }
    }
}

/// Whether `caller` may receive from, acknowledge on or change a river owned by
/// `owner`: its owner, or an admin (403 otherwise).
pub fn may_use(caller: &Caller, owner: Option<&str>) -> Result<(), ApiError> {
    if caller.role == Role::Admin || owner == Some(caller.subject.as_str()) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Forbidden, "this river belongs to someone else"))
    }
}

/// Every river the registry knows, with its subscriptions.
pub async fn rivers(pool: &PgPool) -> Result<Vec<RiverSubscriptions>, ApiError> {
    let rivers: Vec<(String, bool, Option<String>)> =
        sqlx::query_as("select name, managed, owner from rapids.rivers order by name")
            .fetch_all(pool)
            .await
            .map_err(fault)?;
    let rows: Vec<(String, String, Vec<String>)> = sqlx::query_as(
        "select river, pattern, tags from rapids.river_subscriptions order by river, created_at, pattern, tags",
    )
    .fetch_all(pool)
    .await
    .map_err(fault)?;
    let mut by_river: std::collections::HashMap<String, Vec<(String, Vec<String>)>> = Default::default();
    for (river, pattern, tags) in rows {
        by_river.entry(river).or_default().push((pattern, tags));
    }
    Ok(rivers
        .into_iter()
        .map(|(river, managed, owner)| {
            let rows = by_river.remove(&river).unwrap_or_default();
            RiverSubscriptions::of(river, managed, owner, rows)
        })
        .collect())
}

pub fn check_river(river: &str) -> Result<(), ApiError> {
    if names::valid_river(river) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::InvalidRiver, ErrorCode::InvalidRiver.meaning()))
    }
}

/// A river the registry knows.
#[derive(Debug, sqlx::FromRow)]
pub struct RiverRow {
    /// A built-in river: its topics are its code's.
    pub managed: bool,
    /// Read by a service of its own: not a queue.
    pub served: bool,
    pub owner: Option<String>,
}

/// The registry's row of `river`, if it knows it.
pub async fn river(pool: &PgPool, river: &str) -> Result<Option<RiverRow>, ApiError> {
    sqlx::query_as("select managed, served, owner from rapids.rivers where name = $1")
        .bind(river)
        .fetch_optional(pool)
        .await
        .map_err(fault)
}

/// A river's subscriptions (none for a river the registry does not know).
pub async fn subscriptions(pool: &PgPool, river: &str) -> Result<RiverSubscriptions, ApiError> {
    check_river(river)?;
    let (managed, owner) = self::river(pool, river).await?.map_or((false, None), |row| (row.managed, row.owner));
    let rows: Vec<(String, Vec<String>)> = sqlx::query_as(
        "select pattern, tags from rapids.river_subscriptions where river = $1 order by created_at, pattern, tags",
    )
    .bind(river)
    .fetch_all(pool)
    .await
    .map_err(fault)?;
    Ok(RiverSubscriptions::of(river.into(), managed, owner, rows))
}

fn managed(river: &str) -> ApiError {
    ApiError::new(
        ErrorCode::RiverManaged,
        format!("`{river}` is a built-in river: the saga depends on its topics, which only its code changes"),
    )
}

/// Subscribes `river` to `pattern` with tag selectors `tags` (checked, sorted:
/// [`names::tag_selectors`]), creating the river (a generic one, owned by `caller`) at
/// its first subscription. Locks the river's row, so a concurrent change of a managed
/// river's registration cannot slip between the check and the write.
pub async fn subscribe(
    pool: &PgPool,
    caller: &Caller,
    river: &str,
    pattern: &str,
    tags: &[String],
) -> Result<RiverSubscriptions, ApiError> {
    check_river(river)?;
    if !names::valid_pattern(pattern) {
        return Err(ApiError::new(ErrorCode::InvalidTopic, ErrorCode::InvalidTopic.meaning()));
    }
    let mut tx = pool.begin().await.map_err(fault)?;
    sqlx::query("insert into rapids.rivers (name, owner) values ($1, $2) on conflict (name) do nothing")
        .bind(river)
        .bind(&caller.subject)
        .execute(&mut *tx)
        .await
        .map_err(fault)?;
    let (is_managed, owner): (bool, Option<String>) =
        sqlx::query_as("select managed, owner from rapids.rivers where name = $1 for update")
            .bind(river)
            .fetch_one(&mut *tx)
            .await
            .map_err(fault)?;
    if is_managed {
        return Err(managed(river));
    }
    may_use(caller, owner.as_deref())?;
    sqlx::query(
        "insert into rapids.river_subscriptions (river, pattern, tags, created_by) values ($1, $2, $3, $4)
         on conflict do nothing",
    )
    .bind(river)
    .bind(pattern)
    .bind(tags)
    .bind(&caller.subject)
    .execute(&mut *tx)
    .await
    .map_err(fault)?;
    tx.commit().await.map_err(fault)?;
    subscriptions(pool, river).await
}

/// Removes the subscription of `pattern` with exactly the selectors `tags`, or with
/// `None` every subscription of `pattern` (removing one that is not there changes
/// nothing): the river's owner's, or an admin's.
pub async fn unsubscribe(
    pool: &PgPool,
    caller: &Caller,
    river: &str,
    pattern: &str,
    tags: Option<&[String]>,
) -> Result<RiverSubscriptions, ApiError> {
    check_river(river)?;
    if !names::valid_pattern(pattern) {
        return Err(ApiError::new(ErrorCode::InvalidTopic, ErrorCode::InvalidTopic.meaning()));
    }
    let mut tx = pool.begin().await.map_err(fault)?;
    let row: Option<(bool, Option<String>)> =
        sqlx::query_as("select managed, owner from rapids.rivers where name = $1 for update")
            .bind(river)
            .fetch_optional(&mut *tx)
            .await
            .map_err(fault)?;
    match row {
        Some((true, _)) => return Err(managed(river)),
        Some((false, owner)) => may_use(caller, owner.as_deref())?,
        None => {}
    }
    sqlx::query(
        "delete from rapids.river_subscriptions where river = $1 and pattern = $2 and ($3::text[] is null or tags = $3)",
    )
    .bind(river)
    .bind(pattern)
    .bind(tags)
    .execute(&mut *tx)
        .await
        .map_err(fault)?;
    tx.commit().await.map_err(fault)?;
    subscriptions(pool, river).await
}
