//! The OpenAPI 3.1 document of a service, generated: the routes, their parameters,
//! request and response bodies come from utoipa (`#[derive(ToSchema)]` on the types
//! the handlers use, `#[utoipa::path]` on the handlers); the error responses come
//! from the [`ErrorCode`]s each route declares, so every code appears under the one
//! status it is answered with. [`finish`] adds what every service has: the
//! operational routes, the bearer scheme, the error body, and the errors of the layer
//! stack (authentication, timeouts, an unreachable database).

use crate::error::ErrorCode;
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// The errors a route can answer, beside the ones every authenticated route has.
pub struct RouteErrors {
    pub method: &'static str,
    pub path: &'static str,
    pub codes: &'static [ErrorCode],
}

/// What every authenticated route can answer, whatever it does.
pub const COMMON_ERRORS: &[ErrorCode] = &[
    ErrorCode::MissingToken,
    ErrorCode::InvalidToken,
    ErrorCode::TokenExpired,
    ErrorCode::Timeout,
    ErrorCode::Unavailable,
    ErrorCode::Overloaded,
];

/// What every route with a JSON body can answer.
pub const BODY_ERRORS: &[ErrorCode] =
    &[ErrorCode::MalformedJson, ErrorCode::InvalidBody, ErrorCode::PayloadTooLarge, ErrorCode::UnsupportedMediaType];

/// The pattern of an `Idempotency-Key` (1 to 255 visible ASCII characters).
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[!-~]{1,255}$";

/// The error body's schema: the code is one of [`ErrorCode::ALL`].
pub fn error_schema() -> Value {
    let codes: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": codes, "description": "stable, machine-readable"},
                "message": {"type": "string", "description": "for people"}
            },
            "additionalProperties": true
        }}
    })
}

