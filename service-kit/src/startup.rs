//! Start-up: connect to Postgres (waiting while it starts) and run the migrations.

use crate::config::DatabaseArgs;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
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
    let options = PgConnectOptions::from_str(args.database_url.expose())
        .map_err(|_| StartupError::BadUrl)?;
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

/// Applies every migration not yet applied. Safe when several services start at once:
/// sqlx serializes runs with an advisory lock.
pub async fn migrate(pool: &PgPool) -> Result<(), StartupError> {
    migrations::MIGRATOR.run(pool).await?;
    Ok(())
}
