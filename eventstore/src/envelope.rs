//! Event metadata and the envelope that travels on the rapids.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who and what caused an event; stored in `es.events.metadata`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventMetadata {
    /// The business flow the event belongs to (a transfer's events share one).
    #[serde(default)]
    pub correlation_id: Option<String>,
    /// The request or event that directly caused this one.
    #[serde(default)]
    pub causation_id: Option<String>,
    /// The HTTP request id, when a request caused it.
    #[serde(default)]
    pub request_id: Option<String>,
    /// The token subject (or service name) that acted.
    #[serde(default)]
    pub actor: String,
    /// The actor's role (`customer`, `teller`, `admin`), when a token acted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// The emitting domain, for events posted to the event bus (aggregate events:
    /// their stream type).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The process that stored the event (aggregate events: `<stream type>-service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The Kinesis partition key, for events posted to the event bus (aggregate
    /// events: their stream id, which keeps a stream in order on one shard).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition_key: Option<String>,
    /// The producer's own tags.
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub tags: serde_json::Map<String, serde_json::Value>,
    /// The W3C `traceparent` of the span that recorded the event (a request's, a
    /// delivery's), when it was traced ([`crate::trace`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

/// An event as stored, with its position and version.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    pub position: i64,
    pub stream_id: Uuid,
    pub stream_type: String,
    pub version: i32,
    pub event_id: Uuid,
    pub event_type: String,
    pub schema_version: i16,
    pub data: serde_json::Value,
    pub metadata: EventMetadata,
    pub recorded_at: DateTime<Utc>,
}

/// The JSON record published to Kinesis, one per event, partition key =
/// [`Envelope::partition_key`]. Readers ignore unknown fields and default missing ones
/// (an envelope of an older tailer has no `partition_key`, `source` or `timestamp`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub stream_id: Uuid,
    pub stream_type: String,
    pub version: i32,
    pub position: i64,
    #[serde(default = "one")]
    pub schema_version: i16,
    pub recorded_at: DateTime<Utc>,
    #[serde(default)]
    pub correlation_id: Option<String>,
    #[serde(default)]
    pub causation_id: Option<String>,
    #[serde(default)]
    pub actor: String,
    /// The actor's role (`customer`, `teller`, `admin`, `service`), when a token acted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    /// `region` and `service`, plus the producer's own tags.
    #[serde(default)]
    pub tags: serde_json::Map<String, serde_json::Value>,
    /// The Kinesis partition key: the stream id for aggregate events, the producer's
    /// key (or a random UUID) for events posted to the bus.
    #[serde(default)]
    pub partition_key: String,
    /// The emitting domain: `account`, `transfer`, or the bus caller's `source`.
    #[serde(default)]
    pub source: String,
    /// When the event was recorded, in epoch milliseconds.
    #[serde(default)]
    pub timestamp: i64,
    /// The identity of the event store that recorded it (`es.store`), set by the
    /// tailer: a river tells another store's events from its own by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<Uuid>,
    /// The W3C `traceparent` a consumer continues: the tailer's span that published
    /// the event, or the span that recorded it ([`crate::trace`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub data: serde_json::Value,
}

fn one() -> i16 {
    1
}

impl Envelope {
    /// The envelope of a stored event, tagged with the region it is published in.
    pub fn from_recorded(e: RecordedEvent, region: &str) -> Self {
        let m = e.metadata;
        let mut tags = m.tags;
        if !region.is_empty() {
            tags.insert("region".into(), region.into());
        }
        let service = m.service.unwrap_or_else(|| format!("{}-service", e.stream_type));
        tags.insert("service".into(), service.into());
        Envelope {
            event_id: e.event_id,
            event_type: e.event_type,
            stream_id: e.stream_id,
            partition_key: m.partition_key.unwrap_or_else(|| e.stream_id.to_string()),
            source: m.source.unwrap_or_else(|| e.stream_type.clone()),
            stream_type: e.stream_type,
            version: e.version,
            position: e.position,
            schema_version: e.schema_version,
            timestamp: e.recorded_at.timestamp_millis(),
            recorded_at: e.recorded_at,
            correlation_id: m.correlation_id,
            causation_id: m.causation_id,
            actor: m.actor,
            role: m.role,
            tags,
            store: None,
            traceparent: m.traceparent,
            data: e.data,
        }
    }
}

impl From<RecordedEvent> for Envelope {
    fn from(e: RecordedEvent) -> Self {
        Envelope::from_recorded(e, "")
    }
}
