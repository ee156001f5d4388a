//! transfer-service: owns the `MoneyTransfer` aggregate and its HTTP command API.
//!
//! `main.rs` only parses [`Config`], connects and calls [`run`]; tests build an
//! [`AppState`] on their own database and drive [`router`] or [`run`] on port 0.
#![forbid(unsafe_code)]

pub mod http;
pub mod openapi;
pub mod saga;
pub mod tasks;

use axum::Router;
use axum::extract::FromRef;
use bank_domain::transfer::MoneyTransfer;
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
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// transfer-service's configuration (environment variables, see `.env.example`).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "transfer-service", about = "Money transfers between accounts")]
pub struct Config {
    /// Where to listen.
    #[arg(long, env = "TRANSFER_SERVICE_ADDR", default_value_t = Config::DEFAULT_ADDR)]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub commands: CommandArgs,
    #[command(flatten)]
    pub kinesis: KinesisArgs,
    #[command(flatten)]
    pub river: RiverArgs,
    /// Longest `wait_ms` a `GET /transfers/{id}` with `min_version` may ask for.
    #[arg(long, env = "TRANSFER_MAX_WAIT_MS", default_value_t = Config::new(ServiceArgs::default()).max_wait_ms)]
    pub max_wait_ms: u64,
    /// How often such a wait checks the store for appends by other instances (this
    /// instance's own appends end it at once).
    #[arg(long, env = "TRANSFER_WAIT_RECHECK_MS", default_value_t = Config::new(ServiceArgs::default()).wait_recheck_ms)]
    pub wait_recheck_ms: u64,
    /// A transfer neither completed nor failed this long after its creation counts as
    /// stuck (the `transfers_unsettled` gauge).
    #[arg(long, env = "TRANSFER_STUCK_AFTER_SECS", default_value_t = Config::new(ServiceArgs::default()).stuck_after_secs)]
    pub stuck_after_secs: u64,
    /// How often the gauge is refreshed.
    #[arg(long, env = "TRANSFER_STUCK_CHECK_MS", default_value_t = Config::new(ServiceArgs::default()).stuck_check_ms)]
    pub stuck_check_ms: u64,
}

impl Config {
    /// Where the service listens by default (its dev port).
    pub const DEFAULT_ADDR: SocketAddr =
        SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 8082));

    /// The defaults over `service`: tests and tools build a configuration as a value
    /// (the command line's defaults come from here too).
    pub fn new(service: ServiceArgs) -> Self {
        Config {
            addr: Self::DEFAULT_ADDR,
            service,
            commands: CommandArgs::default(),
            kinesis: KinesisArgs::default(),
            river: RiverArgs::default(),
            max_wait_ms: 10_000,
            wait_recheck_ms: 1_000,
            stuck_after_secs: 60,
            stuck_check_ms: 5_000,
        }
    }
}

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState {
    pub transfers: Repository<MoneyTransfer>,
    pub verifier: Arc<JwtVerifier>,
    pub max_amount: i64,
    pub kit: Kit,
    pub river_metrics: rapids::river::RiverMetrics,
    pub max_wait: Duration,
    pub wait_recheck: Duration,
    /// `transfers_unsettled`: transfers not settled `TRANSFER_STUCK_AFTER_SECS` after
    /// their creation, kept by [`start_unsettled_gauge`].
    pub unsettled: prometheus::IntGauge,
}

impl FromRef<AppState> for Arc<JwtVerifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

impl AppState {
    /// Builds the state over an already migrated pool.
    pub fn new(config: &Config, pool: PgPool, rapids: Option<Rapids>) -> anyhow::Result<Self> {
        let mut parts = CommandParts::<MoneyTransfer>::build(
            "transfer-service",
            &config.service,
            &config.commands,
            pool,
            openapi::document_json(),
        )?;
        if let Some(rapids) = &rapids {
            parts.kit = parts.kit.with_check("kinesis", rapids.readiness());
        }
        let river_metrics = rapids::river::RiverMetrics::register(&parts.kit.registry)?;
        let unsettled = prometheus::IntGauge::new(
            "transfers_unsettled",
            "Transfers neither completed nor failed TRANSFER_STUCK_AFTER_SECS after their creation (all instances)",
        )?;
        parts.kit.registry.register(Box::new(unsettled.clone()))?;
        Ok(AppState {
            transfers: parts.repository,
            verifier: parts.verifier,
            max_amount: config.commands.max_amount_minor,
            kit: parts.kit,
            river_metrics,
            max_wait: config.service.http.wait_budget(config.max_wait_ms),
            wait_recheck: Duration::from_millis(config.wait_recheck_ms.max(1)),
            unsettled,
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
    let steps = saga::SagaSteps::new(state.transfers.clone(), Some(tasks::Tasks { state: state.clone() }));
    config.river.spawn(saga::RIVER, saga::TOPICS, steps, &state.kit.pool, rapids, state.river_metrics.clone(), shutdown)
}

/// Starts the cleanup job of expired HTTP Idempotency-Key records unless it is off
/// (`IDEMPOTENCY_CLEANUP_SECS=0`); it runs until `shutdown`. The saga's step records stay.
pub fn start_idempotency_cleanup(
    config: &Config,
    state: &AppState,
    shutdown: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    service_kit::startup::start_idempotency_cleanup(&state.transfers, &config.commands.idempotency, shutdown)
}

/// Keeps the `transfers_unsettled` gauge until `shutdown`: every `TRANSFER_STUCK_CHECK_MS`
/// it counts the transfers neither completed nor failed `TRANSFER_STUCK_AFTER_SECS`
/// after their creation. It reads `views.transfers`, as the event bus's
/// `GET /ops/unsettled` (and so `bankctl stuck`) does, so the gauge and the list agree;
/// a views river that falls behind shows in its own lag gauge. Every instance reports
/// the same number (alert on the max, not the sum).
pub fn start_unsettled_gauge(
    config: &Config,
    state: &AppState,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let pool = state.kit.pool.clone();
    let gauge = state.unsettled.clone();
    let after = Duration::from_secs(config.stuck_after_secs);
    let mut ticks = tokio::time::interval(Duration::from_millis(config.stuck_check_ms.max(1)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = ticks.tick() => {}
            }
            match count_unsettled(&pool, after).await {
                Ok(count) => gauge.set(count),
                // the last value stays: a failed count says nothing about the transfers
                Err(error) => tracing::warn!(%error, "cannot count the unsettled transfers"),
            }
        }
    })
}

/// Transfers neither completed nor failed, created more than `after` ago.
pub async fn count_unsettled(pool: &PgPool, after: Duration) -> sqlx::Result<i64> {
    // the predicate of the partial index `transfers_unsettled` (migration 0009)
    sqlx::query_scalar(
        "select count(*) from views.transfers
         where state not in ('completed', 'failed') and created_at < now() - make_interval(secs => $1)",
    )
    .bind(after.as_secs_f64())
    .fetch_one(pool)
    .await
}

/// Starts what runs beside the HTTP server until `shutdown`: the river, the idempotency
/// cleanup and the `transfers_unsettled` gauge. The handle ends once every one of them has.
pub fn start_background(
    config: &Config,
    state: &AppState,
    rapids: Rapids,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let tasks = [
        start_river(config, state, rapids, shutdown.clone()),
        start_idempotency_cleanup(config, state, shutdown.clone()),
        Some(start_unsettled_gauge(config, state, shutdown)),
    ];
    service_kit::startup::join_background(tasks)
}
