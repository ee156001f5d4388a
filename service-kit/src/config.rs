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
///
/// Every argument struct here has a `Default` (its `default_value_t`s come from it, so
/// the two cannot differ): tests and tools build configurations as typed values.
#[derive(clap::Args, Debug, Clone)]
pub struct DatabaseArgs {
    /// Postgres URL of the event store (and the service's own schemas).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Secret,
    /// Connections in this process's pool.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = DatabaseArgs::default().database_max_connections)]
    pub database_max_connections: u32,
    /// How long start-up waits for the database to accept connections.
    #[arg(long, env = "DATABASE_CONNECT_TIMEOUT_SECS", default_value_t = DatabaseArgs::default().database_connect_timeout_secs)]
    pub database_connect_timeout_secs: u64,
    /// Apply the migrations at start-up (the default). `false` for a deployment that
    /// runs `bankctl migrate` as a step of its own: a start on a database lacking a
    /// migration this build needs then fails.
    #[arg(long, env = "MIGRATE_ON_START", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate_on_start: bool,
}

impl DatabaseArgs {
    /// The defaults, with this URL.
    pub fn new(database_url: impl Into<String>) -> Self {
        DatabaseArgs {
            database_url: Secret::new(database_url),
            database_max_connections: 16,
            database_connect_timeout_secs: 30,
            migrate_on_start: true,
        }
    }
}

impl Default for DatabaseArgs {
    fn default() -> Self {
        DatabaseArgs::new("")
    }
}

/// How tokens are checked.
#[derive(clap::Args, Debug, Clone)]
pub struct AuthArgs {
    /// HS256 secret shared with the token issuer, for tokens without a `kid`: at least
    /// 32 bytes, and none written in this repository.
    #[arg(long, env = "JWT_SECRET")]
    pub jwt_secret: Option<Secret>,
    /// More HS256 keys, chosen by the token's `kid`: `kid=secret,kid=secret` (two
    /// while one rotates). Each is held to the same rules as `JWT_SECRET`.
    #[arg(long, env = "JWT_KEYS")]
    pub jwt_keys: Option<Secret>,
    /// PEM file with the RS256 public key of the token issuer. With it, HS256 tokens
    /// are refused unless `JWT_ALLOW_HS256=true`.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// Accept HS256 tokens beside an RS256 public key.
    #[arg(long, env = "JWT_ALLOW_HS256", default_value_t = false, action = clap::ArgAction::Set)]
    pub jwt_allow_hs256: bool,
    /// When set, a token's `iss` must be this.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// When set, a token's `aud` must hold this.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// A token valid for longer than this from now (its `exp`) is refused, in seconds.
    #[arg(long, env = "JWT_MAX_TTL_SECS", default_value_t = AuthArgs::DEFAULT_MAX_TTL_SECS)]
    pub jwt_max_ttl_secs: i64,
}

impl AuthArgs {
    /// A day: the longest a token may still be valid for.
    pub const DEFAULT_MAX_TTL_SECS: i64 = 86_400;

    /// Only an HS256 secret (tests and tools).
    pub fn hs256(secret: impl Into<String>) -> Self {
        AuthArgs { jwt_secret: Some(Secret::new(secret)), ..AuthArgs::default() }
    }
}

impl Default for AuthArgs {
    fn default() -> Self {
        AuthArgs {
            jwt_secret: None,
            jwt_keys: None,
            jwt_public_key_file: None,
            jwt_allow_hs256: false,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_max_ttl_secs: Self::DEFAULT_MAX_TTL_SECS,
        }
    }
}

/// Limits of the HTTP layer.
#[derive(clap::Args, Debug, Clone)]
pub struct HttpArgs {
    /// A request still running after this long is answered 503 `timeout`.
    #[arg(long, env = "REQUEST_TIMEOUT_MS", default_value_t = HttpArgs::default().request_timeout_ms)]
    pub request_timeout_ms: u64,
    /// Larger request bodies are refused with 413.
    #[arg(long, env = "BODY_LIMIT_BYTES", default_value_t = HttpArgs::default().body_limit_bytes)]
    pub body_limit_bytes: usize,
    /// Requests running at once (waiting reads included); more are refused at once
    /// with 503 `overloaded` and Retry-After.
    #[arg(long, env = "MAX_IN_FLIGHT", default_value_t = HttpArgs::default().max_in_flight)]
    pub max_in_flight: usize,
    /// On SIGTERM, `/ready` answers 503 for this long while the process still serves,
    /// so that load balancers (the gateway checks every instance's `/ready`) stop
    /// sending it requests before it stops listening.
    #[arg(long, env = "SHUTDOWN_DRAIN_MS", default_value_t = HttpArgs::default().shutdown_drain_ms)]
    pub shutdown_drain_ms: u64,
}

