//! The command-line and environment arguments of the stream ([`KinesisArgs`]) and of a
//! service's river ([`RiverArgs`]), flattened into each binary's own config.

/// The Kinesis stream (the rapids).
#[derive(clap::Args, Debug, Clone)]
pub struct KinesisArgs {
    /// Kinesis API endpoint; set it empty to use AWS's own endpoint for the region.
    #[arg(long, env = "KINESIS_ENDPOINT", default_value_t = KinesisArgs::default().kinesis_endpoint)]
    pub kinesis_endpoint: String,
    #[arg(long, env = "KINESIS_STREAM", default_value_t = KinesisArgs::default().kinesis_stream)]
    pub kinesis_stream: String,
    #[arg(long, env = "AWS_REGION", default_value_t = KinesisArgs::default().aws_region)]
    pub aws_region: String,
    /// Where enhanced fan-out subscribes (HTTP/2 needs TLS): a local server's TLS
    /// endpoint; unset: KINESIS_ENDPOINT (AWS's own endpoint is TLS).
    #[arg(long, env = "KINESIS_EFO_ENDPOINT")]
    pub kinesis_efo_endpoint: Option<String>,
    /// A PEM file of certificates to trust beside the system's (a local server's CA).
    #[arg(long, env = "KINESIS_CA_FILE")]
    pub kinesis_ca_file: Option<std::path::PathBuf>,
}

impl Default for KinesisArgs {
    fn default() -> Self {
        KinesisArgs {
            kinesis_endpoint: "http://127.0.0.1:4567".into(),
            kinesis_stream: "rapids".into(),
            aws_region: "us-east-1".into(),
            kinesis_efo_endpoint: None,
            kinesis_ca_file: None,
        }
    }
}

impl KinesisArgs {
    pub fn rapids_config(&self) -> crate::RapidsConfig {
        crate::RapidsConfig {
            endpoint: (!self.kinesis_endpoint.trim().is_empty()).then(|| self.kinesis_endpoint.clone()),
            stream: self.kinesis_stream.clone(),
            region: self.aws_region.clone(),
            efo_endpoint: self.kinesis_efo_endpoint.clone().filter(|e| !e.trim().is_empty()),
            ca_file: self.kinesis_ca_file.clone(),
        }
    }
}

/// A service's river (its subscription to the rapids).
#[derive(clap::Args, Debug, Clone)]
pub struct RiverArgs {
    /// Run the service's river in this process (`false`: HTTP only).
    #[arg(long, env = "RIVER_ENABLED", default_value_t = RiverArgs::default().river_enabled, action = clap::ArgAction::Set)]
    pub river_enabled: bool,
    /// A shard lease not renewed for this long is taken over by another instance.
    #[arg(long, env = "RIVER_LEASE_MS", default_value_t = RiverArgs::default().river_lease_ms)]
    pub river_lease_ms: u64,
    /// How often leases are renewed and rebalanced.
    #[arg(long, env = "RIVER_RENEW_MS", default_value_t = RiverArgs::default().river_renew_ms)]
    pub river_renew_ms: u64,
    /// How often the shard list is read (new shards after a reshard).
    #[arg(long, env = "RIVER_SHARD_SYNC_MS", default_value_t = RiverArgs::default().river_shard_sync_ms)]
    pub river_shard_sync_ms: u64,
    /// Wait between reads of a shard with nothing new, like the Kinesis Client
    /// Library's ~1 s (the tailer's NOTIFY wakes the readers sooner when the river
    /// shares its database).
    #[arg(long, env = "RIVER_IDLE_POLL_MS", default_value_t = RiverArgs::default().river_idle_poll_ms)]
    pub river_idle_poll_ms: u64,
    /// Least time between two reads of one shard, whatever the budget allows (0: the
    /// budget alone decides).
    #[arg(long, env = "RIVER_READ_INTERVAL_MS", default_value_t = RiverArgs::default().river_read_interval_ms)]
    pub river_read_interval_ms: u64,
    /// How rivers read: `poll` (GetRecords, within the budget below) or `efo`
    /// (enhanced fan-out: each river a registered consumer, shards pushed over HTTP/2).
    #[arg(long, env = "RIVER_READ_MODE", value_enum, default_value_t = RiverArgs::default().river_read_mode)]
    pub river_read_mode: crate::river::ReadMode,
    /// GetRecords calls a second per shard for the whole deployment, shared by every
    /// river (AWS's limit is 5); 0: no budget (the local emulators).
    #[arg(long, env = "RIVER_GET_RECORDS_BUDGET", default_value_t = RiverArgs::default().river_get_records_budget)]
    pub river_get_records_budget: f64,
    /// Attempts on an event that keeps failing before it is parked as a dead letter.
    #[arg(long, env = "RIVER_MAX_ATTEMPTS", default_value_t = RiverArgs::default().river_max_attempts)]
    pub river_max_attempts: u32,
    /// Connections of the river's own pool (its transactions, leases, LISTEN). Apart
    /// from the service's pool, so that readers holding a transaction never starve the
    /// commands a saga handler runs, nor the other way round.
    #[arg(long, env = "RIVER_DATABASE_CONNECTIONS", default_value_t = RiverArgs::default().river_database_connections)]
    pub river_database_connections: u32,
}

impl Default for RiverArgs {
    fn default() -> Self {
        RiverArgs {
            river_enabled: true,
            river_lease_ms: 10_000,
            river_renew_ms: 2_000,
            river_shard_sync_ms: 10_000,
            river_idle_poll_ms: 1_000,
            river_read_interval_ms: 0,
            river_get_records_budget: 5.0,
            river_read_mode: crate::river::ReadMode::Poll,
            river_max_attempts: 5,
            river_database_connections: 8,
        }
    }
}

impl RiverArgs {
    /// Starts the river `name` on `topics` with `handler` unless rivers are disabled;
    /// it runs until `shutdown` and then gives its shard leases up.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn<H: crate::river::Handler>(
        &self,
        name: &str,
        topics: &[&str],
        handler: H,
        service_pool: &sqlx::PgPool,
        rapids: crate::Rapids,
        metrics: crate::river::RiverMetrics,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        self.river_enabled.then(|| {
            let config = crate::river::RiverConfig {
                subscriptions: crate::river::Subscriptions::Managed,
                ..self.river_config(name, crate::river::TopicFilter::new(topics))
            };
            let river = crate::river::River::new(config, self.river_pool(service_pool), rapids, handler, metrics);
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

    pub fn river_config(&self, name: &str, topics: crate::river::TopicFilter) -> crate::river::RiverConfig {
        use std::time::Duration;
        crate::river::RiverConfig {
            lease_duration: Duration::from_millis(self.river_lease_ms.max(1)),
            renew_every: Duration::from_millis(self.river_renew_ms.max(1)),
            shard_sync_every: Duration::from_millis(self.river_shard_sync_ms.max(1)),
            idle_poll: Duration::from_millis(self.river_idle_poll_ms),
            read_interval: Duration::from_millis(self.river_read_interval_ms),
            get_records_budget: (self.river_get_records_budget > 0.0).then_some(self.river_get_records_budget),
            read_mode: self.river_read_mode,
            max_attempts: self.river_max_attempts.max(1),
            ..crate::river::RiverConfig::new(name, topics)
        }
    }
}
