//! query-service binary: configuration, connections, migrations, the LISTEN task, then [`query_service::router`].

use clap::Parser;
use query_service::{AppState, Config, router};
use service_kit::shutdown::on_signals;
use service_kit::startup::{boot, serve_with};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let pool = boot("query-service", &config.service).await?;
    let state = AppState::new(&config, pool)?;
    let shutdown = on_signals();
    let listening = state.listen(shutdown.clone());
    serve_with("query-service", config.addr, router(state), shutdown, Some(listening)).await
}
