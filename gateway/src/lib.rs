//! gateway: the front door. One origin for the whole API (`/api/...`, routed to the
//! service that owns each route), the banking web app at `/`, and a dev-only login.
//!
//! At the edge it authenticates (a bad or missing token never reaches a service; the
//! services still check it themselves), limits each subject's request rate (429 with
//! `Retry-After`), bounds request size and time (the layer stack of service-kit), and
//! passes the request and correlation ids on. A dead upstream is 503
//! `upstream_unavailable`, one that answers garbage 502 `bad_gateway`.
//!
//! * [`proxy`]: the routing table and the forwarding.
//! * [`openapi`]: one document for the whole API, assembled from the upstreams'.
#![forbid(unsafe_code)]

pub mod instances;
pub mod openapi;
pub mod proxy;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{FromRef, Request, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, post};
use proxy::Upstream;
use serde::{Deserialize, Serialize};
use service_kit::auth::{Caller, JwtVerifier, Role};
use service_kit::config::{AuthArgs, HttpArgs, LogArgs};
use service_kit::extract::ApiJson;
use service_kit::http::Kit;
use service_kit::limit::SubjectLimit;
use service_kit::{ApiError, ErrorCode};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The gateway's configuration (environment variables, see `.env.example`).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "gateway", about = "The API gateway and the banking web app")]
pub struct Config {
    /// Where to listen (the public address: the API and the web app).
    #[arg(long, env = "GATEWAY_ADDR", default_value_t = Config::DEFAULT_ADDR)]
    pub addr: SocketAddr,
    /// Where `/metrics`, `/ready` and `/health` are served, apart from the public address.
    #[arg(long, env = "GATEWAY_ADMIN_ADDR", default_value_t = Config::DEFAULT_ADMIN_ADDR)]
    pub admin_addr: SocketAddr,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub log: LogArgs,
    #[command(flatten)]
    pub app: service_kit::config::AppArgs,
    #[arg(long, env = "ACCOUNT_SERVICE_URL", default_value = "http://127.0.0.1:8081")]
    pub account_service_url: String,
    #[arg(long, env = "TRANSFER_SERVICE_URL", default_value = "http://127.0.0.1:8082")]
    pub transfer_service_url: String,
    #[arg(long, env = "QUERY_SERVICE_URL", default_value = "http://127.0.0.1:8083")]
    pub query_service_url: String,
    #[arg(long, env = "EVENT_BUS_URL", default_value = "http://127.0.0.1:8086")]
    pub event_bus_url: String,
    /// Several instances of account-service (comma-separated; replaces
    /// `ACCOUNT_SERVICE_URL`): requests go to the ready ones in turn.
    #[arg(long, env = "ACCOUNT_SERVICE_URLS", value_delimiter = ',')]
    pub account_service_urls: Vec<String>,
    /// Several instances of transfer-service (replaces `TRANSFER_SERVICE_URL`).
    #[arg(long, env = "TRANSFER_SERVICE_URLS", value_delimiter = ',')]
    pub transfer_service_urls: Vec<String>,
    /// Several instances of query-service (replaces `QUERY_SERVICE_URL`).
    #[arg(long, env = "QUERY_SERVICE_URLS", value_delimiter = ',')]
    pub query_service_urls: Vec<String>,
    /// Several instances of the event bus (replaces `EVENT_BUS_URL`).
    #[arg(long, env = "EVENT_BUS_URLS", value_delimiter = ',')]
    pub event_bus_urls: Vec<String>,
    /// How often each instance's `/ready` is asked.
    #[arg(long, env = "UPSTREAM_CHECK_MS", default_value_t = 1000)]
    pub upstream_check_ms: u64,
    /// `true` enables `POST /api/dev/token` (mint any token: development only; refused
    /// unless the gateway listens on a loopback address).
    #[arg(long, env = "DEV_LOGIN", default_value_t = false, action = clap::ArgAction::Set)]
    pub dev_login: bool,
    /// Requests a second each subject may make (sustained).
    #[arg(long, env = "RATE_LIMIT_PER_S", default_value_t = 50)]
    pub rate_limit_per_s: u32,
    /// Requests a subject may make at once above its rate.
    #[arg(long, env = "RATE_LIMIT_BURST", default_value_t = 100)]
    pub rate_limit_burst: u32,
    /// A PEM file of CA certificates to trust for `https://` upstreams, beside the
    /// system's roots.
    #[arg(long, env = "UPSTREAM_CA_FILE")]
    pub upstream_ca_file: Option<PathBuf>,
    /// The web app's files.
    #[arg(long, env = "GATEWAY_WEB_DIR", default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/web"))]
    pub web_dir: PathBuf,
}

