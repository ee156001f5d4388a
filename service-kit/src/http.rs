//! The HTTP plumbing every service uses: the operational routes, the layer stack and
//! `serve`.
//!
//! Layers, outermost first: request id (set, then propagated to the response) →
//! trace span (request id, method, path) → catch-panic (opaque JSON 500) → timeout
//! (JSON 503 `timeout`) → body-size limit; per matched route, the metrics; around the
//! service's own routes, the in-flight limit (JSON 503 `overloaded`, never queued).

use crate::error::{ApiError, ErrorCode};
use crate::extract::REQUEST_ID;
use crate::metrics::{self, HttpMetrics};
use axum::extract::{Request, State};
use axum::middleware::{self as mw, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures::future::BoxFuture;
use http::{HeaderName, StatusCode};
use prometheus::Registry;
use serde_json::{Value, json};
use sqlx::PgPool;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

/// What the operational routes and the layer stack need.
#[derive(Clone)]
pub struct Kit {
    pub service: &'static str,
    pub pool: PgPool,
    /// What `/ready` checks besides the database: each dependency the service uses.
    pub checks: Vec<(&'static str, ReadyProbe)>,
    /// Whether the service uses the database (`/ready` checks it).
    pub uses_database: bool,
    pub registry: Registry,
    pub http_metrics: HttpMetrics,
    /// The OpenAPI document served; a service may replace it while it runs.
    pub openapi: Arc<std::sync::RwLock<Arc<Value>>>,
    pub request_timeout: Duration,
    pub body_limit: usize,
    /// Requests of the service's routes running at once; more are shed (503).
    pub max_in_flight: usize,
}

impl Kit {
    pub fn new(
        service: &'static str,
        pool: PgPool,
        registry: Registry,
        openapi: Value,
        http: &crate::config::HttpArgs,
    ) -> prometheus::Result<Self> {
        let http_metrics = HttpMetrics::register(&registry)?;
        crate::shutdown::set_drain(Duration::from_millis(http.shutdown_drain_ms));
        Ok(Kit {
            service,
            pool,
            checks: Vec::new(),
            uses_database: true,
            registry,
            http_metrics,
            openapi: Arc::new(std::sync::RwLock::new(Arc::new(openapi))),
            request_timeout: Duration::from_millis(http.request_timeout_ms),
            body_limit: http.body_limit_bytes,
            max_in_flight: http.max_in_flight.max(1),
        })
    }
}

impl Kit {
    /// The kit of a service without a database (the gateway): its pool is never
    /// connected, and `/ready` checks only the service's own dependencies.
    pub fn without_database(
        service: &'static str,
        registry: Registry,
        openapi: Value,
        http: &crate::config::HttpArgs,
    ) -> prometheus::Result<Self> {
        let unused = sqlx::postgres::PgPoolOptions::new().connect_lazy_with(sqlx::postgres::PgConnectOptions::new());
        let mut kit = Kit::new(service, unused, registry, openapi, http)?;
        kit.uses_database = false;
        Ok(kit)
    }
}

/// A readiness probe: `true` when the dependency answers.
pub type ReadyProbe = Arc<dyn Fn() -> BoxFuture<'static, bool> + Send + Sync>;

impl Kit {
    /// Adds a dependency that `/ready` checks (named in its answer), beside the database.
    pub fn with_check<F, Fut>(mut self, name: &'static str, probe: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = bool> + Send + 'static,
    {
        self.checks.push((name, Arc::new(move || Box::pin(probe()))));
        self
    }
}

/// Wraps a service's routes with the operational routes and the layer stack.
pub fn app(routes: Router, kit: Kit) -> Router {
    let ops = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .route("/openapi.json", get(openapi))
        .with_state(kit.clone());
    layered(shed(routes, &kit).merge(ops), kit)
}

/// [`app`] for a service on a public address (the gateway): `/health` and
/// `/openapi.json` only; `/metrics` and `/ready` are served by [`admin`] on an address
/// of their own.
pub fn public_app(routes: Router, kit: Kit) -> Router {
    let ops = Router::new().route("/health", get(health)).route("/openapi.json", get(openapi)).with_state(kit.clone());
    layered(shed(routes, &kit).merge(ops), kit)
}

/// At most `MAX_IN_FLIGHT` requests of the service's routes run at once (waiting reads
/// included); one more is refused at once with 503 `overloaded` and `Retry-After`,
/// never queued: under overload the service sheds instead of swelling, and recovers as
/// soon as the load falls. The operational routes are never shed (tower's concurrency
/// limit and load shedding). One semaphore for all routes: axum builds the layer once
/// per route, so the limit must be the global kind, not one per route.
fn shed(routes: Router, kit: &Kit) -> Router {
    let counter = kit.http_metrics.shed.clone();
    routes.layer(
        tower::ServiceBuilder::new()
            .layer(axum::error_handling::HandleErrorLayer::new(move |_: tower::BoxError| {
                let counter = counter.clone();
                async move {
                    counter.inc();
                    ApiError::new(ErrorCode::Overloaded, ErrorCode::Overloaded.meaning())
                }
            }))
            .layer(tower::load_shed::LoadShedLayer::new())
            .layer(tower::limit::GlobalConcurrencyLimitLayer::new(kit.max_in_flight)),
    )
}

/// The operational routes a public service keeps off its public address.
pub fn admin(kit: Kit) -> Router {
    let ops = Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics_text))
        .with_state(kit.clone());
    layered(ops, kit)
}

/// The layer stack around `routes`.
fn layered(routes: Router, kit: Kit) -> Router {
    let timeout = kit.request_timeout;
    let timeouts = kit.http_metrics.timeouts.clone();
    let request_id = HeaderName::from_static(REQUEST_ID);
    routes
        .route_layer(mw::from_fn_with_state(kit.http_metrics.clone(), metrics::track))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(kit.body_limit))
        .layer(mw::from_fn(move |req: Request, next: Next| with_timeout(timeout, timeouts.clone(), req, next)))
        .layer(CatchPanicLayer::custom(|_: Box<dyn std::any::Any + Send>| {
            tracing::error!("request handler panicked");
            ApiError::new(ErrorCode::Internal, "internal error; it was logged").into_response()
        }))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let id = req.headers().get(REQUEST_ID).and_then(|v| v.to_str().ok()).unwrap_or("");
            if OPERATIONAL.contains(&req.uri().path()) {
                // probes and scrapes: logged like any request, never a trace of their own
                return tracing::info_span!("probe", request_id = %id, method = %req.method(), path = %req.uri().path());
            }
            let span = tracing::info_span!(
                "request",
                otel.kind = "server",
                request_id = %id,
                method = %req.method(),
                path = %req.uri().path(),
                actor = tracing::field::Empty
            );
            // the caller's trace continues (the gateway's, or a client's at the gateway)
            let parent = req.headers().get(eventstore::trace::TRACEPARENT).and_then(|v| v.to_str().ok());
            eventstore::trace::continue_from(&span, parent);
            span
        }))
        .layer(PropagateRequestIdLayer::new(request_id.clone()))
        .layer(SetRequestIdLayer::new(request_id, MakeRequestUuid))
}

