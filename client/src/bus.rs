//! A typed client of the event bus's HTTP API: post events, list and advertise
//! topics, manage a river's subscriptions, and receive/acknowledge a generic river's
//! messages; list the transfers not settled after a while (an operator's view). Used
//! by `bankctl`'s control-plane verbs.
//!
//! The request and answer types mirror the event bus's own (`event-bus/src/{events,
//! registry,queue}.rs`) field for field, without depending on that crate (which
//! pulls in sqlx and axum). Free-form parts (an event's data, its tags, a received
//! message) stay JSON values. Every answer other than 2xx is a
//! [`ClientError::Http`] with the bus's error code and message (e.g. 409
//! `river_managed`, 404 `river_not_found`).
//!
//! ```no_run
//! # async fn demo() -> Result<(), bank_client::ClientError> {
//! use bank_client::bus::{BusClient, Receive};
//! let bus = BusClient::new("http://127.0.0.1:8086", "a bearer token");
//! bus.subscribe("r1", "ViewPage", &[]).await?;
//! let received = bus.receive("r1", &Receive { max_messages: Some(10), wait_ms: Some(3000), visibility_ms: None }).await?;
//! let receipts: Vec<_> = received.messages.iter().map(|m| m.receipt).collect();
//! bus.ack("r1", &receipts).await?;
//! # Ok(()) }
//! ```

use crate::{ClientError, Result, answer, url};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// The event bus's development address.
pub const DEV_URL: &str = "http://127.0.0.1:8086";

/// How long any call may take beyond the long-poll wait it asked for.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// `POST /events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostEvent {
    /// A topic (`ViewPage`), an event (`page.viewed`) or a task
    /// (`transfers.transfer.create`).
    #[serde(rename = "type")]
    pub event_type: String,
    /// The emitting domain.
    pub source: String,
    /// The payload: a JSON object.
    pub data: Value,
    /// Events with one key keep their order; the bus picks a random one when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
    /// Posting the same id again answers the first answer and stores nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<Uuid>,
    /// At most 16 pairs of string values.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Map<String, Value>>,
}

/// A stored event, as `POST /events` answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    #[serde(default)]
    pub tags: Map<String, Value>,
}

/// A topic: advertised, or one of the bank's own event types (`builtin`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topic {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Who advertised it (the token's subject); `bank` for the bank's own events.
    #[serde(default)]
    pub advertised_by: String,
    /// RFC 3339; none for the bank's own events.
    #[serde(default)]
    pub advertised_at: Option<String>,
    #[serde(default)]
    pub builtin: bool,
}

/// `GET /topics`: advertised topics first (by name), then the bank's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Topics {
    pub items: Vec<Topic>,
}

/// `POST /topics`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Advertise {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A river's subscriptions: the answer of listing, subscribing and unsubscribing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RiverSubscriptions {
    pub river: String,
    /// A built-in river (accounts, transfers, views), whose topics are fixed.
    pub managed: bool,
    /// Event types, prefixes `entity.*`, or `*`.
    pub topics: Vec<String>,
    /// Each subscription with its tag selectors (a bus older than tags sends none).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscriptions: Vec<Subscription>,
}

/// One subscription of a river: a topic and the tags an event must carry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub topic: String,
    /// `key` (the tag is there) or `key=value`; none: any tags.
    #[serde(default)]
    pub tags: Vec<String>,
}

/// `POST /rivers/{river}/receive`; the bus's defaults for what is unset (10
/// messages, no wait, 30 s of invisibility).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Receive {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_messages: Option<i64>,
    /// Wait up to this long for a first message (the bus answers as soon as one
    /// arrives, and caps the wait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visibility_ms: Option<i64>,
}

/// A received message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Received {
    /// Acknowledge with it; a later receive of the same message has another.
    pub receipt: Uuid,
    /// How many times the message was received (1 the first time).
    pub receive_count: i32,
    /// `eventType`, `eventDomain`, `payload`, `timestamp` (RFC 3339), `eventId`.
    pub message: Value,
}

/// The answer of a receive: oldest first, none when the wait ended first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Messages {
    pub messages: Vec<Received>,
}

/// `POST /rivers/{river}/ack`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ack {
    pub receipts: Vec<Uuid>,
}

