//! archiver binary: serves the rivers `archive` and `statements` (default), or runs the
//! statements job once (`statements --month YYYY-MM [--account ID|all]`).

use archive::s3::Bucket;
use archive::{AppState, Command, Config, router, start_background};
use clap::Parser;
use service_kit::shutdown::on_signals;
use service_kit::startup::{boot, serve_with};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let pool = boot("archiver", &config.service).await?;
    let bucket = Bucket::connect(&config.s3).await;
    match &config.command {
        None => {
            config.service.app.check(None, Some(&config.kinesis.kinesis_endpoint)).map_err(anyhow::Error::msg)?;
            bucket.ensure().await?;
            let rapids = rapids::Rapids::connect(&config.kinesis.rapids_config()).await;
            let state = AppState::new(&config, pool, bucket, Some(rapids.clone()))?;
            let shutdown = on_signals();
            let background = start_background(&config, &state, rapids, shutdown.clone());
            serve_with("archiver", config.addr, router(state), shutdown, Some(background)).await
        }
        Some(Command::Statements { month, account }) => {
            let month = archive::statements::Month::parse(month).map_err(anyhow::Error::msg)?;
            let scope = archive::statements::Scope::parse(account).map_err(anyhow::Error::msg)?;
            match archive::statements::run(&pool, &bucket, month, scope).await {
                Ok(done) => {
                    println!("{}", serde_json::to_string(&done)?);
                    Ok(())
                }
                Err(archive::statements::JobError::Refused(why)) => {
                    eprintln!("refused: {why}");
                    std::process::exit(archive::statements::EXIT_REFUSED)
                }
                Err(archive::statements::JobError::Failed(why)) => {
                    eprintln!("failed: {why}");
                    std::process::exit(archive::statements::EXIT_FAILED)
                }
                Err(e) => Err(e.into()),
            }
        }
    }
}
