//! Configuration every service reads from the environment (see `.env.example`).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// A value that must never be printed (tokens, passwords in URLs).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_owned()))
    }
}

/// The database every service connects to.
#[derive(clap::Args, Debug, Clone)]
pub struct DatabaseArgs {
    /// Postgres URL of the event store (and the service's own schemas).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Secret,
    /// Connections in this process's pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
    /// How long start-up waits for the database to accept connections.
    #[arg(long, env = "DATABASE_CONNECT_TIMEOUT_SECS", default_value_t = 30)]
    pub database_connect_timeout_secs: u64,
}

/// The Kinesis stream (the rapids).
#[derive(clap::Args, Debug, Clone)]
pub struct KinesisArgs {
    /// Kinesis API endpoint; set it empty to use AWS's own endpoint for the region.
    #[arg(long, env = "KINESIS_ENDPOINT", default_value = "http://127.0.0.1:4567")]
    pub kinesis_endpoint: String,
    #[arg(long, env = "KINESIS_STREAM", default_value = "rapids")]
    pub kinesis_stream: String,
    #[arg(long, env = "AWS_REGION", default_value = "us-east-1")]
    pub aws_region: String,
}

impl KinesisArgs {
    pub fn rapids_config(&self) -> eventstore::rapids::RapidsConfig {
        eventstore::rapids::RapidsConfig {
            endpoint: (!self.kinesis_endpoint.trim().is_empty()).then(|| self.kinesis_endpoint.clone()),
            stream: self.kinesis_stream.clone(),
            region: self.aws_region.clone(),
        }
    }
}

/// How tokens are checked.
#[derive(clap::Args, Debug, Clone)]
pub struct AuthArgs {
    /// HS256 secret shared with the token issuer.
    #[arg(long, env = "JWT_SECRET")]
    pub jwt_secret: Option<Secret>,
    /// PEM file with the RS256 public key of the token issuer.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
}

/// Limits of the HTTP layer.
#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    /// A request still running after this long is answered 503 `timeout`.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = 10_000)]
    pub request_timeout_ms: u64,
    /// Larger request bodies are refused with 413.
    #[arg(long, env = "BODY_LIMIT_BYTES", default_value_t = 16 * 1024)]
    pub body_limit_bytes: usize,
}

impl Default for HttpArgs {
    fn default() -> Self {
        HttpArgs { request_timeout_ms: 10_000, body_limit_bytes: 16 * 1024 }
    }
}

/// Log output.
#[derive(clap::Args, Debug, Clone)]
pub struct LogArgs {
    /// `text` for people, `json` for log shippers. The filter is `RUST_LOG`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text")]
    pub log_format: crate::telemetry::LogFormat,
}

/// What every command service reads.
#[derive(clap::Args, Debug, Clone)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kinesis: KinesisArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub log: LogArgs,
}

/// How the command side treats streams.
#[derive(clap::Args, Debug, Clone)]
pub struct CommandArgs {
    /// Snapshot a stream every this many events.
    #[arg(long, env = "SNAPSHOT_EVERY", default_value_t = 100)]
    pub snapshot_every: u32,
    /// Attempts of a command that keeps losing concurrency races before 409.
    #[arg(long, env = "COMMAND_MAX_ATTEMPTS", default_value_t = 5)]
    pub command_max_attempts: u32,
    /// Aggregates kept in memory (0: load every command's aggregate from the store).
    #[arg(long, env = "AGGREGATE_CACHE_SIZE", default_value_t = 100_000)]
    pub aggregate_cache_size: usize,
    /// Writer tasks that group concurrent appends into one commit (0: no grouping).
    /// One writer makes the largest groups, which measured best on 2 cores.
    #[arg(long, env = "APPEND_WRITERS", default_value_t = 1)]
    pub append_writers: usize,
    /// Most appends one group commit carries.
    #[arg(long, env = "APPEND_BATCH_MAX", default_value_t = 64)]
    pub append_batch_max: usize,
    /// Largest amount of one command, in minor units.
    #[arg(long, env = "MAX_AMOUNT_MINOR", default_value_t = 1_000_000_000)]
    pub max_amount_minor: i64,
}

