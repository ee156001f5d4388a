//! Where each `/api/...` request goes, and how it is forwarded.
//!
//! The routing is a pure function of the method, the path and the query
//! ([`route`]): commands on accounts go to account-service, history and temporal reads
//! of an account too (they fold the event store); other reads go to query-service
//! (the views, with `min_version`); transfers are created on transfer-service and read
//! from the views; `/api/events`, topics, rivers and operations go to the event bus,
//! each route with its own methods (any other is 405 with `Allow` at the gateway).
//! A forwarded request keeps its method, path (less `/api`), query, body and the
//! headers a service reads (authorization, content type, idempotency key, request and
//! correlation ids) and the trace context (`traceparent`: the gateway's request span,
//! itself a child of the caller's); the answer comes back as it is.

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

/// Where a request to `/api` + `path` goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routed {
    /// To this upstream, at this path (rebuilt from the checked segments).
    To(Upstream, String),
    /// The path is routed, for these methods only (405 with `Allow`).
    NotAllowed(Vec<&'static str>),
    /// No route (404), also for any path not in canonical form.
    NotFound,
}

/// The methods the routing table knows; any other is refused before routing.
const METHODS: [Method; 4] = [Method::GET, Method::POST, Method::PUT, Method::DELETE];

/// The route of a request to `/api` + `path` (path without `/api`).
///
/// Only a canonical path is routed: each segment is non-empty, not a dot segment, and
/// made of `A-Z a-z 0-9 . _ ~ * -` alone (ids, names, topics), so no byte of it can be
/// read as another separator on the way out: no `%` (no `%2f`, `%5c`, `%2e%2e`), no
/// `\`, no `;`. The upstream path is built from these segments, never passed on as
/// the client wrote it.
pub fn route(method: &Method, path: &str, query: &str) -> Routed {
    let Some(owned) = canonical_segments(path) else { return Routed::NotFound };
    let segments: Vec<&str> = owned.iter().map(String::as_str).collect();
    let temporal = query.split('&').any(|p| p.starts_with("as_of=") || p.starts_with("at_version="));
    let canonical = format!("/{}", segments.join("/"));
    if let Some(upstream) = METHODS.contains(method).then(|| table(method, &segments, temporal)).flatten() {
        return Routed::To(upstream, canonical);
    }
    let allowed: Vec<&'static str> =
        METHODS.iter().filter(|m| table(m, &segments, temporal).is_some()).map(Method::as_str).collect();
    if allowed.is_empty() { Routed::NotFound } else { Routed::NotAllowed(allowed) }
}

/// The path's segments when every one is canonical (see [`route`]). `%2A` is read as
/// `*` (clients encode it in topic patterns); no other encoding is.
fn canonical_segments(path: &str) -> Option<Vec<String>> {
    let segments: Vec<String> =
        path.strip_prefix('/')?.split('/').map(|s| s.replace("%2A", "*").replace("%2a", "*")).collect();
    let plain = |s: &String| {
        !s.is_empty()
            && !s.bytes().all(|b| b == b'.')
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._~*-".contains(&b))
    };
    segments.iter().all(plain).then_some(segments)
}

/// The routing table: which upstream owns a method on a path.
fn table(method: &Method, segments: &[&str], temporal: bool) -> Option<Upstream> {
    match (method, segments) {
        (&Method::POST, ["accounts"]) => Some(Upstream::Accounts),
        (&Method::GET, ["accounts"]) => Some(Upstream::Queries),
        (&Method::GET, ["accounts", _]) if temporal => Some(Upstream::Accounts),
        (&Method::GET, ["accounts", _]) => Some(Upstream::Queries),
        (&Method::GET, ["accounts", _, "transactions" | "statements"]) => Some(Upstream::Queries),
        (&Method::GET, ["accounts", _, "statements", _]) => Some(Upstream::Queries),
        (&Method::GET, ["accounts", _, "history" | "transfers"]) => Some(Upstream::Accounts),
        (&Method::POST, ["accounts", _, "deposits" | "withdrawals" | "payments" | "close"]) => Some(Upstream::Accounts),
        (&Method::POST, ["transfers"]) => Some(Upstream::Transfers),
        (&Method::GET, ["transfers", _]) => Some(Upstream::Queries),
        (&Method::GET, ["search"]) => Some(Upstream::Queries),
        (&Method::GET | &Method::POST, ["events" | "topics"]) => Some(Upstream::Bus),
        (&Method::GET, ["rivers"] | ["rivers", _, "subscriptions"]) => Some(Upstream::Bus),
        (&Method::PUT | &Method::DELETE, ["rivers", _, "subscriptions", _]) => Some(Upstream::Bus),
        (&Method::POST, ["rivers", _, "receive" | "ack"]) => Some(Upstream::Bus),
        (&Method::GET, ["ops", "rivers" | "tailer" | "dead-letters" | "unsettled" | "ledger"]) => Some(Upstream::Bus),
        (&Method::POST, ["ops", "dead-letters", _, "retry"]) => Some(Upstream::Bus),
        _ => None,
    }
}

/// The request headers passed on.
const FORWARDED: [&str; 6] =
    ["authorization", "content-type", "idempotency-key", "x-request-id", "x-correlation-id", "accept"];
/// The answer headers passed back.
const RETURNED: [&str; 6] =
    ["content-type", "content-disposition", "retry-after", "idempotent-replayed", "www-authenticate", "allow"];

/// A request as it goes upstream: its path and query below the upstream's base.
#[derive(Clone)]
pub struct Outgoing<'a> {
    pub method: Method,
    pub path_and_query: &'a str,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
}