impl HttpArgs {
    /// The longest a waiting read (`wait_ms`) may wait: the service's own maximum, but
    /// always ending before the request timeout (by a fifth of it, at most a second),
    /// so that a wait ends in its own answer (200 or 409), never in 503 `timeout`.
    pub fn wait_budget(&self, max_wait_ms: u64) -> std::time::Duration {
        let timeout = std::time::Duration::from_millis(self.request_timeout_ms);
        let margin = (timeout / 5).min(std::time::Duration::from_secs(1));
        std::time::Duration::from_millis(max_wait_ms).min(timeout.saturating_sub(margin))
    }
}

impl Default for HttpArgs {
    fn default() -> Self {
        HttpArgs { request_timeout_ms: 10_000, body_limit_bytes: 16 * 1024, max_in_flight: 2048, shutdown_drain_ms: 0 }
    }
}

/// Log output.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LogArgs {
    /// `text` for people, `json` for log shippers. The filter is `RUST_LOG`.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = crate::telemetry::LogFormat::Text)]
    pub log_format: crate::telemetry::LogFormat,
    /// Where traces go (OTLP over HTTP, protobuf: `<endpoint>/v1/traces`), e.g.
    /// `http://127.0.0.1:4318`; unset, nothing is traced.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otel_exporter_otlp_endpoint: Option<String>,
}

/// Where the process runs.
#[derive(clap::ValueEnum, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AppEnv {
    #[default]
    Development,
    /// Refuses to start with a connection anyone on the path could read.
    Production,
}

/// `APP_ENV`: `production` refuses weak transport at start-up.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct AppArgs {
    /// `production` refuses to start unless `DATABASE_URL` says `sslmode=verify-full`
    /// (or `verify-ca`) and the Kinesis endpoint is https (or AWS's own).
    #[arg(long, env = "APP_ENV", value_enum, default_value_t = AppEnv::Development)]
    pub app_env: AppEnv,
}

impl AppArgs {
    /// In production: the database URL's `sslmode` checks the server's certificate, and
    /// the Kinesis endpoint (when the process has one) is https or AWS's own (empty).
    pub fn check(&self, database_url: Option<&str>, kinesis_endpoint: Option<&str>) -> Result<(), String> {
        if self.app_env != AppEnv::Production {
            return Ok(());
        }
        if let Some(url) = database_url {
            let sslmode = url
                .split_once('?')
                .map(|(_, query)| query)
                .unwrap_or_default()
                .split('&')
                .find_map(|pair| pair.strip_prefix("sslmode="));
            if !matches!(sslmode, Some("verify-full" | "verify-ca")) {
                return Err("APP_ENV=production needs sslmode=verify-full (or verify-ca) in DATABASE_URL".into());
            }
        }
        if let Some(endpoint) = kinesis_endpoint
            && !(endpoint.is_empty() || endpoint.starts_with("https://"))
        {
            return Err("APP_ENV=production needs an https KINESIS_ENDPOINT (or an empty one: AWS's own)".into());
        }
        Ok(())
    }
}

/// What every command service reads.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub app: AppArgs,
    #[command(flatten)]
    pub database: DatabaseArgs,
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
    #[arg(long, env = "SNAPSHOT_EVERY", default_value_t = CommandArgs::default().snapshot_every)]
    pub snapshot_every: u32,
    /// Attempts of a command that keeps losing concurrency races before 409.
    #[arg(long, env = "COMMAND_MAX_ATTEMPTS", default_value_t = CommandArgs::default().command_max_attempts)]
    pub command_max_attempts: u32,
    /// Aggregates kept in memory (0: load every command's aggregate from the store).
    #[arg(long, env = "AGGREGATE_CACHE_SIZE", default_value_t = CommandArgs::default().aggregate_cache_size)]
    pub aggregate_cache_size: usize,
    /// Writer tasks that group concurrent appends into one commit (0: no grouping).
    /// One writer makes the largest groups, which measured best on 2 cores.
    #[arg(long, env = "APPEND_WRITERS", default_value_t = CommandArgs::default().append_writers)]
    pub append_writers: usize,
    /// Most appends one group commit carries.
    #[arg(long, env = "APPEND_BATCH_MAX", default_value_t = CommandArgs::default().append_batch_max)]
    pub append_batch_max: usize,
    /// Largest amount of one command, in minor units.
    #[arg(long, env = "MAX_AMOUNT_MINOR", default_value_t = CommandArgs::default().max_amount_minor)]
    pub max_amount_minor: i64,
    #[command(flatten)]
    pub idempotency: IdempotencyArgs,
}

