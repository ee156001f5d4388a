//! event-bus binary: configuration, connections, migrations, the generic rivers, then [`event_bus::router`].

use clap::Parser;
use event_bus::{AppState, Config, router, start_background};
use service_kit::shutdown::on_signals;
use service_kit::startup::{boot, serve_with};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let pool = boot("event-bus", &config.service).await?;
    config.service.app.check(None, Some(&config.kinesis.kinesis_endpoint)).map_err(anyhow::Error::msg)?;
    let rapids = rapids::Rapids::connect(&config.kinesis.rapids_config()).await;
    let state = AppState::new(&config, pool, Some(rapids.clone()))?;
    let shutdown = on_signals();
    let background = start_background(&config, &state, rapids, shutdown.clone());
    serve_with("event-bus", config.addr, router(state), shutdown, Some(background)).await
}
