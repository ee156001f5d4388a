//! account-service binary: configuration, connections, migrations, then [`account_service::router`].

use account_service::{AppState, Config, router};
use clap::Parser;
use service_kit::startup::{boot, serve_until_signal};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let (pool, rapids) = boot(&config.service).await?;
    let state = AppState::new(&config, pool, Some(rapids))?;
    serve_until_signal("account-service", config.addr, router(state)).await
}
