//! view-updater binary: configuration, connections, migrations, then [`view_updater::router`].

use clap::Parser;
use service_kit::startup::{boot, serve_until_signal};
use view_updater::{AppState, Config, router};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let (pool, rapids) = boot(&config.service).await?;
    let state = AppState::new(&config, pool, Some(rapids))?;
    serve_until_signal("view-updater", config.addr, router(state)).await
}