impl Config {
    pub const DEFAULT_ADDR: SocketAddr =
        SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 8080));
    pub const DEFAULT_ADMIN_ADDR: SocketAddr =
        SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 9080));

    /// The instances of an upstream: its `*_URLS`, else its `*_URL`.
    fn urls(&self, upstream: Upstream) -> Vec<String> {
        let (many, one) = match upstream {
            Upstream::Accounts => (&self.account_service_urls, &self.account_service_url),
            Upstream::Transfers => (&self.transfer_service_urls, &self.transfer_service_url),
            Upstream::Queries => (&self.query_service_urls, &self.query_service_url),
            Upstream::Bus => (&self.event_bus_urls, &self.event_bus_url),
        };
        let many: Vec<String> = many.iter().map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect();
        if many.is_empty() { vec![one.clone()] } else { many }
    }
}

/// The instances of every upstream.
pub struct Upstreams([instances::Instances; 4]);

impl Upstreams {
    fn new(config: &Config) -> Self {
        Upstreams(Upstream::ALL.map(|u| instances::Instances::new(config.urls(u))))
    }

    pub fn of(&self, upstream: Upstream) -> &instances::Instances {
        &self.0[Upstream::ALL.iter().position(|u| *u == upstream).unwrap_or(0)]
    }
}

/// Everything a request needs.
#[derive(Clone)]
pub struct AppState {
    pub kit: Kit,
    pub config: Arc<Config>,
    pub verifier: Arc<JwtVerifier>,
    pub client: reqwest::Client,
    /// Each subject's rate of requests.
    pub limiter: Arc<SubjectLimit>,
    /// Each upstream's instances and which are ready.
    pub upstreams: Arc<Upstreams>,
}

impl FromRef<AppState> for Arc<JwtVerifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

impl AppState {
    pub fn new(config: Config) -> anyhow::Result<Self> {
        // the dev login mints any token: only where nobody else can reach it
        if config.dev_login && !config.addr.ip().is_loopback() {
            anyhow::bail!("DEV_LOGIN=true works only while GATEWAY_ADDR is a loopback address, not {}", config.addr);
        }
        if config.dev_login && config.app.app_env == service_kit::config::AppEnv::Production {
            anyhow::bail!("APP_ENV=production refuses DEV_LOGIN=true");
        }
        let registry = prometheus::Registry::new();
        let limited = prometheus::IntCounter::new("gateway_rate_limited_total", "Requests refused by the rate limit")?;
        registry.register(Box::new(limited.clone()))?;
        let kit = Kit::without_database("gateway", registry, openapi::own_document(), &config.http)?;
        let client = bank_client::http_builder(config.upstream_ca_file.as_deref())?
            .pool_idle_timeout(Duration::from_secs(30))
            .build()?;
        let mut kit = kit;
        let upstreams = Arc::new(Upstreams::new(&config));
        // ready when each upstream has a ready instance (as last checked)
        for upstream in Upstream::ALL {
            let upstreams = upstreams.clone();
            kit = kit.with_check(upstream.name(), move || {
                let ready = upstreams.of(upstream).any_ready();
                async move { ready }
            });
        }
        let limiter = SubjectLimit::new(config.rate_limit_per_s, config.rate_limit_burst, limited);
        Ok(AppState {
            kit,
            verifier: Arc::new(JwtVerifier::from_args(&config.auth)?),
            config: Arc::new(config),
            client,
            limiter: Arc::new(limiter),
            upstreams,
        })
    }
}