/// The operational routes: their requests are not traced.
const OPERATIONAL: [&str; 4] = ["/health", "/ready", "/metrics", "/openapi.json"];

/// Serves until `shutdown` is cancelled, then finishes the requests in flight.
pub async fn serve(listener: TcpListener, app: Router, shutdown: CancellationToken) -> std::io::Result<()> {
    axum::serve(listener, app).with_graceful_shutdown(shutdown.cancelled_owned()).await
}

async fn with_timeout(timeout: Duration, timeouts: prometheus::IntCounter, req: Request, next: Next) -> Response {
    match tokio::time::timeout(timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            timeouts.inc();
            ApiError::new(
                ErrorCode::Timeout,
                "the request took too long; if it was a command, retry it with the same Idempotency-Key",
            )
            .into_response()
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(ErrorCode::MethodNotAllowed, "this route does not take that method")
}

async fn health(State(kit): State<Kit>) -> Json<Value> {
    Json(json!({"status": "ok", "service": kit.service}))
}

async fn ready(State(kit): State<Kit>) -> Response {
    let probe = Duration::from_secs(2);
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let mut checks = json!({});
    let mut all = true;
    if crate::shutdown::stopping() {
        // stopping: no new work, whatever the dependencies say
        let checks = json!({"shutdown": "stopping"});
        return ApiError::new(ErrorCode::NotReady, "the process is stopping")
            .with_detail("checks", checks)
            .into_response();
    }
    if kit.uses_database {
        let db = matches!(tokio::time::timeout(probe, sqlx::query("select 1").execute(&kit.pool)).await, Ok(Ok(_)));
        checks["database"] = json!(word(db));
        all = db;
    }
    for (name, check) in &kit.checks {
        let ok = tokio::time::timeout(probe, check()).await.unwrap_or(false);
        checks[*name] = json!(word(ok));
        all &= ok;
    }
    if all {
        Json(json!({"status": "ready", "checks": checks})).into_response()
    } else {
        ApiError::new(ErrorCode::NotReady, "a dependency is unavailable").with_detail("checks", checks).into_response()
    }
}

async fn metrics_text(State(kit): State<Kit>) -> Response {
    ([(http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], metrics::render(&kit.registry)).into_response()
}

async fn openapi(State(kit): State<Kit>) -> Json<Value> {
    let document = kit.openapi.read().unwrap_or_else(|p| p.into_inner()).clone();
    Json(document.as_ref().clone())
}

impl Kit {
    /// Replaces the served OpenAPI document (the gateway's is assembled from its
    /// upstreams' once they answer).
    pub fn set_openapi(&self, document: Value) {
        *self.openapi.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(document);
    }
}

/// The HTTP response of a command with the route's success status (a replay is
/// answered with the same status as the first time, since the route decides it); a
/// replayed Idempotency-Key answer says so in the `Idempotent-Replayed: true` header.
pub fn command_response(status: StatusCode, reply: eventstore::CommandReply) -> Response {
    let mut response = (status, Json(reply.body)).into_response();
    if reply.replayed {
        response.headers_mut().insert("idempotent-replayed", http::HeaderValue::from_static("true"));
    }
    response
}
