//! view-updater binary: serves the river `views` and the reconciliation (default), or
//! `rebuild` the views.

use clap::Parser;
use service_kit::shutdown::on_signals;
use service_kit::startup::{boot, serve_with};
use view_updater::rebuild;
use view_updater::{AppState, Command, Config, router, start_background};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let pool = boot("view-updater", &config.service).await?;
    match config.command {
        None => {
            config.service.app.check(None, Some(&config.kinesis.kinesis_endpoint)).map_err(anyhow::Error::msg)?;
            let rapids = rapids::Rapids::connect(&config.kinesis.rapids_config()).await;
            let state = AppState::new(&config, pool, Some(rapids.clone()))?;
            let shutdown = on_signals();
            let background = start_background(&config, &state, rapids, shutdown.clone());
            serve_with("view-updater", config.addr, router(state), shutdown, Some(background)).await
        }
        Some(Command::Rebuild { account: Some(account), .. }) => {
            match rebuild::rebuild_account(&pool, account).await? {
                Some(version) => println!("account {account} rebuilt at version {version}"),
                None => println!("no account {account} in the event store; its view was removed"),
            }
            Ok(())
        }
        Some(Command::Rebuild { verify: false, quiet, .. }) => {
            let done = rebuild::rebuild(&pool, !quiet).await?;
            println!(
                "rebuilt the views from {} events in {:.1} s ({:.0} events/s); {} streams caught up at the swap",
                done.events,
                done.seconds,
                done.events as f64 / done.seconds.max(1e-3),
                done.caught_up
            );
            Ok(())
        }
        Some(Command::Rebuild { verify: true, quiet, .. }) => {
            let verified = rebuild::verify(&pool, !quiet).await?;
            for d in &verified.differences {
                println!("DIFFERENCE {} {}: {}", d.table, d.key, d.what);
            }
            println!(
                "verified: {} rows compared, {} at different versions (not compared), {} differences",
                verified.compared,
                verified.not_compared,
                verified.differences.len()
            );
            if !verified.differences.is_empty() {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}
