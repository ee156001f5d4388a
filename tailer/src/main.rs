//! The tailer binary: configuration, health, readiness and metrics around the
//! library's [`tailer::Tailer`].
//!
//! Publishes every committed event to the rapids; one instance is active per database,
//! others stand by and take over within a second of its death. Serves `/health`,
//! `/ready` and `/metrics`.

use clap::Parser;
use rapids::config::KinesisArgs;
use service_kit::config::{DatabaseArgs, HttpArgs, LogArgs};
use service_kit::http::Kit;
use std::net::SocketAddr;
use std::time::Duration;
use tailer::poll::PollSource;
use tailer::publish::Publisher;
use tailer::wal::WalSource;
use tailer::{Tailer, TailerConfig, TailerMetrics};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Source {
    /// Logical decoding of the WAL, streamed over a replication connection (needs
    /// wal_level=logical and a role with REPLICATION).
    Wal,
    /// Polling es.events by an (xid, position) cursor.
    Poll,
}

#[derive(Debug, clap::Parser)]
#[command(name = "tailer", about = "Publishes the event store's log to the rapids")]
struct Config {
    /// Where health, readiness and metrics are served.
    #[arg(long, env = "TAILER_ADDR", default_value = "127.0.0.1:8085")]
    addr: SocketAddr,
    #[arg(long, env = "TAILER_SOURCE", value_enum, default_value = "wal")]
    source: Source,
    /// The logical replication slot of the wal source (and the position name of the poll source).
    #[arg(long, env = "TAILER_SLOT", default_value = "rapids_tailer")]
    slot: String,
    /// Most events read and not yet acknowledged by Kinesis.
    #[arg(long, env = "TAILER_BATCH_SIZE", default_value_t = 2000)]
    batch_size: usize,
    /// PutRecords requests in flight at once (1 = one after the other).
    #[arg(long, env = "TAILER_IN_FLIGHT", default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=16))]
    in_flight: u16,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    kinesis: KinesisArgs,
    #[command(flatten)]
    http: HttpArgs,
    #[command(flatten)]
    log: LogArgs,
    #[command(flatten)]
    app: service_kit::config::AppArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    service_kit::telemetry::init("tailer", config.log.log_format, config.log.otel_exporter_otlp_endpoint.as_deref());
    let (database_url, endpoint) = (config.database.database_url.expose(), &config.kinesis.kinesis_endpoint);
    config.app.check(Some(database_url), Some(endpoint)).map_err(anyhow::Error::msg)?;
    let pool = service_kit::startup::connect(&config.database).await?;
    service_kit::startup::migrate_or_check(&pool, &config.database).await?;
    let rapids = rapids::Rapids::connect(&config.kinesis.rapids_config()).await;

    let registry = prometheus::Registry::new();
    let metrics = TailerMetrics::register(&registry)?;
    let openapi = service_kit::openapi::operational_only("tailer", "Publishes the event store's log to the rapids.");
    let kit =
        Kit::new("tailer", pool.clone(), registry, openapi, &config.http)?.with_check("kinesis", rapids.readiness());
    let shutdown = service_kit::shutdown::on_signals();
    let listener = tokio::net::TcpListener::bind(config.addr).await?;
    tracing::info!(addr = %listener.local_addr()?, source = ?config.source, "tailer listening");
    let http = tokio::spawn(service_kit::http::serve(
        listener,
        service_kit::http::app(axum::Router::new(), kit),
        shutdown.clone(),
    ));

    let tailer_config = TailerConfig {
        batch_size: config.batch_size,
        idle_poll: Duration::from_millis(250),
        in_flight: usize::from(config.in_flight),
    };
    let publisher = Publisher::new(rapids);
    let ran = match config.source {
        Source::Wal => {
            // the pool's own server, credentials, sslmode and sslrootcert (parsed once,
            // from DATABASE_URL, by service_kit::startup)
            let source = WalSource::new(pool.clone(), &config.slot);
            tracing::info!(target = ?source.target(), "wal source: the replication connection");
            Tailer { pool, source, publisher, metrics, config: tailer_config }.run(shutdown.clone()).await
        }
        Source::Poll => {
            let source = PollSource::new(pool.clone(), &config.slot);
            Tailer { pool, source, publisher, metrics, config: tailer_config }.run(shutdown.clone()).await
        }
    };
    shutdown.cancel();
    // what was traced is exported even when the tailer stops on an error
    service_kit::telemetry::shutdown().await;
    ran?;
    http.await??;
    tracing::info!("tailer stopped");
    Ok(())
}
