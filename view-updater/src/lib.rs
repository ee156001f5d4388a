//! view-updater: keeps the read models in `views.*` from the rapids, and rebuilds them
//! from the event store.
//!
//! * [`projection`]: the pure projections (account, its transactions, transfer).
//! * [`store`]: applying a stream's events to the view tables (version + 1 only,
//!   duplicates skipped, gaps filled from the store) and the river `views`'s handler.
//! * [`rebuild`]: full rebuild with a schema swap, `--verify`, one account.
#![forbid(unsafe_code)]

pub mod projection;
pub mod rebuild;
pub mod store;

use axum::Router;
use rapids::Rapids;
use rapids::config::{KinesisArgs, RiverArgs};
use rapids::river::RiverMetrics;
use service_kit::config::ServiceArgs;
use service_kit::http::Kit;
use sqlx::PgPool;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// The river's name.
pub const RIVER: &str = "views";

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "view-updater", about = "Keeps views.* from the rapids; rebuilds them from the event store")]
pub struct Config {
    /// Where to listen.
    #[arg(long, env = "VIEW_UPDATER_ADDR", default_value_t = Config::DEFAULT_ADDR)]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub kinesis: KinesisArgs,
    #[command(flatten)]
    pub river: RiverArgs,
    /// How often the reconciliation checks the books (crate `ledger`), in ms; 0: never.
    #[arg(long, env = "RECONCILE_INTERVAL_MS", default_value_t = 2000)]
    pub reconcile_interval_ms: u64,
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Config {
    /// Where the service listens by default (its dev port).
    pub const DEFAULT_ADDR: SocketAddr =
        SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 8084));

    /// The defaults over `service`: tests and tools build a configuration as a value
    /// (the command line's defaults come from here too).
    pub fn new(service: ServiceArgs) -> Self {
        Config {
            addr: Self::DEFAULT_ADDR,
            service,
            kinesis: KinesisArgs::default(),
            river: RiverArgs::default(),
            reconcile_interval_ms: 2000,
            command: None,
        }
    }
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Rebuild the views from the event store (the live views keep serving meanwhile).
    Rebuild {
        /// Build, then compare with the live views instead of swapping; exit 1 on a difference.
        #[arg(long)]
        verify: bool,
        /// Rebuild only this account's view and transactions.
        #[arg(long, conflicts_with = "verify")]
        account: Option<Uuid>,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
}

#[derive(Clone)]
pub struct AppState {
    pub kit: Kit,
    pub river_metrics: RiverMetrics,
    pub ledger_metrics: ledger::Metrics,
}

impl AppState {
    pub fn new(config: &Config, pool: PgPool, rapids: Option<Rapids>) -> anyhow::Result<Self> {
        let openapi = service_kit::openapi::operational_only(
            "view-updater",
            "Keeps views.* from the rapids (river `views`); operational routes only.",
        );
        let registry = prometheus::Registry::new();
        let river_metrics = RiverMetrics::register(&registry)?;
        let ledger_metrics = ledger::Metrics::register(&registry)?;
        let mut kit = Kit::new("view-updater", pool, registry, openapi, &config.service.http)?;
        if let Some(rapids) = &rapids {
            kit = kit.with_check("kinesis", rapids.readiness());
        }
        Ok(AppState { kit, river_metrics, ledger_metrics })
    }
}

pub fn router(state: AppState) -> Router {
    service_kit::http::app(Router::new(), state.kit)
}

/// Starts the river `views` unless it is disabled.
pub fn start_river(
    config: &Config,
    state: &AppState,
    rapids: Rapids,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let topics = &["account.*", "transfer.*"];
    let metrics = state.river_metrics.clone();
    config.river.spawn(RIVER, topics, store::ViewsHandler, &state.kit.pool, rapids, metrics, shutdown)
}

/// Starts the reconciliation (every `RECONCILE_INTERVAL_MS`) unless it is off.
pub fn start_reconciliation(
    config: &Config,
    state: &AppState,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let interval = std::time::Duration::from_millis(config.reconcile_interval_ms);
    (!interval.is_zero())
        .then(|| tokio::spawn(ledger::run(state.kit.pool.clone(), interval, state.ledger_metrics.clone(), shutdown)))
}

/// Starts what runs beside the HTTP server until `shutdown`: the river and the reconciliation.
pub fn start_background(
    config: &Config,
    state: &AppState,
    rapids: Rapids,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let tasks = [start_river(config, state, rapids, shutdown.clone()), start_reconciliation(config, state, shutdown)];
    service_kit::startup::join_background(tasks)
}

pub async fn run(listener: TcpListener, state: AppState, shutdown: CancellationToken) -> std::io::Result<()> {
    service_kit::http::serve(listener, router(state), shutdown).await
}
