//! query-service: the read API over `views.*` (kept by view-updater), with
//! version-aware reads: `min_version` and `wait_ms` on every route.
//!
//! * [`waiters`]: waiting for a version on one shared LISTEN connection.
//! * [`cache`]: the current account and transfer rows in memory, kept by the same
//!   connection's announcements.
//! * [`http`]: the routes; [`search`]: `GET /search`; [`statements`]: the monthly
//!   statements in the archive's bucket.
#![forbid(unsafe_code)]

pub mod cache;
pub mod http;
pub mod openapi;
pub mod search;
pub mod statements;
pub mod waiters;

use axum::Router;
use axum::extract::FromRef;
use service_kit::auth::JwtVerifier;
use service_kit::config::ServiceArgs;
use service_kit::http::Kit;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "query-service", about = "Reads accounts and transfers from the views, version-aware")]
pub struct Config {
    /// Where to listen.
    #[arg(long, env = "QUERY_SERVICE_ADDR", default_value_t = Config::DEFAULT_ADDR)]
    pub addr: SocketAddr,
    /// The longest `wait_ms` honoured; longer waits are cut to this.
    #[arg(long, env = "QUERY_MAX_WAIT_MS", default_value_t = Config::new(ServiceArgs::default()).max_wait_ms)]
    pub max_wait_ms: u64,
    /// How many account and transfer rows query-service keeps in memory (least
    /// recently used out); 0: none, every read goes to the database.
    #[arg(long, env = "QUERY_CACHE_SIZE", default_value_t = Config::new(ServiceArgs::default()).cache_size)]
    pub cache_size: usize,
    #[command(flatten)]
    pub service: ServiceArgs,
    /// The archive's bucket, where the statements are.
    #[command(flatten)]
    pub s3: pond::s3::S3Args,
}

impl Config {
    /// Where the service listens by default (its dev port).
    pub const DEFAULT_ADDR: SocketAddr =
        SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 8083));

    /// The defaults over `service`: tests and tools build a configuration as a value
    /// (the command line's defaults come from here too).
    pub fn new(service: ServiceArgs) -> Self {
        Config {
            addr: Self::DEFAULT_ADDR,
            service,
            max_wait_ms: 10_000,
            cache_size: 100_000,
            s3: pond::s3::S3Args::default(),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub kit: Kit,
    pub verifier: Arc<JwtVerifier>,
    pub waiters: Arc<waiters::Waiters>,
    pub max_wait: Duration,
    s3: pond::s3::S3Args,
    /// Connected on first use (loading the SDK's configuration is asynchronous).
    bucket: Arc<tokio::sync::OnceCell<pond::s3::Bucket>>,
}

impl FromRef<AppState> for Arc<JwtVerifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

impl AppState {
    /// The state over a migrated pool. Call [`AppState::listen`] (or [`run`]) so that
    /// waits end when the views advance.
    pub fn new(config: &Config, pool: PgPool) -> anyhow::Result<Self> {
        let registry = prometheus::Registry::new();
        let cache = cache::ViewCache::new(config.cache_size, cache::CacheMetrics::register(&registry)?);
        let waiters = Arc::new(waiters::Waiters::with_cache(cache));
        let listening = waiters.clone();
        let kit = Kit::new("query-service", pool, registry, openapi::document_json(), &config.service.http)?
            // the LISTEN connection: without it a waiting read could only time out
            .with_check("listen", move || std::future::ready(listening.is_listening()));
        Ok(AppState {
            kit,
            verifier: Arc::new(JwtVerifier::from_args(&config.service.auth)?),
            waiters,
            max_wait: config.service.http.wait_budget(config.max_wait_ms),
            s3: config.s3.clone(),
            bucket: Arc::default(),
        })
    }

    /// The archive's bucket (the statements).
    pub async fn bucket(&self) -> &pond::s3::Bucket {
        self.bucket.get_or_init(|| pond::s3::Bucket::connect(&self.s3)).await
    }

    /// The rows served from memory (its counters are on the service's registry).
    pub fn cache(&self) -> &cache::ViewCache {
        &self.waiters.cache
    }

    /// Starts the LISTEN task that wakes waiting reads.
    pub fn listen(&self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.waiters.clone().listen(self.kit.pool.clone(), shutdown))
    }
}

pub fn router(state: AppState) -> Router {
    let kit = state.kit.clone();
    service_kit::http::app(http::routes().with_state(state), kit)
}

/// Listens for view updates and serves until `shutdown`.
pub async fn run(listener: TcpListener, state: AppState, shutdown: CancellationToken) -> std::io::Result<()> {
    let listening = state.listen(shutdown.clone());
    let served = service_kit::http::serve(listener, router(state), shutdown.clone()).await;
    shutdown.cancel();
    let _ = listening.await;
    served
}