/// The answer of an ack: the receipts that acknowledged a message (an expired or
/// unknown one does not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Acked {
    pub acked: i64,
}

/// `GET /ops/unsettled`'s query.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UnsettledQuery {
    /// Transfers created more than this many seconds ago (the bus's default: 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub older_than_s: Option<i64>,
}

/// A transfer neither completed nor failed, and where it stopped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Unsettled {
    pub id: Uuid,
    /// `initiated`, `debited` or `refunding`.
    pub state: String,
    pub from_account: Uuid,
    pub to_account: Uuid,
    /// In minor units.
    pub amount: i64,
    pub currency: String,
    pub initiated_by: String,
    /// The transfer stream's version in the views.
    pub version: i32,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339: its last step.
    pub updated_at: String,
    /// Seconds since it was created.
    pub age_s: f64,
}

/// `GET /ops/unsettled`: oldest first, at most 1000.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UnsettledTransfers {
    pub older_than_s: i64,
    pub items: Vec<Unsettled>,
}

/// Characters escaped in a path segment: everything but letters, digits and
/// `-._~*` (a topic may be `entity.*` or `*`, which the bus reads as they are).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~').remove(b'*');

/// The client: the bus's base URL, a connection pool and the caller's bearer token
/// (the control plane is for tellers and admins; `POST /events` and `GET /topics`
/// take any caller).
#[derive(Debug, Clone)]
pub struct BusClient {
    http: reqwest::Client,
    base: Arc<str>,
    token: Arc<str>,
}

impl BusClient {
    /// A client of the bus at `base` (e.g. [`DEV_URL`]) calling as the holder of `token`.
    pub fn new(base: impl Into<String>, token: impl Into<String>) -> BusClient {
        BusClient { http: reqwest::Client::new(), base: base.into().into(), token: token.into().into() }
    }

