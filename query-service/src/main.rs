//! query-service binary: configuration, connections, migrations, then [`query_service::run`].

use query_service::{AppState, Config, run};
use clap::Parser;
use eventstore::rapids::Rapids;
use service_kit::{shutdown, startup, telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    telemetry::init(config.service.log.log_format);
    let pool = startup::connect(&config.service.database).await?;
    startup::migrate(&pool).await?;
    let rapids = Rapids::connect(&config.service.kinesis.rapids_config()).await;
    let state = AppState::new(&config, pool, Some(rapids))?;
    let listener = tokio::net::TcpListener::bind(config.addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "query-service listening");
    run(listener, state, shutdown::on_signals()).await?;
    tracing::info!("query-service stopped");
    Ok(())
}
