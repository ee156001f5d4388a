//! The ponds on S3: what the bank keeps beyond the stream's retention.
//!
//! * [`river`]: the river `archive`, every event of the rapids written to the bucket
//!   as Parquet files partitioned by day ([`files`]), each file once whatever the retries.
//! * [`verify`]: the archive compared with the event store (`bankctl archive verify`).
//! * [`statements`]: the monthly statements, a finite job (`archiver statements`),
//!   started by the task `statements.statement.generate` through the river `statements`.
//! * [`s3`]: the bucket (the AWS SDK for S3; crate `pond`, shared with query-service).
#![forbid(unsafe_code)]

pub mod files;
pub mod river;
pub use pond::s3;
pub mod statements;
pub mod verify;

use axum::Router;
use rapids::Rapids;
use rapids::config::{KinesisArgs, RiverArgs};
use rapids::river::RiverMetrics;
use s3::{Bucket, S3Args};
use service_kit::config::ServiceArgs;
use service_kit::http::Kit;
use sqlx::PgPool;
use std::net::SocketAddr;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "archiver", about = "Archives every event of the rapids to S3 as Parquet; runs the statements job")]
pub struct Config {
    /// Where to listen.
    #[arg(long, env = "ARCHIVER_ADDR", default_value_t = Config::DEFAULT_ADDR)]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub service: ServiceArgs,
    #[command(flatten)]
    pub kinesis: KinesisArgs,
    #[command(flatten)]
    pub river: RiverArgs,
    #[command(flatten)]
    pub s3: S3Args,
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Config {
    /// Where the archiver listens by default (its dev port).
    pub const DEFAULT_ADDR: SocketAddr =
        SocketAddr::V4(std::net::SocketAddrV4::new(std::net::Ipv4Addr::LOCALHOST, 8087));
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// The statements job: writes the statements of one month (CSV and PDF) to the
    /// bucket, then exits (0: all written).
    Statements {
        /// The month, `YYYY-MM`.
        #[arg(long)]
        month: String,
        /// One account's id, or `all` (every account opened before the month's end).
        #[arg(long, default_value = "all")]
        account: String,
    },
}

#[derive(Clone)]
pub struct AppState {
    pub kit: Kit,
    pub bucket: Bucket,
    pub river_metrics: RiverMetrics,
    pub archive_metrics: river::ArchiveMetrics,
}

impl AppState {
    pub fn new(config: &Config, pool: PgPool, bucket: Bucket, rapids: Option<Rapids>) -> anyhow::Result<Self> {
        let openapi = service_kit::openapi::operational_only(
            "archiver",
            "Archives every event of the rapids to S3 as Parquet (river `archive`) and runs the statements \
             job on the task statements.statement.generate (river `statements`); operational routes only.",
        );
        let registry = prometheus::Registry::new();
        let river_metrics = RiverMetrics::register(&registry)?;
        let archive_metrics = river::ArchiveMetrics::register(&registry)?;
        let mut kit = Kit::new("archiver", pool, registry, openapi, &config.service.http)?;
        if let Some(rapids) = &rapids {
            kit = kit.with_check("kinesis", rapids.readiness());
        }
        let probe = bucket.clone();
        kit = kit.with_check("s3", move || {
            let bucket = probe.clone();
            async move { bucket.reachable().await.is_ok() }
        });
        Ok(AppState { kit, bucket, river_metrics, archive_metrics })
    }
}

pub fn router(state: AppState) -> Router {
    service_kit::http::app(Router::new(), state.kit)
}

/// Starts the rivers `archive` and `statements` (unless rivers are disabled).
pub fn start_background(
    config: &Config,
    state: &AppState,
    rapids: Rapids,
    shutdown: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let pool = &state.kit.pool;
    let archive = river::ArchiveHandler { bucket: state.bucket.clone(), metrics: state.archive_metrics.clone() };
    let metrics = state.river_metrics.clone();
    let archiving =
        config.river.spawn(river::RIVER, river::TOPICS, archive, pool, rapids.clone(), metrics, shutdown.clone());
    let jobs = statements::Tasks::new(pool.clone(), config);
    let metrics = state.river_metrics.clone();
    let statements =
        config.river.spawn(statements::RIVER, &[statements::TOPICS], jobs, pool, rapids, metrics, shutdown);
    service_kit::startup::join_background([archiving, statements])
}