impl Default for CommandArgs {
    fn default() -> Self {
        CommandArgs {
            snapshot_every: 100,
            command_max_attempts: 5,
            aggregate_cache_size: 100_000,
            append_writers: 1,
            append_batch_max: 64,
            max_amount_minor: 1_000_000_000,
            idempotency: IdempotencyArgs::default(),
        }
    }
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

/// How long HTTP Idempotency-Key records are kept, and their cleanup job (the saga's
/// step records never expire).
#[derive(clap::Args, Debug, Clone)]
pub struct IdempotencyArgs {
    /// An Idempotency-Key is honoured this long; a repeat after it is a new request.
    #[arg(long, env = "IDEMPOTENCY_TTL_HOURS", default_value_t = IdempotencyArgs::default().idempotency_ttl_hours)]
    pub idempotency_ttl_hours: u64,
    /// The cleanup job runs this often (0: not in this process).
    #[arg(long, env = "IDEMPOTENCY_CLEANUP_SECS", default_value_t = IdempotencyArgs::default().idempotency_cleanup_secs)]
    pub idempotency_cleanup_secs: u64,
    /// Most records one delete statement removes.
    #[arg(long, env = "IDEMPOTENCY_CLEANUP_BATCH", default_value_t = IdempotencyArgs::default().idempotency_cleanup_batch,
          value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub idempotency_cleanup_batch: i64,
}

impl Default for IdempotencyArgs {
    fn default() -> Self {
        IdempotencyArgs { idempotency_ttl_hours: 24, idempotency_cleanup_secs: 300, idempotency_cleanup_batch: 1000 }
    }
}

impl IdempotencyArgs {
    /// The cleanup job's settings; `None` when it is off in this process.
    pub fn expiry_config(&self) -> Option<eventstore::expiry::ExpiryConfig> {
        (self.idempotency_cleanup_secs > 0).then(|| eventstore::expiry::ExpiryConfig {
            ttl: std::time::Duration::from_secs(self.idempotency_ttl_hours.saturating_mul(3600)),
            every: std::time::Duration::from_secs(self.idempotency_cleanup_secs),
            batch: self.idempotency_cleanup_batch.max(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_wait_always_ends_before_the_request_timeout() {
        let http = |ms| HttpArgs { request_timeout_ms: ms, ..HttpArgs::default() };
        // the defaults: 10 s of each; the wait ends a second before the timeout
        assert_eq!(http(10_000).wait_budget(10_000), Duration::from_millis(9_000));
        // a short timeout keeps a fifth of itself
        assert_eq!(http(500).wait_budget(10_000), Duration::from_millis(400));
        // a small maximum wait is kept as it is
        assert_eq!(http(10_000).wait_budget(200), Duration::from_millis(200));
        assert_eq!(http(0).wait_budget(10_000), Duration::ZERO);
    }

    #[test]
    fn idempotency_keys_are_kept_a_day_and_swept_every_five_minutes() {
        let expiry = eventstore::expiry::ExpiryConfig {
            ttl: Duration::from_secs(24 * 3600),
            every: Duration::from_secs(300),
            batch: 1000,
        };
        assert_eq!(IdempotencyArgs::default().expiry_config(), Some(expiry));
        let off = IdempotencyArgs { idempotency_cleanup_secs: 0, ..IdempotencyArgs::default() };
        assert_eq!(off.expiry_config(), None);
    }
}

#[cfg(test)]
mod app_env_tests {
    use super::*;

    #[test]
    fn production_refuses_transport_anyone_on_the_path_could_read() {
        let production = AppArgs { app_env: AppEnv::Production };
        let db = |mode: &str| format!("postgres://u:p@db/bank?sslrootcert=/ca.pem&sslmode={mode}");
        for weak in ["disable", "allow", "prefer", "require"] {
            assert!(production.check(Some(&db(weak)), None).is_err(), "{weak}");
        }
        assert!(production.check(Some("postgres://u:p@db/bank"), None).is_err(), "no sslmode: prefer");
        for strong in ["verify-full", "verify-ca"] {
            assert!(production.check(Some(&db(strong)), None).is_ok(), "{strong}");
        }
        assert!(production.check(None, Some("http://127.0.0.1:4567")).is_err());
        assert!(production.check(None, Some("https://kinesis.eu-west-1.amazonaws.com")).is_ok());
        assert!(production.check(None, Some("")).is_ok(), "AWS's own endpoint");
        // development accepts anything
        assert!(AppArgs::default().check(Some(&db("disable")), Some("http://x")).is_ok());
    }
}