/// `POST /api/dev/token`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevLogin {
    /// The subject (a customer's or staff member's name).
    #[schema(pattern = "^[A-Za-z0-9_.@-]{1,64}$")]
    pub sub: String,
    pub role: DevRole,
}

/// The role of a dev token.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DevRole {
    Customer,
    Teller,
    Admin,
    /// A payment rail (the web app's "Receive a payment" posts through one).
    Service,
}

/// A dev token.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DevToken {
    pub token: String,
    pub sub: String,
    pub role: DevRole,
    /// Seconds it is valid for.
    pub expires_in: i64,
}

/// Mints a token for anyone, when `DEV_LOGIN=true` (else there is no such route: 404).
#[utoipa::path(post, path = "/api/dev/token", tag = "dev", security(),
    request_body = DevLogin,
    responses((status = 200, description = "a token, valid 12 hours", body = DevToken)))]
async fn dev_token(State(state): State<AppState>, body: ApiJson<DevLogin>) -> Result<axum::Json<DevToken>, ApiError> {
    if !state.config.dev_login {
        return Err(ApiError::new(ErrorCode::NotFound, "no such route"));
    }
    let DevLogin { sub, role } = body.value;
    let valid = (1..=64).contains(&sub.len()) && sub.chars().all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c));
    if !valid {
        return Err(ApiError::new(ErrorCode::InvalidBody, "sub must be 1 to 64 characters of [A-Za-z0-9_.@-]"));
    }
    let secret = state.config.auth.jwt_secret.as_ref().ok_or_else(|| {
        ApiError::new(ErrorCode::NotFound, "dev login needs JWT_SECRET (HS256); this gateway has none")
    })?;
    let as_role = match role {
        DevRole::Customer => Role::Customer,
        DevRole::Teller => Role::Teller,
        DevRole::Admin => Role::Admin,
        DevRole::Service => Role::Service,
    };
    let ttl = 12 * 3600;
    let token = service_kit::auth::issue_hs256(secret.expose(), &sub, as_role, ttl).map_err(ApiError::internal)?;
    Ok(axum::Json(DevToken { token, sub, role, expires_in: ttl }))
}

