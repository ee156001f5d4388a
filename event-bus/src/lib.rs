//! event-bus: any service, in any language, posts events here; they are stored in
//! the event store and played to the rapids by the tailer (transaction-log tailing).
//! It is also the rapids' control plane: advertised topics, river subscriptions
//! changed at runtime, and generic rivers read over HTTP like a queue.
//!
//! * [`names`]: event types, topics, rivers, patterns (pure).
//! * [`events`]: `POST /events` and `GET /events`.
//! * [`registry`]: topics, rivers and their subscriptions in Postgres.
//! * [`queue`]: generic rivers: their handler, receive and ack.
//! * [`ops`]: what operators see: rivers, the tailer, parked events, unsettled transfers.
//! * [`http`]: the routes.
#![forbid(unsafe_code)]

pub mod events;
pub mod http;
pub mod names;
pub mod openapi;
pub mod ops;
pub mod queue;
pub mod registry;

use axum::Router;
use axum::extract::FromRef;
use eventstore::EventStore;
use rapids::Rapids;
use rapids::config::{KinesisArgs, RiverArgs};
use service_kit::auth::JwtVerifier;
use service_kit::config::ServiceArgs;
use service_kit::http::Kit;
use service_kit::limit::SubjectLimit;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// event-bus's configuration (environment variables, see `.env.example`).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "event-bus", about = "The event bus and the rapids' control plane")]
pub struct Config {
    /// Where to listen.
    #[arg(long, env = "EVENT_BUS_ADDR", default_value_t = Config::DEFAULT_ADDR)]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub kinesis: KinesisArgs,
    #[command(flatten)]
    pub river: RiverArgs,
    /// Largest body of a posted event (413 `payload_too_large` above it).
    #[arg(long, env = "BUS_MAX_EVENT_BYTES", default_value_t = Config::new(ServiceArgs::default()).max_event_bytes)]
    pub max_event_bytes: usize,
    /// Largest data and tags of a customer's event (413 `payload_too_large` above it).
    #[arg(long, env = "BUS_CUSTOMER_MAX_EVENT_BYTES", default_value_t = Config::new(ServiceArgs::default()).customer_max_event_bytes)]
    pub customer_max_event_bytes: usize,
    /// Events a second each token subject may post (sustained; 429 `rate_limited` above it).
    #[arg(long, env = "BUS_POSTS_PER_S", default_value_t = Config::new(ServiceArgs::default()).posts_per_s)]
    pub posts_per_s: u32,
    /// Events a subject may post at once above its rate.
    #[arg(long, env = "BUS_POSTS_BURST", default_value_t = Config::new(ServiceArgs::default()).posts_burst)]
    pub posts_burst: u32,
    /// Longest `wait_ms` of a receive.
    #[arg(long, env = "BUS_MAX_WAIT_MS", default_value_t = Config::new(ServiceArgs::default()).max_wait_ms)]
    pub max_wait_ms: u64,
    /// How often the bus looks for new generic rivers to run.
    #[arg(long, env = "BUS_RIVER_SYNC_MS", default_value_t = Config::new(ServiceArgs::default()).river_sync_ms)]
    pub river_sync_ms: u64,
}

impl Config {
    /// Where the service listens by default (its dev port).
    pub const DEFAULT_ADDR: SocketAddr =
        SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 8086));

    /// The defaults over `service`.
    pub fn new(service: ServiceArgs) -> Self {
        Config {
            addr: Self::DEFAULT_ADDR,
            service,
            kinesis: KinesisArgs::default(),
            river: RiverArgs::default(),
            max_event_bytes: 256 * 1024,
            customer_max_event_bytes: 16 * 1024,
            posts_per_s: 50,
            posts_burst: 100,
            max_wait_ms: 20_000,
            river_sync_ms: 1_000,
        }
    }
}

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState {
    pub kit: Kit,
    pub store: EventStore,
    pub verifier: Arc<JwtVerifier>,
    pub arrivals: Arc<queue::Arrivals>,
    pub max_wait: Duration,
    pub river_metrics: rapids::river::RiverMetrics,
    /// Each subject's rate of posts.
    pub post_limit: Arc<SubjectLimit>,
    pub customer_max_event_bytes: usize,
}

impl FromRef<AppState> for Arc<JwtVerifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

impl AppState {
    /// The state over a migrated pool.
    pub fn new(config: &Config, pool: PgPool, rapids: Option<Rapids>) -> anyhow::Result<Self> {
        let http =
            service_kit::config::HttpArgs { body_limit_bytes: config.max_event_bytes, ..config.service.http.clone() };
        let registry = prometheus::Registry::new();
        let river_metrics = rapids::river::RiverMetrics::register(&registry)?;
        let limited = prometheus::IntCounter::new("bus_posts_limited_total", "Posts refused by the rate limit")?;
        registry.register(Box::new(limited.clone()))?;
        let mut kit = Kit::new("event-bus", pool.clone(), registry, openapi::document_json(), &http)?;
        if let Some(rapids) = &rapids {
            kit = kit.with_check("kinesis", rapids.readiness());
        }
        Ok(AppState {
            kit,
            store: EventStore::new(pool),
            verifier: Arc::new(JwtVerifier::from_args(&config.service.auth)?),
            arrivals: Arc::new(queue::Arrivals::default()),
            max_wait: config.service.http.wait_budget(config.max_wait_ms),
            river_metrics,
            post_limit: Arc::new(SubjectLimit::new(config.posts_per_s, config.posts_burst, limited)),
            customer_max_event_bytes: config.customer_max_event_bytes,
        })
    }
}

pub fn router(state: AppState) -> Router {
    let kit = state.kit.clone();
    service_kit::http::app(http::routes().with_state(state), kit)
}

/// Starts what runs beside the routes until `shutdown`: the listener that wakes
/// receives, the rate limit's forgetting, and the generic rivers (unless rivers are
/// disabled).
pub fn start_background(
    config: &Config,
    state: &AppState,
    rapids: Rapids,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let listening = tokio::spawn(state.arrivals.clone().listen(state.kit.pool.clone(), shutdown.clone()));
    let (limit, stop) = (state.post_limit.clone(), shutdown.clone());
    tokio::spawn(async move {
        while tokio::time::timeout(Duration::from_secs(60), stop.cancelled()).await.is_err() {
            limit.forget_idle();
        }
    });
    let rivers = config.river.river_enabled.then(|| {
        tokio::spawn(queue::run_generic_rivers(
            state.kit.pool.clone(),
            rapids,
            config.river.clone(),
            state.river_metrics.clone(),
            Duration::from_millis(config.river_sync_ms.max(1)),
            shutdown,
        ))
    });
    tokio::spawn(async move {
        let _ = listening.await;
        if let Some(rivers) = rivers {
            let _ = rivers.await;
        }
    })
}

/// Serves until `shutdown` is cancelled.
pub async fn run(listener: TcpListener, state: AppState, shutdown: CancellationToken) -> std::io::Result<()> {
    service_kit::http::serve(listener, router(state), shutdown).await
}
