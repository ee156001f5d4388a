//! One OpenAPI document for the whole API: the gateway's own routes, and each
//! upstream's routes under `/api` as the gateway routes them, with the answers the
//! edge adds (429 `rate_limited`, 502 `bad_gateway`, 503 `upstream_unavailable`).
//! Each upstream's schemas keep their names, prefixed by the service where two
//! services use one name differently.

use crate::proxy::{Routed, Upstream, route};
use http::Method;
use serde_json::{Map, Value};
use service_kit::ErrorCode;
use service_kit::openapi::{RouteErrors, error_responses, finish};
use utoipa::OpenApi;

#[derive(utoipa::OpenApi)]
#[openapi(paths(crate::dev_token))]
struct Own;

/// The gateway's own routes (the dev login) and the operational ones of its public
/// address (`/health`, `/openapi.json`; `/metrics` and `/ready` are on the admin address).
pub fn own_document() -> Value {
    let generated = serde_json::to_value(Own::openapi()).unwrap_or_default();
    let mut doc = finish(
        generated,
        "bank API (gateway)",
        "One origin for the whole API: /api/... is routed to the service that owns each route. \
         The upstreams' routes appear here once they answered.",
        &[RouteErrors {
            method: "post",
            path: "/api/dev/token",
            codes: &[ErrorCode::MalformedJson, ErrorCode::InvalidBody, ErrorCode::NotFound, ErrorCode::PayloadTooLarge],
        }],
    );
    if let Some(paths) = doc["paths"].as_object_mut() {
        paths.remove("/metrics");
        paths.remove("/ready");
    }
    doc
}

fn prefix(upstream: Upstream) -> &'static str {
    match upstream {
        Upstream::Accounts => "Accounts",
        Upstream::Transfers => "Transfers",
        Upstream::Queries => "Views",
        Upstream::Bus => "Bus",
    }
}

/// Renames every `#/components/schemas/X` reference of `value` to the prefixed name.
fn rename_refs(value: &mut Value, prefix: &str) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get_mut("$ref")
                && let Some(name) = r.strip_prefix("#/components/schemas/")
                && name != "Error"
            {
                *r = format!("#/components/schemas/{prefix}{name}");
            }
            map.values_mut().for_each(|v| rename_refs(v, prefix));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| rename_refs(v, prefix)),
        _ => {}
    }
}

/// Adds one upstream's document to `doc`: the routes the gateway sends to it.
pub fn merge(doc: &mut Value, upstream: Upstream, mut theirs: Value) {
    let prefix = prefix(upstream);
    rename_refs(&mut theirs, prefix);
    // the edge's own answers on every route: a path not in canonical form (404), a body
    // over the gateway's limit (413), the rate limit, a dead or garbled upstream
    let edge = error_responses(&[
        ErrorCode::NotFound,
        ErrorCode::PayloadTooLarge,
        ErrorCode::RateLimited,
        ErrorCode::BadGateway,
        ErrorCode::UpstreamUnavailable,
    ]);
    let paths = theirs["paths"].as_object().cloned().unwrap_or_default();
    for (path, item) in paths {
        for (method, operation) in item.as_object().cloned().unwrap_or_default() {
            let Ok(m) = method.to_uppercase().parse::<Method>() else { continue };
            // a temporal read (`as_of`, `at_version`) of an account goes to account-service
            let query = if upstream == Upstream::Accounts && path == "/accounts/{id}" { "at_version=1" } else { "" };
            // a template's parameters (`{id}`) stand for one canonical segment
            let concrete: Vec<&str> = path.split('/').map(|s| if s.starts_with('{') { "x" } else { s }).collect();
            if !matches!(route(&m, &concrete.join("/"), query), Routed::To(to, _) if to == upstream) {
                continue;
            }
            let mut operation = operation;
            if let Some(responses) = operation["responses"].as_object_mut() {
                for (status, response) in &edge {
                    responses.entry(status.clone()).or_insert_with(|| response.clone());
                }
            }
            let at = format!("/api{path}");
            let slot = &mut doc["paths"][&at][&method];
            if slot.is_object() {
                // the same route on two services (GET /accounts/{id}): one operation,
                // both services' parameters
                let mut params: Vec<Value> = slot["parameters"].as_array().cloned().unwrap_or_default();
                for p in operation["parameters"].as_array().cloned().unwrap_or_default() {
                    if !params.iter().any(|q| q["name"] == p["name"] && q["in"] == p["in"]) {
                        params.push(p);
                    }
                }
                slot["parameters"] = Value::Array(params);
            } else {
                *slot = operation;
            }
        }
    }
    let schemas = theirs["components"]["schemas"].as_object().cloned().unwrap_or_default();
    let all: &mut Map<String, Value> = match doc["components"]["schemas"].as_object_mut() {
        Some(all) => all,
        None => return,
    };
    for (name, schema) in schemas {
        let key = if name == "Error" { name } else { format!("{prefix}{name}") };
        all.insert(key, schema);
    }
}

/// The whole document; `true` when every upstream answered.
pub async fn assemble(client: &reqwest::Client, base: impl Fn(Upstream) -> String) -> (Value, bool) {
    let mut doc = own_document();
    let mut all = true;
    for upstream in Upstream::ALL {
        let url = format!("{}/openapi.json", base(upstream).trim_end_matches('/'));
        let theirs = match client.get(&url).timeout(std::time::Duration::from_secs(3)).send().await {
            Ok(r) if r.status().is_success() => r.json::<Value>().await.ok(),
            _ => None,
        };
        match theirs {
            Some(theirs) => merge(&mut doc, upstream, theirs),
            None => all = false,
        }
    }
    (doc, all)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_upstreams_routes_appear_under_api_with_the_edges_answers_and_renamed_schemas() {
        let mut doc = own_document();
        let theirs = json!({
            "paths": {
                "/transfers": {"post": {"responses": {"201": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/TransferReply"}}}}}}},
                "/transfers/{id}": {"get": {"responses": {"200": {"description": "ok"}}}},
                "/health": {"get": {"responses": {"200": {"description": "alive"}}}}
            },
            "components": {"schemas": {"TransferReply": {"type": "object"}, "Error": {"type": "object"}}}
        });
        merge(&mut doc, Upstream::Transfers, theirs);
        let post = &doc["paths"]["/api/transfers"]["post"];
        assert_eq!(
            post["responses"]["201"]["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/TransfersTransferReply"
        );
        for status in ["429", "502", "503"] {
            assert!(post["responses"][status].is_object(), "{status} missing");
        }
        // GET /transfers/{id} is served from the views (query-service), /health is the service's own
        assert!(doc["paths"].get("/api/transfers/{id}").is_none());
        assert!(doc["paths"].get("/api/health").is_none());
        assert!(doc["components"]["schemas"]["TransfersTransferReply"].is_object());
        assert!(doc["paths"]["/api/dev/token"]["post"].is_object());
    }
}
