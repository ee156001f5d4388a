//! The OpenAPI document of a service: its own paths plus the ones every service has.

use serde_json::{Value, json};

/// The error body every route can answer.
pub fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string", "description": "stable, machine-readable"},
            "message": {"type": "string"}
        }}}
    })
}

/// A response that answers with the error body.
pub fn error_response(description: &str) -> Value {
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

/// Builds the document from the service's own `paths` and `schemas`.
pub fn document(title: &str, description: &str, paths: Value, schemas: Value) -> Value {
    let mut all_paths = json!({
        "/health": {"get": {"summary": "Alive", "security": [], "responses": {"200": {"description": "alive"}}}},
        "/ready": {"get": {"summary": "Database and Kinesis reachable", "security": [], "responses": {
            "200": {"description": "ready"}, "503": error_response("not ready")}}},
        "/metrics": {"get": {"summary": "Prometheus metrics", "security": [], "responses": {"200": {"description": "text format 0.0.4"}}}},
        "/openapi.json": {"get": {"summary": "This document", "security": [], "responses": {"200": {"description": "OpenAPI 3.1"}}}}
    });
    if let (Some(all), Value::Object(own)) = (all_paths.as_object_mut(), paths) {
        all.extend(own);
    }
    let mut all_schemas = json!({"Error": error_schema()});
    if let (Some(all), Value::Object(own)) = (all_schemas.as_object_mut(), schemas) {
        all.extend(own);
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": title, "version": env!("CARGO_PKG_VERSION"), "description": description},
        "security": [{"bearer": []}],
        "paths": all_paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": all_schemas
        }
    })
}

/// Error responses by status, each listing the codes it can carry.
pub fn error_responses(codes: &[(&str, &str)]) -> Value {
    let mut map = serde_json::Map::new();
    for (status, what) in codes {
        map.insert((*status).to_owned(), error_response(what));
    }
    Value::Object(map)
}

/// Adds the success response to a map of error responses.
pub fn with_success(mut responses: Value, status: &str, ok: Value) -> Value {
    responses[status] = ok;
    responses
}