impl CommandArgs {
    pub fn repository_config(&self) -> eventstore::RepositoryConfig {
        eventstore::RepositoryConfig {
            snapshot_every: self.snapshot_every,
            max_attempts: self.command_max_attempts,
            cache_capacity: self.aggregate_cache_size,
            append_writers: self.append_writers,
            append_batch_max: self.append_batch_max,
        }
    }
}

/// A service's river (its subscription to the rapids).
#[derive(clap::Args, Debug, Clone)]
pub struct RiverArgs {
    /// Run the service's river in this process (`false`: HTTP only).
    #[arg(long, env = "RIVER_ENABLED", default_value_t = true, action = clap::ArgAction::Set)]
    pub river_enabled: bool,
    /// A shard lease not renewed for this long is taken over by another instance.
    #[arg(long, env = "RIVER_LEASE_MS", default_value_t = 10_000)]
    pub river_lease_ms: u64,
    /// How often leases are renewed and rebalanced.
    #[arg(long, env = "RIVER_RENEW_MS", default_value_t = 2_000)]
    pub river_renew_ms: u64,
    /// How often the shard list is read (new shards after a reshard).
    #[arg(long, env = "RIVER_SHARD_SYNC_MS", default_value_t = 10_000)]
    pub river_shard_sync_ms: u64,
    /// Wait between reads of a shard with nothing new (the tailer's NOTIFY wakes the
    /// readers sooner when the river shares its database).
    #[arg(long, env = "RIVER_IDLE_POLL_MS", default_value_t = 250)]
    pub river_idle_poll_ms: u64,
    /// Least time between two reads of one shard (on AWS: 200 ms times the number of
    /// rivers, Kinesis's limit is 5 reads a second per shard).
    #[arg(long, env = "RIVER_READ_INTERVAL_MS", default_value_t = 20)]
    pub river_read_interval_ms: u64,
    /// Attempts on an event that keeps failing before it is parked as a dead letter.
    #[arg(long, env = "RIVER_MAX_ATTEMPTS", default_value_t = 5)]
    pub river_max_attempts: u32,
    /// Connections of the river's own pool (its transactions, leases, LISTEN). Apart
    /// from the service's pool, so that readers holding a transaction never starve the
    /// commands a saga handler runs, nor the other way round.
    #[arg(long, env = "RIVER_DATABASE_CONNECTIONS", default_value_t = 8)]
    pub river_database_connections: u32,
}

impl RiverArgs {
    /// Starts the river `name` on `topics` with `handler` unless rivers are disabled;
    /// it runs until `shutdown` and then gives its shard leases up.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn<H: eventstore::river::Handler>(
        &self,
        name: &str,
        topics: &[&str],
        handler: H,
        service_pool: &sqlx::PgPool,
        rapids: eventstore::rapids::Rapids,
        metrics: eventstore::river::RiverMetrics,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.river_enabled.then(|| {
            let config = self.river_config(name, eventstore::river::TopicFilter::new(topics));
            let river = eventstore::river::River::new(config, self.river_pool(service_pool), rapids, handler, metrics);
            tokio::spawn(river.run(shutdown))
        })
    }

    /// The river's own pool to the service's database (connects lazily).
    pub fn river_pool(&self, service_pool: &sqlx::PgPool) -> sqlx::PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(self.river_database_connections.max(2))
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect_lazy_with(service_pool.connect_options().as_ref().clone())
    }

    pub fn river_config(&self, name: &str, topics: eventstore::river::TopicFilter) -> eventstore::river::RiverConfig {
        use std::time::Duration;
        eventstore::river::RiverConfig {
            lease_duration: Duration::from_millis(self.river_lease_ms.max(1)),
            renew_every: Duration::from_millis(self.river_renew_ms.max(1)),
            shard_sync_every: Duration::from_millis(self.river_shard_sync_ms.max(1)),
            idle_poll: Duration::from_millis(self.river_idle_poll_ms),
            read_interval: Duration::from_millis(self.river_read_interval_ms),
            max_attempts: self.river_max_attempts.max(1),
            ..eventstore::river::RiverConfig::new(name, topics)
        }
    }
}
