//! Prometheus metrics: one registry per service, request counts and latencies by
//! matched route.

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry, TextEncoder};
use std::time::Instant;

/// Request metrics, labelled by method and matched route (never the raw path, whose
/// ids would make a series per account).
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: IntCounterVec,
    latency: HistogramVec,
    /// Requests answered 503 `timeout` (the route layer never sees them finish).
    pub timeouts: prometheus::IntCounter,
    /// Requests refused 503 `overloaded` at once: `MAX_IN_FLIGHT` were running.
    pub shed: prometheus::IntCounter,
}

impl HttpMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests answered"),
            &["method", "route", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
            &["method", "route"],
        )?;
        let timeouts = prometheus::IntCounter::new("http_request_timeouts_total", "Requests answered 503 timeout")?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        let shed = prometheus::IntCounter::new(
            "http_requests_shed_total",
            "Requests answered 503 overloaded because MAX_IN_FLIGHT were running",
        )?;
        registry.register(Box::new(timeouts.clone()))?;
        registry.register(Box::new(shed.clone()))?;
        Ok(HttpMetrics { requests, latency, timeouts, shed })
    }
}

/// Middleware (a `route_layer`, so the matched route is known).
pub async fn track(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    // a made-up method (any token is one to HTTP) must not add a series of its own
    let method = match *request.method() {
        http::Method::GET
        | http::Method::POST
        | http::Method::PUT
        | http::Method::DELETE
        | http::Method::PATCH
        | http::Method::HEAD
        | http::Method::OPTIONS => request.method().as_str(),
        _ => "other",
    }
    .to_owned();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    // the trace's name of the request's span (crate::http), started before routing
    {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        let context = tracing::Span::current().context();
        if context.span().span_context().is_valid() {
            context.span().update_name(format!("{method} {route}"));
        }
    }
    let response = next.run(request).await;
    metrics.latency.with_label_values(&[&method, &route]).observe(started.elapsed().as_secs_f64());
    metrics.requests.with_label_values(&[&method, &route, response.status().as_str()]).inc();
    response
}

/// The registry in Prometheus text format.
pub fn render(registry: &Registry) -> String {
    TextEncoder::new().encode_to_string(&registry.gather()).unwrap_or_default()
}
