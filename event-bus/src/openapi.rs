//! The OpenAPI document of event-bus: generated from the routes' types
//! ([`crate::http::Api`]) and completed with each route's error codes.

use crate::http::{POST_ERRORS, QUERY_ERRORS, QUEUE_ERRORS, RIVER_READ_ERRORS, SUBSCRIPTION_ERRORS, TOPIC_ERRORS};
use serde_json::Value;
use service_kit::openapi::{RouteErrors, finish};
use utoipa::OpenApi;

pub fn document_json() -> Value {
    let generated = serde_json::to_value(crate::http::Api::openapi()).unwrap_or_default();
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
        ],
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_document_is_complete() {
        let doc = super::document_json();
        service_kit::openapi::check(&doc).expect("every operation has a success response");
        if std::env::var_os("PRINT_OPENAPI").is_some() {
            println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        }
    }
}
