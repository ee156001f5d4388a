//! Where each `/api/...` request goes, and how it is forwarded.
//!
//! The routing is a pure function of the method, the path and the query
//! ([`route`]): commands on accounts go to account-service, history and temporal reads
//! of an account too (they fold the event store); other reads go to query-service
//! (the views, with `min_version`); transfers are created on transfer-service and read
//! from the views; `/api/events`, topics, rivers and operations go to the event bus.
//! A forwarded request keeps its method, path (less `/api`), query, body and the
//! headers a service reads (authorization, content type, idempotency key, request and
//! correlation ids); the answer comes back as it is.

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use service_kit::{ApiError, ErrorCode};
use std::time::Duration;

/// The services behind the gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Upstream {
    Accounts,
    Transfers,
    Queries,
    Bus,
}

impl Upstream {
    pub const ALL: [Upstream; 4] = [Upstream::Accounts, Upstream::Transfers, Upstream::Queries, Upstream::Bus];

    pub fn name(self) -> &'static str {
        match self {
            Upstream::Accounts => "account-service",
            Upstream::Transfers => "transfer-service",
            Upstream::Queries => "query-service",
            Upstream::Bus => "event-bus",
        }
    }
}

/// The upstream of a request to `/api` + `path` (path without `/api`), or `None`.
pub fn route(method: &Method, path: &str, query: &str) -> Option<Upstream> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    // a dot segment (`..`, `%2e%2e`) would be resolved on the way out and reach another
    // route of the upstream than the one routed (its /metrics, say): refused, as are
    // empty segments
    let dotted = |s: &str| {
        let lower = s.to_ascii_lowercase();
        s.is_empty() || lower.replace("%2e", ".").chars().all(|c| c == '.')
    };
    if segments.iter().any(|s| dotted(s)) {
        return None;
    }
    let temporal = query.split('&').any(|p| p.starts_with("as_of=") || p.starts_with("at_version="));
    match (method, segments.as_slice()) {
        (&Method::POST, ["accounts"]) => Some(Upstream::Accounts),
        (&Method::GET, ["accounts"]) => Some(Upstream::Queries),
        (&Method::GET, ["accounts", _]) if temporal => Some(Upstream::Accounts),
        (&Method::GET, ["accounts", _]) => Some(Upstream::Queries),
        (&Method::GET, ["accounts", _, "transactions"]) => Some(Upstream::Queries),
        (&Method::GET, ["accounts", _, "history" | "transfers"]) => Some(Upstream::Accounts),
        (&Method::POST, ["accounts", _, "deposits" | "withdrawals" | "payments" | "close"]) => Some(Upstream::Accounts),
        (&Method::POST, ["transfers"]) => Some(Upstream::Transfers),
        (&Method::GET, ["transfers", _]) => Some(Upstream::Queries),
        (_, ["events" | "topics" | "rivers" | "ops", ..]) => Some(Upstream::Bus),
        _ => None,
    }
}

/// The request headers passed on.
const FORWARDED: [&str; 6] =
    ["authorization", "content-type", "idempotency-key", "x-request-id", "x-correlation-id", "accept"];
/// The answer headers passed back.
const RETURNED: [&str; 4] = ["content-type", "retry-after", "idempotent-replayed", "www-authenticate"];

/// A request as it goes upstream: its path and query below the upstream's base.
pub struct Outgoing<'a> {
    pub method: Method,
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
}

/// Forwards a request to `base` + its path and query; an upstream that cannot be
/// reached is 503 `upstream_unavailable`, one that answers garbage 502 `bad_gateway`.
pub async fn forward(
    client: &reqwest::Client,
    upstream: Upstream,
    base: &str,
    outgoing: Outgoing<'_>,
    timeout: Duration,
) -> Result<(StatusCode, HeaderMap, Bytes), ApiError> {
    let Outgoing { method, path_and_query, headers, body } = outgoing;
    let mut request =
        client.request(method, format!("{}{path_and_query}", base.trim_end_matches('/'))).timeout(timeout);
    for name in FORWARDED {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value);
        }
    }
    let unreachable = |e: reqwest::Error| {
        tracing::warn!(upstream = upstream.name(), error = %e, "upstream unreachable");
        ApiError::new(ErrorCode::UpstreamUnavailable, format!("{} is not reachable; retry", upstream.name()))
    };
    let response = request.body(body).send().await.map_err(|e| {
        if e.is_connect() || e.is_timeout() {
            unreachable(e)
        } else {
            tracing::warn!(upstream = upstream.name(), error = %e, "upstream answered badly");
            ApiError::new(ErrorCode::BadGateway, format!("{} gave no usable answer", upstream.name()))
        }
    })?;
    let status = response.status();
    let mut returned = HeaderMap::new();
    for name in RETURNED {
        if let Some(value) = response.headers().get(name) {
            returned.insert(name, value.clone());
        }
    }
    let body = response.bytes().await.map_err(|e| {
        tracing::warn!(upstream = upstream.name(), error = %e, "upstream answer cut");
        ApiError::new(ErrorCode::BadGateway, format!("{} gave no usable answer", upstream.name()))
    })?;
    if !returned.contains_key("content-type") && !body.is_empty() {
        returned.insert("content-type", HeaderValue::from_static("application/json"));
    }
    Ok((status, returned, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn to(method: Method, path: &str, query: &str) -> Option<&'static str> {
        route(&method, path, query).map(Upstream::name)
    }

    #[test]
    fn each_route_goes_to_the_service_that_owns_it() {
        use Method as M;
        assert_eq!(to(M::POST, "/accounts", ""), Some("account-service"));
        assert_eq!(to(M::GET, "/accounts", "owner=x"), Some("query-service"));
        assert_eq!(to(M::GET, "/accounts/1", "min_version=3"), Some("query-service"));
        assert_eq!(to(M::GET, "/accounts/1", "as_of=2026-01-01T00:00:00Z"), Some("account-service"));
        assert_eq!(to(M::GET, "/accounts/1", "at_version=2"), Some("account-service"));
        assert_eq!(to(M::GET, "/accounts/1/transactions", ""), Some("query-service"));
        assert_eq!(to(M::GET, "/accounts/1/history", ""), Some("account-service"));
        assert_eq!(to(M::GET, "/accounts/1/transfers", ""), Some("account-service"));
        for command in ["deposits", "withdrawals", "payments", "close"] {
            assert_eq!(to(M::POST, &format!("/accounts/1/{command}"), ""), Some("account-service"));
        }
        assert_eq!(to(M::POST, "/transfers", ""), Some("transfer-service"));
        assert_eq!(to(M::GET, "/transfers/1", "min_version=2&wait_ms=100"), Some("query-service"));
        assert_eq!(to(M::POST, "/events", ""), Some("event-bus"));
        assert_eq!(to(M::PUT, "/rivers/r1/subscriptions/x", ""), Some("event-bus"));
        assert_eq!(to(M::GET, "/ops/rivers", ""), Some("event-bus"));
        assert_eq!(to(M::GET, "/nothing", ""), None);
        assert_eq!(to(M::DELETE, "/accounts/1", ""), None);
        assert_eq!(to(M::GET, "/accounts/1/deposits", ""), None);
        // dot segments never reach an upstream's other routes
        for sneaky in
            ["/events/../metrics", "/events/%2e%2e/metrics", "/events/%2E./ready", "/accounts/./x", "/ops//rivers"]
        {
            assert_eq!(to(M::GET, sneaky, ""), None, "{sneaky}");
        }
    }
}
