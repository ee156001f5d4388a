//! transfer-service: owns the `MoneyTransfer` aggregate and its HTTP command API.
//!
//! `main.rs` only parses [`Config`], connects and calls [`run`]; tests build an
//! [`AppState`] on their own database and drive [`router`] or [`run`] on port 0.
#![forbid(unsafe_code)]

pub mod domain;
pub mod http;
pub mod openapi;

use axum::Router;
use axum::extract::FromRef;
use domain::MoneyTransfer;
use eventstore::Repository;
use eventstore::rapids::Rapids;
use service_kit::auth::JwtVerifier;
use service_kit::config::{CommandArgs, ServiceArgs};
use service_kit::http::Kit;
use service_kit::startup::CommandParts;
use sqlx::PgPool;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// transfer-service's configuration (environment variables, see `.env.example`).
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "transfer-service", about = "Money transfers between accounts")]
pub struct Config {
    /// Where to listen.
    #[arg(long, env = "TRANSFER_SERVICE_ADDR", default_value = "127.0.0.1:8082")]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub commands: CommandArgs,
}

/// Everything a request handler needs.
#[derive(Clone)]
pub struct AppState {
    pub transfers: Repository<MoneyTransfer>,
    pub verifier: Arc<JwtVerifier>,
    pub max_amount: i64,
    pub kit: Kit,
}

impl FromRef<AppState> for Arc<JwtVerifier> {
    fn from_ref(state: &AppState) -> Self {
        state.verifier.clone()
    }
}

impl AppState {
    /// Builds the state over an already migrated pool.
    pub fn new(config: &Config, pool: PgPool, rapids: Option<Rapids>) -> anyhow::Result<Self> {
        let parts = CommandParts::<MoneyTransfer>::build(
            "transfer-service",
            &config.service,
            &config.commands,
            pool,
            rapids,
            openapi::document_json(),
        )?;
        Ok(AppState {
            transfers: parts.repository,
            verifier: parts.verifier,
            max_amount: config.commands.max_amount_minor,
            kit: parts.kit,
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
