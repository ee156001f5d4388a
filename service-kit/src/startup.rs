//! Start-up: connect to Postgres (waiting while it starts) and run the migrations.

use crate::config::DatabaseArgs;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("DATABASE_URL is not a valid Postgres URL")]
    BadUrl,
    #[error("the database did not accept connections within {0:?}: {1}")]
    Unreachable(Duration, String),
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// A pool to `DATABASE_URL`, retried until the database answers or the timeout passes.
pub async fn connect(args: &DatabaseArgs) -> Result<PgPool, StartupError> {
    let options =
        session_options(PgConnectOptions::from_str(args.database_url.expose()).map_err(|_| StartupError::BadUrl)?);
    let timeout = Duration::from_secs(args.database_connect_timeout_secs);
    let started = Instant::now();
    loop {
        let pool = PgPoolOptions::new()
            .max_connections(args.database_max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await;
        match pool {
            Ok(pool) => return Ok(pool),
            Err(e) if started.elapsed() < timeout => {
                tracing::info!(error = %e, "waiting for the database");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            // sqlx's connection errors do not contain the password
            Err(e) => return Err(StartupError::Unreachable(timeout, e.to_string())),
        }
    }
}

/// Session settings of every service connection.
///
/// `plan_cache_mode = force_custom_plan`: sqlx keeps prepared statements for the life
/// of a connection, and Postgres switches a prepared statement to a generic plan after
/// five executions. A generic plan made while `es.events` was small scans the table
/// sequentially, and keeps doing so when it holds millions of rows (measured: throughput
/// fell from ~4,500 to ~650 deposits/s within two minutes of a fresh start). Custom
/// plans cost a little planning per statement and always see the table's real size.
pub fn session_options(options: PgConnectOptions) -> PgConnectOptions {
    options.options([("plan_cache_mode", "force_custom_plan")])
}

/// Applies every migration not yet applied. Safe when several services start at once:
/// sqlx serializes runs with an advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), StartupError> {
    migrations::MIGRATOR.run(pool).await?;
    Ok(())
}

/// What a service's `main` does before building its state: logging, then the
/// database (waiting for it, then migrating).
pub async fn boot(args: &crate::config::ServiceArgs) -> anyhow::Result<PgPool> {
    crate::telemetry::init(args.log.log_format);
    let pool = connect(&args.database).await?;
    migrate(&pool).await?;
    Ok(pool)
}

/// Binds `addr` and serves `app` until SIGINT or SIGTERM, then drains requests in flight.
pub async fn serve_until_signal(service: &str, addr: std::net::SocketAddr, app: axum::Router) -> anyhow::Result<()> {
    serve_with(service, addr, app, crate::shutdown::on_signals(), None).await
}

/// Binds `addr` and serves `app` until `shutdown`; with a background task (a river
/// started with the same token), waits for it to end too.
pub async fn serve_with(
    service: &str,
    addr: std::net::SocketAddr,
    app: axum::Router,
    shutdown: tokio_util::sync::CancellationToken,
    background: Option<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "{service} listening");
    let served = crate::http::serve(listener, app, shutdown.clone()).await;
    shutdown.cancel();
    if let Some(task) = background {
        task.await?;
    }
    served?;
    tracing::info!("{service} stopped");
    Ok(())
}

/// The parts every command service builds over its pool: the aggregate's repository
/// (with the store's metrics), the token verifier and the HTTP kit.
pub struct CommandParts<A: eventstore::Aggregate> {
    pub repository: eventstore::Repository<A>,
    pub verifier: std::sync::Arc<crate::auth::JwtVerifier>,
    pub kit: crate::http::Kit,
}

impl<A: eventstore::Aggregate> CommandParts<A> {
    pub fn build(
        service: &'static str,
        args: &crate::config::ServiceArgs,
        commands: &crate::config::CommandArgs,
        pool: PgPool,
        openapi: serde_json::Value,
    ) -> anyhow::Result<Self> {
        let registry = prometheus::Registry::new();
        let metrics = eventstore::metrics::StoreMetrics::register(&registry)?;
        let store = eventstore::EventStore::new(pool.clone());
        Ok(CommandParts {
            repository: eventstore::Repository::new(store, commands.repository_config(), metrics),
            verifier: std::sync::Arc::new(crate::auth::JwtVerifier::from_args(&args.auth)?),
            kit: crate::http::Kit::new(service, pool, registry, openapi, &args.http)?,
        })
    }
}