    /// The same client over `http` (e.g. one that keeps no idle connection).
    pub fn with_http(mut self, http: reqwest::Client) -> BusClient {
        self.http = http;
        self
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST /events` (201): the stored event.
    pub async fn post_event(&self, event: &PostEvent) -> Result<PostedEvent> {
        self.call(self.http.post(url(&self.base, "/events")).json(event), CALL_TIMEOUT).await
    }

    /// `GET /topics`.
    pub async fn topics(&self) -> Result<Topics> {
        self.call(self.http.get(url(&self.base, "/topics")), CALL_TIMEOUT).await
    }

    /// `POST /topics`: 201 when new, 200 when advertised before (unchanged).
    pub async fn advertise(&self, topic: &Advertise) -> Result<Topic> {
        self.call(self.http.post(url(&self.base, "/topics")).json(topic), CALL_TIMEOUT).await
    }

    /// `GET /rivers/{river}/subscriptions` (none for a river not known yet).
    pub async fn subscriptions(&self, river: &str) -> Result<RiverSubscriptions> {
        let path = format!("/rivers/{}/subscriptions", segment(river));
        self.call(self.http.get(url(&self.base, &path)), CALL_TIMEOUT).await
    }

    /// `PUT /rivers/{river}/subscriptions/{topic}`, selecting events that meet every
    /// tag selector of `tags` (none: any tags): creates a generic river at its first
    /// subscription; 409 `river_managed` for a built-in river.
    pub async fn subscribe(&self, river: &str, topic: &str, tags: &[String]) -> Result<RiverSubscriptions> {
        let path = subscription_path(river, topic, (!tags.is_empty()).then_some(tags));
        self.call(self.http.put(url(&self.base, &path)), CALL_TIMEOUT).await
    }

    /// `DELETE /rivers/{river}/subscriptions/{topic}`: the subscription with exactly
    /// `tags`, or with `None` every subscription of the topic; 409 `river_managed` for
    /// a built-in river.
    pub async fn unsubscribe(&self, river: &str, topic: &str, tags: Option<&[String]>) -> Result<RiverSubscriptions> {
        self.call(self.http.delete(url(&self.base, &subscription_path(river, topic, tags))), CALL_TIMEOUT).await
    }

    /// `POST /rivers/{river}/receive`: long-polls up to `wait_ms`; 404
    /// `river_not_found` for a river the bus does not know.
    pub async fn receive(&self, river: &str, request: &Receive) -> Result<Messages> {
        let path = format!("/rivers/{}/receive", segment(river));
        let wait = Duration::from_millis(request.wait_ms.unwrap_or(0).max(0).unsigned_abs());
        self.call(self.http.post(url(&self.base, &path)).json(request), CALL_TIMEOUT + wait).await
    }

    /// `POST /rivers/{river}/ack`: the acknowledged messages never come back.
    pub async fn ack(&self, river: &str, receipts: &[Uuid]) -> Result<Acked> {
        let path = format!("/rivers/{}/ack", segment(river));
        let body = Ack { receipts: receipts.to_vec() };
        self.call(self.http.post(url(&self.base, &path)).json(&body), CALL_TIMEOUT).await
    }

    /// `GET /ops/unsettled` (tellers and admins): the transfers not settled
    /// `older_than_s` seconds after their creation.
    pub async fn unsettled(&self, query: &UnsettledQuery) -> Result<UnsettledTransfers> {
        self.call(self.http.get(url(&self.base, "/ops/unsettled")).query(query), CALL_TIMEOUT).await
    }

    /// Sends with the caller's token; the decoded 2xx body, or the error.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        builder: reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<T> {
        let response =
            builder.bearer_auth(&self.token).timeout(timeout).send().await.map_err(ClientError::Transport)?;
        answer(response).await
    }
}

/// One path segment, escaped.
fn segment(name: &str) -> String {
    utf8_percent_encode(name, SEGMENT).to_string()
}

fn subscription_path(river: &str, topic: &str, tags: Option<&[String]>) -> String {
    let path = format!("/rivers/{}/subscriptions/{}", segment(river), segment(topic));
    match tags {
        Some(tags) => format!("{path}?tags={}", segment(&tags.join(","))),
        None => path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_in_the_path_are_escaped_but_wildcards_kept() {
        assert_eq!(subscription_path("r1", "ViewPage", None), "/rivers/r1/subscriptions/ViewPage");
        assert_eq!(subscription_path("r1", "account.*", None), "/rivers/r1/subscriptions/account.*");
        assert_eq!(subscription_path("r1", "*", None), "/rivers/r1/subscriptions/*");
        assert_eq!(subscription_path("a/b", "x?y z", None), "/rivers/a%2Fb/subscriptions/x%3Fy%20z");
        let tags = ["vip".to_owned(), "segment=road-warrior".to_owned()];
        assert_eq!(
            subscription_path("r1", "ViewPage", Some(&tags)),
            "/rivers/r1/subscriptions/ViewPage?tags=vip%2Csegment%3Droad-warrior"
        );
    }

    #[test]
    fn requests_send_only_what_is_set() -> serde_json::Result<()> {
        let event = PostEvent {
            event_type: "ViewPage".into(),
            source: "TheSource".into(),
            data: json!({"name": "Sally"}),
            partition_key: None,
            event_id: None,
            tags: None,
        };
        assert_eq!(
            serde_json::to_value(&event)?,
            json!({"type": "ViewPage", "source": "TheSource", "data": {"name": "Sally"}})
        );
        let receive = Receive { max_messages: Some(10), wait_ms: Some(3000), visibility_ms: None };
        assert_eq!(serde_json::to_value(&receive)?, json!({"max_messages": 10, "wait_ms": 3000}));
        let advertise = Advertise { name: "ViewPage".into(), description: None };
        assert_eq!(serde_json::to_value(&advertise)?, json!({"name": "ViewPage"}));
        Ok(())
    }

    #[test]
    fn the_bus_answers_decode() -> serde_json::Result<()> {
        let topics: Topics = serde_json::from_value(json!({"items": [
            {"name": "ViewPage", "description": "", "advertised_by": "bankctl",
             "advertised_at": "2026-01-02T03:04:05.123Z", "builtin": false},
            {"name": "account.opened", "description": "An account was opened", "advertised_by": "bank",
             "advertised_at": null, "builtin": true}]}))?;
        assert_eq!(topics.items[1].advertised_at, None);
        let received: Messages = serde_json::from_value(json!({"messages": [{
            "receipt": "0190f0e4-7a1b-7cc3-8a5e-3f1d2b3c4d5e", "receive_count": 1,
            "message": {"eventType": "ViewPage", "eventDomain": "TheSource", "payload": {"name": "Sally"},
                        "timestamp": "2026-01-02T03:04:05Z", "eventId": "0190f0e4-7a1b-7cc3-8a5e-3f1d2b3c4d5f"}}]}))?;
        assert_eq!(received.messages[0].message["payload"]["name"], "Sally");
        let posted: PostedEvent = serde_json::from_value(json!({
            "event_id": "0190f0e4-7a1b-7cc3-8a5e-3f1d2b3c4d5f", "type": "ViewPage", "source": "TheSource",
            "stream_id": "0190f0e4-7a1b-7cc3-8a5e-3f1d2b3c4d60", "position": 42, "partition_key": "k",
            "timestamp": 1767323045123_i64, "tags": {"region": "eu"}}))?;
        assert_eq!(serde_json::to_value(&posted)?["type"], "ViewPage");
        Ok(())
    }
}

#[cfg(test)]
mod calls {
    use super::*;
    use crate::tests::answer_once;
    use crate::tests::anyhow_free;
    use serde_json::json;

    #[tokio::test]
    async fn a_receive_posts_its_wait_with_the_token_and_decodes_the_messages() -> anyhow_free::Result {
        let receipt = Uuid::now_v7();
        let body = json!({"messages": [{"receipt": receipt, "receive_count": 2,
            "message": {"eventType": "ViewPage", "eventDomain": "TheSource", "payload": {"name": "Sally"},
                        "timestamp": "2026-01-02T03:04:05Z", "eventId": Uuid::now_v7()}}]});
        let (base, served) = answer_once("200 OK", &body.to_string()).await;
        let bus = BusClient::new(format!("{base}/"), "tok");
        let request = Receive { max_messages: Some(10), wait_ms: Some(3000), visibility_ms: None };
        let received = bus.receive("r1", &request).await?;
        assert_eq!((received.messages[0].receipt, received.messages[0].receive_count), (receipt, 2));
        let seen = served.await?;
        assert!(seen.starts_with("POST /rivers/r1/receive HTTP/1.1"), "{seen}");
        assert!(seen.to_lowercase().contains("authorization: bearer tok"), "{seen}");
        assert!(seen.ends_with(r#"{"max_messages":10,"wait_ms":3000}"#), "{seen}");
        Ok(())
    }

    #[tokio::test]
    async fn unsettled_transfers_are_asked_with_their_age_and_decoded() -> anyhow_free::Result {
        let id = Uuid::now_v7();
        let body = json!({"older_than_s": 60, "items": [{"id": id, "state": "initiated",
            "from_account": Uuid::now_v7(), "to_account": Uuid::now_v7(), "amount": 400, "currency": "EUR",
            "initiated_by": "alice", "version": 1, "created_at": "2026-01-02T03:04:05.123Z",
            "updated_at": "2026-01-02T03:04:05.123Z", "age_s": 75.5}]});
        let (base, served) = answer_once("200 OK", &body.to_string()).await;
        let unsettled = BusClient::new(base, "tok").unsettled(&UnsettledQuery { older_than_s: Some(60) }).await?;
        assert_eq!((unsettled.items[0].id, unsettled.items[0].state.as_str()), (id, "initiated"));
        let seen = served.await?;
        assert!(seen.starts_with("GET /ops/unsettled?older_than_s=60 HTTP/1.1"), "{seen}");
        Ok(())
    }

    #[tokio::test]
    async fn a_managed_river_refuses_with_the_bus_code_and_message() -> anyhow_free::Result {
        let body = json!({"error": {"code": "river_managed", "message": "river accounts is the bank's own"}});
        let (base, served) = answer_once("409 Conflict", &body.to_string()).await;
        let error =
            BusClient::new(base, "tok").subscribe("accounts", "account.*", &[]).await.err().ok_or("subscribed")?;
        assert_eq!((error.status(), error.code()), (Some(409), Some("river_managed")));
        assert_eq!(error.to_string(), "HTTP 409 river_managed: river accounts is the bank's own");
        let seen = served.await?;
        assert!(seen.starts_with("PUT /rivers/accounts/subscriptions/account.* HTTP/1.1"), "{seen}");
        Ok(())
    }
}
