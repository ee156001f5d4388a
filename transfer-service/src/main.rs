//! transfer-service binary: configuration, connections, migrations, then [`transfer_service::router`].

use clap::Parser;
use service_kit::startup::{boot, serve_until_signal};
use transfer_service::{AppState, Config, router};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let (pool, rapids) = boot(&config.service).await?;
    let state = AppState::new(&config, pool, Some(rapids))?;
    serve_until_signal("transfer-service", config.addr, router(state)).await
}
