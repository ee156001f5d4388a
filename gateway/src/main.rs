//! gateway binary: configuration, then [`gateway::run`] until SIGINT or SIGTERM.

use clap::Parser;
use gateway::{AppState, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    service_kit::telemetry::init(config.log.log_format);
    let addr = config.addr;
    let state = AppState::new(config)?;
    let shutdown = service_kit::shutdown::on_signals();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    gateway::run(listener, state, shutdown).await?;
    tracing::info!("gateway stopped");
    Ok(())
}
