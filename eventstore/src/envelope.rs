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

/// The JSON record published to Kinesis, one per event, partition key = `stream_id`.
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
    #[serde(default)]
    pub tags: serde_json::Map<String, serde_json::Value>,
    pub data: serde_json::Value,
}

fn one() -> i16 {
    1
}

impl From<RecordedEvent> for Envelope {
    fn from(e: RecordedEvent) -> Self {
        Envelope {
            event_id: e.event_id,
            event_type: e.event_type,
            stream_id: e.stream_id,
            stream_type: e.stream_type,
            version: e.version,
            position: e.position,
            schema_version: e.schema_version,
            recorded_at: e.recorded_at,
            correlation_id: e.metadata.correlation_id,
            causation_id: e.metadata.causation_id,
            actor: e.metadata.actor,
            tags: serde_json::Map::new(),
            data: e.data,
        }
    }
}