/// The responses of `codes`, one per status, each naming its codes and their meaning.
pub fn error_responses(codes: &[ErrorCode]) -> Map<String, Value> {
    let mut by_status: BTreeMap<u16, Vec<ErrorCode>> = BTreeMap::new();
    for code in codes {
        let list = by_status.entry(code.status().as_u16()).or_default();
        if !list.contains(code) {
            list.push(*code);
        }
    }
    by_status
        .into_iter()
        .map(|(status, codes)| {
            let description =
                codes.iter().map(|c| format!("`{}`: {}", c.as_str(), c.meaning())).collect::<Vec<_>>().join("; ");
            let mut response = json!({
                "description": description,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}
            });
            if status == 503 || codes.iter().any(|c| matches!(c, ErrorCode::ViewOutOfDate | ErrorCode::VersionNotReached))
            {
                response["headers"] =
                    json!({"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}});
            }
            (status.to_string(), response)
        })
        .collect()
}

/// Completes a service's generated document: title and description, the operational
/// routes, the bearer scheme, the error schema, and every route's error responses
/// (its own `errors` plus [`COMMON_ERRORS`]).
pub fn finish(generated: Value, title: &str, description: &str, errors: &[RouteErrors]) -> Value {
    let mut doc = generated;
    doc["openapi"] = json!("3.1.0");
    doc["info"] = json!({"title": title, "version": env!("CARGO_PKG_VERSION"), "description": description});
    doc["security"] = json!([{"bearer": []}]);
    if !doc["paths"].is_object() {
        doc["paths"] = json!({});
    }
    for route in errors {
        let Some(operation) = doc["paths"].get_mut(route.path).and_then(|p| p.get_mut(route.method)) else {
            panic!("OpenAPI: errors declared for {} {}, which has no #[utoipa::path]", route.method, route.path);
        };
        let mut all: Vec<ErrorCode> = route.codes.to_vec();
        all.extend_from_slice(COMMON_ERRORS);
        let responses = operation["responses"].as_object_mut().map(std::mem::take).unwrap_or_default();
        let mut merged = error_responses(&all);
        merged.extend(responses);
        operation["responses"] = Value::Object(merged);
    }
    // headers the layer stack checks: their schema states the check
    for item in doc["paths"].as_object_mut().into_iter().flat_map(|p| p.values_mut()) {
        for operation in item.as_object_mut().into_iter().flat_map(|o| o.values_mut()) {
            for param in operation.get_mut("parameters").and_then(Value::as_array_mut).into_iter().flatten() {
                if param["in"] == "header" && param["name"] == "Idempotency-Key" {
                    param["schema"] = json!({"type": "string", "pattern": IDEMPOTENCY_KEY_PATTERN});
                    param["description"] = json!(
                        "a repeat of the same request with this key answers the first answer and changes nothing"
                    );
                }
            }
        }
    }
    let operational = json!({
        "/health": {"get": {"summary": "Alive", "operationId": "health", "security": [], "responses": {"200": {
            "description": "alive",
            "content": {"application/json": {"schema": {"type": "object", "required": ["status", "service"],
                "properties": {"status": {"const": "ok"}, "service": {"type": "string"}}}}}}}}},
        "/ready": {"get": {"summary": "The database and every other dependency of the service answer", "operationId": "ready",
            "security": [], "responses": {
                "200": {"description": "ready", "content": {"application/json": {"schema": {"type": "object",
                    "required": ["status", "checks"],
                    "properties": {"status": {"const": "ready"}, "checks": {"type": "object",
                        "additionalProperties": {"type": "string", "enum": ["ok", "unavailable"]}}}}}}},
                "503": error_responses(&[ErrorCode::NotReady])["503"]}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "operationId": "metrics", "security": [], "responses": {
            "200": {"description": "Prometheus text format 0.0.4", "content": {"text/plain": {"schema": {"type": "string"}}}}}}},
        "/openapi.json": {"get": {"summary": "This document", "operationId": "openapi", "security": [], "responses": {
            "200": {"description": "OpenAPI 3.1", "content": {"application/json": {"schema": {"type": "object"}}}}}}}
    });
    if let (Some(paths), Value::Object(ops)) = (doc["paths"].as_object_mut(), operational) {
        paths.extend(ops);
    }
    if !doc["components"].is_object() {
        doc["components"] = json!({});
    }
    doc["components"]["securitySchemes"] =
        json!({"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}});
    if !doc["components"]["schemas"].is_object() {
        doc["components"]["schemas"] = json!({});
    }
    doc["components"]["schemas"]["Error"] = error_schema();
    doc
}

/// The document of a service with no routes of its own (operational routes only).
pub fn operational_only(title: &str, description: &str) -> Value {
    finish(json!({"paths": {}}), title, description, &[])
}

/// Checks a finished document: every operation's every error status lists only codes
/// answered with that status (the guard of [`error_responses`]), and every path
/// operation has at least one success response.
pub fn check(doc: &Value) -> Result<(), String> {
    let paths = doc["paths"].as_object().ok_or("no paths")?;
    for (path, item) in paths {
        for (method, operation) in item.as_object().ok_or("a path is not an object")? {
            let responses = operation["responses"].as_object().ok_or(format!("{method} {path}: no responses"))?;
            if !responses.keys().any(|s| s.starts_with('2')) {
                return Err(format!("{method} {path}: no success response"));
            }
        }
    }
    Ok(())
}

/// For each service's unit test: the document is complete, and printed with
/// `PRINT_OPENAPI=1` (to read it without running the service).
pub fn check_and_print(doc: &Value) {
    if let Err(e) = check(doc) {
        panic!("the OpenAPI document is incomplete: {e}");
    }
    if std::env::var_os("PRINT_OPENAPI").is_some() {
        println!("{}", serde_json::to_string_pretty(doc).unwrap_or_default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_documented_under_its_own_status_with_its_meaning() {
        let responses = error_responses(ErrorCode::ALL);
        for code in ErrorCode::ALL {
            let status = code.status().as_u16().to_string();
            let description = responses[&status]["description"].as_str().unwrap_or_default();
            assert!(description.contains(&format!("`{}`: {}", code.as_str(), code.meaning())), "{code} under {status}");
        }
        assert!(responses["409"]["headers"]["Retry-After"].is_object());
        assert!(responses["503"]["headers"]["Retry-After"].is_object());
        assert!(responses["404"].get("headers").is_none());
    }

    #[test]
    fn codes_are_unique_snake_case_strings() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.as_str()), "{code} twice");
            assert!(code.as_str().chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{code}");
            assert!(code.status().is_client_error() || code.status().is_server_error(), "{code}");
        }
        let schema = error_schema();
        assert_eq!(
            schema["properties"]["error"]["properties"]["code"]["enum"].as_array().map(Vec::len),
            Some(ErrorCode::ALL.len())
        );
    }

    #[test]
    fn finish_merges_the_route_errors_with_the_common_ones_and_keeps_the_success() {
        let generated = json!({"paths": {"/things": {"post": {"responses": {"201": {"description": "made"}}}}}});
        let doc = finish(
            generated,
            "t",
            "d",
            &[RouteErrors {
                method: "post",
                path: "/things",
                codes: &[ErrorCode::InvalidBody, ErrorCode::MalformedJson],
            }],
        );
        let responses = &doc["paths"]["/things"]["post"]["responses"];
        assert_eq!(responses["201"]["description"], "made");
        for status in ["400", "401", "503"] {
            assert!(responses[status].is_object(), "{status} missing");
        }
        assert!(responses["400"]["description"].as_str().unwrap_or_default().contains("`malformed_json`"));
        assert!(doc["paths"]["/health"]["get"].is_object());
        assert_eq!(doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer");
        check(&doc).expect("a complete document");
    }
}