/// Every other `/api/...` request: authenticate, limit, route, forward.
async fn api(State(state): State<AppState>, caller: Result<Caller, ApiError>, request: Request) -> Response {
    match forward(state, caller, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

async fn forward(state: AppState, caller: Result<Caller, ApiError>, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().strip_prefix("/api").unwrap_or("").to_owned();
    let query = parts.uri.query().unwrap_or("").to_owned();
    let (upstream, path) = match proxy::route(&parts.method, &path, &query) {
        proxy::Routed::To(upstream, path) => (upstream, path),
        proxy::Routed::NotAllowed(methods) => {
            let allow = HeaderValue::from_str(&methods.join(", ")).map_err(ApiError::internal)?;
            return Err(ApiError::new(ErrorCode::MethodNotAllowed, "this path does not take that method")
                .with_header(http::header::ALLOW, allow));
        }
        proxy::Routed::NotFound => return Err(ApiError::new(ErrorCode::NotFound, "no such route")),
    };
    // authenticated at the edge: a bad token never reaches a service
    let caller = caller?;
    state.limiter.check(&caller.subject)?;
    let body: Bytes = axum::body::to_bytes(body, state.kit.body_limit)
        .await
        .map_err(|_| ApiError::new(ErrorCode::PayloadTooLarge, "the body is too large"))?;
    let path_and_query = if query.is_empty() { path } else { format!("{path}?{query}") };
    let outgoing = proxy::Outgoing {
        method: parts.method.clone(),
        path_and_query: &path_and_query,
        headers: &parts.headers,
        body,
    };
    // a waiting read ends upstream first: the upstream caps its own wait a margin below
    // its request timeout, and this forward allows the whole timeout
    let timeout = state.kit.request_timeout;
    // another instance is tried when the request never reached this one (a refused
    // connection), and for a request safe to repeat also when this one failed or
    // answered 503: a read, or a command of account- or transfer-service with an
    // Idempotency-Key (they replay the first answer; the bus keys posts by event_id)
    let keyed =
        matches!(upstream, Upstream::Accounts | Upstream::Transfers) && parts.headers.contains_key("idempotency-key");
    let repeatable = parts.method == http::Method::GET || keyed;
    let instances = state.upstreams.of(upstream);
    let order = instances.order();
    let mut last = None;
    for (n, i) in order.iter().copied().enumerate() {
        let more = n + 1 < order.len();
        match proxy::forward(&state.client, upstream, instances.url(i), outgoing.clone(), timeout).await {
            Ok((status, _, _)) if status == http::StatusCode::SERVICE_UNAVAILABLE && repeatable && more => {
                instances.set_ready(i, false);
            }
            Ok((status, returned, body)) => {
                let mut response = (status, body).into_response();
                response.headers_mut().extend(returned);
                return Ok(response);
            }
            Err(failed) if (failed.not_sent || repeatable) && more => {
                if failed.not_sent {
                    instances.set_ready(i, false);
                }
                last = Some(failed.error);
            }
            Err(failed) => return Err(failed.error),
        }
    }
    Err(last.unwrap_or_else(|| {
        ApiError::new(ErrorCode::UpstreamUnavailable, format!("{} is not reachable; retry", upstream.name()))
    }))
}

pub fn router(state: AppState) -> Router {
    let kit = state.kit.clone();
    let web = state.config.web_dir.clone();
    let routes = Router::new()
        .route("/api/dev/token", post(dev_token))
        .route("/api/{*rest}", any(api))
        .with_state(state)
        .route_service("/", tower_http::services::ServeFile::new(web.join("index.html")))
        .nest_service("/app", tower_http::services::ServeDir::new(web));
    service_kit::http::public_app(with_browser_headers(routes), kit)
}

/// The operational routes off the public address: `/metrics`, `/ready`, `/health`.
pub fn admin_router(state: &AppState) -> Router {
    service_kit::http::admin(state.kit.clone())
}

/// What every answer tells a browser: load nothing but this origin's own files (no
/// inline script or style, no framing by another site), do not guess content types,
/// send no referrer elsewhere.
fn with_browser_headers(routes: Router) -> Router {
    use http::header::{CONTENT_SECURITY_POLICY, REFERRER_POLICY, X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS};
    use tower_http::set_header::SetResponseHeaderLayer;
    let set = |name, value| SetResponseHeaderLayer::overriding(name, HeaderValue::from_static(value));
    routes
        .layer(set(
            CONTENT_SECURITY_POLICY,
            "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ))
        .layer(set(X_FRAME_OPTIONS, "DENY"))
        .layer(set(X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .layer(set(REFERRER_POLICY, "no-referrer"))
}

/// Keeps the served OpenAPI document assembled from the upstreams' (retried until
/// each answered), the rate limiter's memory bounded, and each upstream instance's
/// readiness checked.
pub fn start_background(state: &AppState, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
    let checks = {
        let (state, shutdown) = (state.clone(), shutdown.clone());
        let every = Duration::from_millis(state.config.upstream_check_ms.max(50));
        tokio::spawn(async move {
            loop {
                let each = Upstream::ALL.map(|u| state.upstreams.of(u).check(&state.client));
                futures::future::join_all(each).await;
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
            }
        })
    };
    let state = state.clone();
    tokio::spawn(async move {
        let _checks = AbortOnDrop(checks);
        let mut complete = false;
        loop {
            if !complete {
                // from the first instance of each upstream (they serve the same document)
                let (document, all) = openapi::assemble(&state.client, |u| state.config.urls(u)[0].clone()).await;
                state.kit.set_openapi(document);
                complete = all;
            }
            state.limiter.forget_idle();
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(if complete { 60 } else { 2 })) => {}
            }
        }
    })
}

/// Serves the public address on `listener` and the operational routes on `admin`
/// until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    admin: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let background = start_background(&state, shutdown.clone());
    let admin = tokio::spawn(service_kit::http::serve(admin, admin_router(&state), shutdown.clone()));
    let served = service_kit::http::serve(listener, router(state), shutdown).await;
    background.abort();
    admin.await.map_err(std::io::Error::other)??;
    served
}

/// Aborts a task when dropped (the background's readiness checks end with it).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
