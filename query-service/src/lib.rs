//! query-service: Read API over views.* with version-aware waits (built in a later issue; for now it runs its migrations and the operational routes).
//!
//! What exists today: configuration, start-up (connect, migrate) and the operational
//! routes every service has (`/health`, `/ready`, `/metrics`, `/openapi.json`), so the
//! run command already starts it on its port. Its own work arrives with its issue.
#![forbid(unsafe_code)]

use axum::Router;
use eventstore::rapids::Rapids;
use service_kit::config::ServiceArgs;
use service_kit::http::Kit;
use sqlx::PgPool;
use std::net::SocketAddr;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "query-service")]
pub struct Config {
    /// Where to listen.
    #[arg(long, env = "QUERY_SERVICE_ADDR", default_value = "127.0.0.1:8083")]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub service: ServiceArgs,
}

#[derive(Clone)]
pub struct AppState {
    pub kit: Kit,
}

impl AppState {
    pub fn new(config: &Config, pool: PgPool, rapids: Option<Rapids>) -> anyhow::Result<Self> {
        let openapi = service_kit::openapi::document(
            "query-service",
            "Read API over views.* with version-aware waits (built in a later issue; for now it runs its migrations and the operational routes).",
            serde_json_empty(),
            serde_json_empty(),
        );
        Ok(AppState {
            kit: Kit::new("query-service", pool, rapids, prometheus::Registry::new(), openapi, &config.service.http)?,
        })
    }
}

fn serde_json_empty() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

pub fn router(state: AppState) -> Router {
    service_kit::http::app(Router::new(), state.kit)
}

pub async fn run(listener: TcpListener, state: AppState, shutdown: CancellationToken) -> std::io::Result<()> {
    service_kit::http::serve(listener, router(state), shutdown).await
}