/// Why a forward failed: the answer to give, and whether the request never reached
/// the instance (its connection was refused: safe to send to another).
#[derive(Debug)]
pub struct Failed {
    pub error: ApiError,
    pub not_sent: bool,
}

impl From<ApiError> for Failed {
    fn from(error: ApiError) -> Self {
        Failed { error, not_sent: false }
    }
}

/// Forwards a request to `base` + its path and query; an upstream that cannot be
/// reached is 503 `upstream_unavailable`, one that answers garbage 502 `bad_gateway`.
pub async fn forward(
    client: &reqwest::Client,
    upstream: Upstream,
    base: &str,
    outgoing: Outgoing<'_>,
    timeout: Duration,
) -> Result<(StatusCode, HeaderMap, Bytes), Failed> {
    let Outgoing { method, path_and_query, headers, body } = outgoing;
    let base = base.trim_end_matches('/');
    let url = reqwest::Url::parse(&format!("{base}{path_and_query}"))
        .map_err(|_| ApiError::new(ErrorCode::NotFound, "no such route"))?;
    // the path sent is the path routed: nothing in it was resolved or rewritten
    let routed = path_and_query.split('?').next().unwrap_or_default();
    let base_path = reqwest::Url::parse(base).map(|b| b.path().trim_end_matches('/').to_owned()).unwrap_or_default();
    if url.path() != format!("{base_path}{routed}") {
        tracing::warn!(upstream = upstream.name(), "a path changed on its way out: refused");
        return Err(ApiError::new(ErrorCode::NotFound, "no such route").into());
    }
    let mut request = client.request(method, url).timeout(timeout);
    for name in FORWARDED {
        if let Some(value) = headers.get(name) {
            request = request.header(name, value);
        }
    }
    // the trace goes on upstream: the gateway's request span, or, when the gateway
    // traces nothing, the caller's own traceparent if it is well formed (rewritten)
    let caller = || eventstore::trace::canonical(headers.get(eventstore::trace::TRACEPARENT)?.to_str().ok()?);
    if let Some(traceparent) = eventstore::trace::current().or_else(caller) {
        request = request.header(eventstore::trace::TRACEPARENT, traceparent);
    }
    let unreachable = |e: reqwest::Error| {
        tracing::warn!(upstream = upstream.name(), error = %e, "upstream unreachable");
        ApiError::new(ErrorCode::UpstreamUnavailable, format!("{} is not reachable; retry", upstream.name()))
    };
    let response = request.body(body).send().await.map_err(|e| {
        if e.is_connect() {
            Failed { error: unreachable(e), not_sent: true }
        } else if e.is_timeout() {
            unreachable(e).into()
        } else {
            tracing::warn!(upstream = upstream.name(), error = %e, "upstream answered badly");
            ApiError::new(ErrorCode::BadGateway, format!("{} gave no usable answer", upstream.name())).into()
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
        match route(&method, path, query) {
            Routed::To(upstream, routed) => {
                assert_eq!(routed, path, "a canonical path is sent as it came");
                Some(upstream.name())
            }
            _ => None,
        }
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
        assert_eq!(to(M::GET, "/search", "q=rent&limit=10"), Some("query-service"));
        assert_eq!(to(M::POST, "/search", ""), None);
        assert_eq!(to(M::POST, "/events", ""), Some("event-bus"));
        assert_eq!(to(M::PUT, "/rivers/r1/subscriptions/x", ""), Some("event-bus"));
        assert_eq!(
            route(&M::PUT, "/rivers/r1/subscriptions/%2A", ""),
            Routed::To(Upstream::Bus, "/rivers/r1/subscriptions/*".into())
        );
        assert_eq!(to(M::GET, "/ops/rivers", ""), Some("event-bus"));
        assert_eq!(to(M::GET, "/nothing", ""), None);
        assert_eq!(to(M::DELETE, "/accounts/1", ""), None);
        assert_eq!(to(M::GET, "/accounts/1/deposits", ""), None);
        // no non-canonical path reaches an upstream: dot and empty segments, encoded or
        // raw separators, parameters, encodings of any kind
        for sneaky in [
            "/events/../metrics",
            "/events/%2e%2e/metrics",
            "/events/%2E./ready",
            "/accounts/./x",
            "/ops//rivers",
            "/events/x\\..\\..\\metrics",
            "/events/x%2f..%2fmetrics",
            "/events/x%5c..%5cmetrics",
            "/accounts/1;x=2",
            "/accounts/%31",
            "/accounts/1/",
            "accounts",
        ] {
            assert_eq!(route(&M::GET, sneaky, ""), Routed::NotFound, "{sneaky}");
        }
    }

    #[test]
    fn a_known_path_with_another_method_is_405_with_the_methods_it_takes() {
        let m = |name: &str| Method::from_bytes(name.as_bytes()).expect("a method token");
        assert_eq!(route(&m("TRACE"), "/accounts", ""), Routed::NotAllowed(vec!["GET", "POST"]));
        assert_eq!(route(&m("ZZ8"), "/accounts/1/deposits", ""), Routed::NotAllowed(vec!["POST"]));
        assert_eq!(route(&Method::DELETE, "/transfers/1", ""), Routed::NotAllowed(vec!["GET"]));
        assert_eq!(route(&m("ZZ8"), "/events", ""), Routed::NotAllowed(vec!["GET", "POST"]));
        assert_eq!(route(&Method::PUT, "/ops/ledger", ""), Routed::NotAllowed(vec!["GET"]));
        assert_eq!(route(&Method::GET, "/rivers/r1/subscriptions/x", ""), Routed::NotAllowed(vec!["PUT", "DELETE"]));
        assert_eq!(route(&m("TRACE"), "/nowhere", ""), Routed::NotFound);
    }
}
