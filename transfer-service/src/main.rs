//! transfer-service binary: configuration, connections, migrations, then [`transfer_service::router`].

use clap::Parser;
use service_kit::shutdown::on_signals;
use service_kit::startup::{boot, serve_with};
use transfer_service::{AppState, Config, router, start_background};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let pool = boot("transfer-service", &config.service).await?;
    config.service.app.check(None, Some(&config.kinesis.kinesis_endpoint)).map_err(anyhow::Error::msg)?;
    let rapids = rapids::Rapids::connect(&config.kinesis.rapids_config()).await;
    let state = AppState::new(&config, pool, Some(rapids.clone()))?;
    let shutdown = on_signals();
    let background = start_background(&config, &state, rapids, shutdown.clone());
    serve_with("transfer-service", config.addr, router(state), shutdown, Some(background)).await
}
