//! gateway binary: configuration, then [`gateway::run`] until SIGINT or SIGTERM.

use clap::Parser;
use gateway::{AppState, Config};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    service_kit::telemetry::init("gateway", config.log.log_format, config.log.otel_exporter_otlp_endpoint.as_deref());
    let (addr, admin_addr) = (config.addr, config.admin_addr);
    let state = AppState::new(config)?;
    let shutdown = service_kit::shutdown::on_signals();
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let admin = tokio::net::TcpListener::bind(admin_addr).await?;
    tracing::info!(addr = %listener.local_addr()?, admin = %admin.local_addr()?, "gateway listening");
    let ran = gateway::run(listener, admin, state, shutdown).await;
    service_kit::telemetry::shutdown().await;
    ran?;
    tracing::info!("gateway stopped");
    Ok(())
}
