//! account-service: owns the `Account` aggregate and its HTTP command API.
//!
//! `main.rs` only parses [`Config`], connects and calls [`run`]; tests build an
//! [`AppState`] on their own database and drive [`router`] or [`run`] on port 0.
#![forbid(unsafe_code)]

pub mod history;
pub mod http;
pub mod openapi;
pub mod payments;
pub mod saga;

use axum::Router;
use axum::extract::FromRef;
use bank_domain::account::Account;
use eventstore::Repository;
use rapids::Rapids;
use rapids::config::{KinesisArgs, RiverArgs};
use service_kit::auth::JwtVerifier;
use service_kit::config::{CommandArgs, ServiceArgs};
use service_kit::http::Kit;
use service_kit::startup::CommandParts;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// account-service's configuration (environment variables, see `.env.example`).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "account-service", about = "Accounts: open, cash in and out, payments, close")]
pub struct Config {
    /// Where to listen.
    #[arg(long, env = "ACCOUNT_SERVICE_ADDR", default_value_t = Config::DEFAULT_ADDR)]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub commands: CommandArgs,
    #[command(flatten)]
    pub kinesis: KinesisArgs,
    #[command(flatten)]
    pub river: RiverArgs,
}

impl Config {
    /// Where the service listens by default (its dev port).
    pub const DEFAULT_ADDR: SocketAddr =
        SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 8081));

    /// The defaults over `service`: tests and tools build a configuration as a value
    /// (the command line's defaults come from here too).
    pub fn new(service: ServiceArgs) -> Self {
        Config {
            addr: Self::DEFAULT_ADDR,
            service,
            commands: CommandArgs::default(),
            kinesis: KinesisArgs::default(),
            river: RiverArgs::default(),
        }
    }
}

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState {
    pub accounts: Repository<Account>,
    pub verifier: Arc<JwtVerifier>,
    pub max_amount: i64,
    pub kit: Kit,
    pub river_metrics: rapids::river::RiverMetrics,
    /// Rows of the event store read per read of the past (`read`: `as_of` for
    /// `?as_of=`/`?at_version=`, `transfers` for `/accounts/{id}/transfers`).
    pub past_read_rows: prometheus::HistogramVec,
}

impl FromRef<AppState> for Arc<JwtVerifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

impl AppState {
    /// Builds the state over an already migrated pool.
    pub fn new(config: &Config, pool: PgPool, rapids: Option<Rapids>) -> anyhow::Result<Self> {
        let mut parts = CommandParts::<Account>::build(
            "account-service",
            &config.service,
            &config.commands,
            pool,
            openapi::document_json(),
        )?;
        if let Some(rapids) = &rapids {
            parts.kit = parts.kit.with_check("kinesis", rapids.readiness());
        }
        let river_metrics = rapids::river::RiverMetrics::register(&parts.kit.registry)?;
        let past_read_rows = prometheus::HistogramVec::new(
            prometheus::HistogramOpts::new(
                "account_past_read_rows",
                "Rows of the event store read per read of the past (snapshot and events)",
            )
            .buckets(vec![1.0, 10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 10_000.0, 100_000.0]),
            &["read"],
        )?;
        parts.kit.registry.register(Box::new(past_read_rows.clone()))?;
        Ok(AppState {
            accounts: parts.repository,
            verifier: parts.verifier,
            max_amount: config.commands.max_amount_minor,
            kit: parts.kit,
            river_metrics,
            past_read_rows,
        })
    }
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let kit = state.kit.clone();
    service_kit::http::app(http::routes().with_state(state), kit)
}

/// Serves until `shutdown` is cancelled.
pub async fn run(listener: TcpListener, state: AppState, shutdown: CancellationToken) -> std::io::Result<()> {
    service_kit::http::serve(listener, router(state), shutdown).await
}

/// Starts the service's river (its part of the transfer saga) unless it is disabled;
/// it runs until `shutdown` and then gives its shard leases up.
pub fn start_river(
    config: &Config,
    state: &AppState,
    rapids: Rapids,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let payments = payments::Payments {
        accounts: state.accounts.clone(),
        pool: state.kit.pool.clone(),
        max_amount: state.max_amount,
    };
    let steps = saga::SagaSteps::new(state.accounts.clone(), payments);
    config.river.spawn(saga::RIVER, saga::TOPICS, steps, &state.kit.pool, rapids, state.river_metrics.clone(), shutdown)
}

/// Starts the cleanup job of expired HTTP Idempotency-Key records unless it is off
/// (`IDEMPOTENCY_CLEANUP_SECS=0`); it runs until `shutdown`. The saga's step records stay.
pub fn start_idempotency_cleanup(
    config: &Config,
    state: &AppState,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    service_kit::startup::start_idempotency_cleanup(&state.accounts, &config.commands.idempotency, shutdown)
}

/// Starts what runs beside the HTTP server until `shutdown`: the river and the
/// idempotency cleanup. The handle ends once every one of them has.
pub fn start_background(
    config: &Config,
    state: &AppState,
    rapids: Rapids,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let tasks =
        [start_river(config, state, rapids, shutdown.clone()), start_idempotency_cleanup(config, state, shutdown)];
    service_kit::startup::join_background(tasks)
}
