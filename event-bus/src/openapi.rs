//! The OpenAPI document of event-bus: generated from the routes' types
//! ([`crate::http::Api`]) and completed with each route's error codes.

use crate::http::{
    OPS_ERRORS, POST_ERRORS, QUERY_ERRORS, QUEUE_ERRORS, RETRY_ERRORS, RIVER_READ_ERRORS, SUBSCRIPTION_ERRORS,
    TOPIC_ERRORS,
};
use serde_json::Value;
use service_kit::openapi::{RouteErrors, finish};
use utoipa::OpenApi;

/// A subscription pattern: a name, a prefix of one or two segments and `.*`, or `*`.
pub const PATTERN: &str = "^(\\*|[A-Za-z][A-Za-z0-9_-]*(\\.[A-Za-z][A-Za-z0-9_-]*){0,2}|[A-Za-z][A-Za-z0-9_-]*(\\.[A-Za-z][A-Za-z0-9_-]*)?\\.\\*)$";

pub fn document_json() -> Value {
    let mut generated = serde_json::to_value(crate::http::Api::openapi()).unwrap_or_default();
    // what the derive cannot say: the tags' shape, that no string may hold a NUL
    // (Postgres cannot store one: such a body is 400), the topic pattern of the paths
    let no_nul = "^[^\\x00]*$";
    if let Some(tags) = generated.pointer_mut("/components/schemas/PostEvent/properties/tags") {
        *tags = serde_json::json!({
            "type": ["object", "null"],
            "maxProperties": crate::events::MAX_TAGS,
            "propertyNames": {
                "minLength": 1, "maxLength": 64, "pattern": no_nul,
                "not": {"enum": crate::events::RESERVED_TAGS}
            },
            "additionalProperties": {"type": "string", "maxLength": 256, "pattern": no_nul},
            "description": "the producer's tags: at most 16 pairs of string values; not region or service (the tailer sets those)"
        });
    }
    if let Some(data) = generated.pointer_mut("/components/schemas/PostEvent/properties/data") {
        // any object; a NUL in one of its strings is refused (400) as everywhere, which
        // the fuzzer is told (scripts/schemathesis.toml) since a schema of "any JSON
        // without NUL" must recurse, and the fuzzer's generator cannot
        *data = serde_json::json!({
            "type": "object",
            "additionalProperties": true,
            "description": "the payload: a JSON object (no string may hold a NUL character)"
        });
    }
    if let Some(payload) = generated.pointer_mut("/components/schemas/BusMessage/properties/payload") {
        payload["additionalProperties"] = serde_json::json!(true);
    }
    if let Some(key) = generated.pointer_mut("/components/schemas/PostEvent/properties/partition_key") {
        key["pattern"] = serde_json::json!(no_nul);
    }
    if let Some(description) = generated.pointer_mut("/components/schemas/Advertise/properties/description") {
        description["pattern"] = serde_json::json!(no_nul);
    }
    for path in ["/rivers/{river}/subscriptions/{topic}"] {
        for method in ["put", "delete"] {
            let params = generated.pointer_mut(&format!("/paths/{}/{method}/parameters", path.replace('/', "~1")));
            for param in params.and_then(Value::as_array_mut).into_iter().flatten() {
                if param["name"] == "topic" {
                    param["schema"] = serde_json::json!({"type": "string", "pattern": PATTERN, "maxLength": 128});
                }
            }
        }
    }
    finish(
        generated,
        "event-bus",
        "Post events to the rapids; topics, river subscriptions and generic rivers (the control plane).",
        &[
            RouteErrors { method: "post", path: "/events", codes: POST_ERRORS },
            RouteErrors { method: "get", path: "/events", codes: QUERY_ERRORS },
            RouteErrors { method: "get", path: "/topics", codes: &[] },
            RouteErrors { method: "post", path: "/topics", codes: TOPIC_ERRORS },
            RouteErrors { method: "get", path: "/rivers", codes: RIVER_READ_ERRORS },
            RouteErrors { method: "get", path: "/rivers/{river}/subscriptions", codes: RIVER_READ_ERRORS },
            RouteErrors { method: "put", path: "/rivers/{river}/subscriptions/{topic}", codes: SUBSCRIPTION_ERRORS },
            RouteErrors { method: "delete", path: "/rivers/{river}/subscriptions/{topic}", codes: SUBSCRIPTION_ERRORS },
            RouteErrors { method: "post", path: "/rivers/{river}/receive", codes: QUEUE_ERRORS },
            RouteErrors { method: "post", path: "/rivers/{river}/ack", codes: QUEUE_ERRORS },
            RouteErrors { method: "get", path: "/ops/rivers", codes: OPS_ERRORS },
            RouteErrors { method: "get", path: "/ops/tailer", codes: OPS_ERRORS },
            RouteErrors { method: "get", path: "/ops/dead-letters", codes: OPS_ERRORS },
            RouteErrors { method: "post", path: "/ops/dead-letters/{id}/retry", codes: RETRY_ERRORS },
            RouteErrors { method: "get", path: "/ops/unsettled", codes: OPS_ERRORS },
            RouteErrors { method: "get", path: "/ops/ledger", codes: OPS_ERRORS },
        ],
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_complete() {
        service_kit::openapi::check_and_print(&super::document_json());
    }
}

#[cfg(test)]
mod pattern_tests {
    /// The document states what the derive cannot: the topic's pattern, the tags' shape.
    #[test]
    fn the_document_states_the_topic_pattern_and_the_tags_shape() {
        let doc = super::document_json();
        let pointer = "/paths/~1rivers~1{river}~1subscriptions~1{topic}/put/parameters";
        let params = doc.pointer(pointer).and_then(|p| p.as_array()).cloned().unwrap_or_default();
        let topic = params.iter().find(|p| p["name"] == "topic").expect("a topic parameter");
        assert_eq!(topic["schema"]["pattern"], super::PATTERN);
        let tags = doc.pointer("/components/schemas/PostEvent/properties/tags").expect("tags");
        assert_eq!(tags["maxProperties"], 16);
        // a subscription's tag selectors, on both methods; a message's shape is typed
        for method in ["put", "delete"] {
            let pointer = format!("/paths/~1rivers~1{{river}}~1subscriptions~1{{topic}}/{method}/parameters");
            let params = doc.pointer(&pointer).and_then(|p| p.as_array()).cloned().unwrap_or_default();
            let selectors = params.iter().find(|p| p["name"] == "tags").expect("a tags parameter");
            assert_eq!(selectors["in"], "query");
        }
        let message = doc.pointer("/components/schemas/Received/properties/message").expect("message");
        assert_eq!(message["$ref"], "#/components/schemas/BusMessage", "{message}");
        let fields = doc.pointer("/components/schemas/BusMessage/required").expect("BusMessage");
        assert!(fields.as_array().is_some_and(|f| f.contains(&serde_json::json!("eventType"))), "{fields}");
        let subscription = doc.pointer("/components/schemas/Subscription/properties/tags").expect("Subscription");
        assert_eq!(subscription["type"], "array");
    }
}
