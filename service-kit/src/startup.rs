//! Start-up: connect to Postgres (waiting while it starts) and run the migrations.

use crate::config::DatabaseArgs;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("DATABASE_URL is not a valid Postgres URL")]
    BadUrl,
    #[error("TLS to the database: {0}")]
    Tls(String),
    #[error("the password file {0}: {1}")]
    Passfile(String, String),
    #[error("the database did not accept connections within {0:?}: {1}")]
    Unreachable(Duration, String),
    #[error("migrations failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the database lacks migration(s) {0} this build needs; run `bankctl migrate` (MIGRATE_ON_START is false)")]
    NotMigrated(String),
    #[error("cannot read the applied migrations: {0}")]
    Applied(sqlx::Error),
}

/// A pool to `DATABASE_URL`, retried until the database answers or the timeout passes.
pub async fn connect(args: &DatabaseArgs) -> Result<PgPool, StartupError> {
    let options = session_options(connect_options(args.database_url.expose())?);
    let timeout = Duration::from_secs(args.database_connect_timeout_secs);
    let started = Instant::now();
    loop {
        let pool = PgPoolOptions::new()
            .max_connections(args.database_max_connections)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(options.clone())
            .await;
        match pool {
            Ok(pool) => return Ok(pool),
            // a refused certificate or a server without TLS does not get better by waiting
            // (sqlx reports a refused certificate as I/O: rustls's InvalidData)
            Err(e @ sqlx::Error::Tls(_)) => return Err(StartupError::Tls(tls_message(&e.to_string()))),
            Err(sqlx::Error::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                return Err(StartupError::Tls(tls_message(&e.to_string())));
            }
            Err(e) if started.elapsed() < timeout => {
                tracing::info!(error = %e, "waiting for the database");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            // sqlx's connection errors do not contain the password
            Err(e) => return Err(StartupError::Unreachable(timeout, e.to_string())),
        }
    }
}

/// The connect options of a database URL, as libpq reads it: sqlx parses host, user,
/// password, database, `sslmode` and `sslrootcert` (TLS with rustls; the pools, their
/// LISTEN connections and the tailer's replication connection all use these options),
/// and takes a missing password from `PGPASSFILE` or `~/.pgpass`. On top of that the
/// `passfile` parameter, which sqlx does not know: without a password in the URL, the
/// password is looked up in that file (and a `passfile` that cannot be read is an
/// error, not silence, since it was named).
pub fn connect_options(database_url: &str) -> Result<PgConnectOptions, StartupError> {
    let (url, passfile) = take_query_parameter(database_url, "passfile");
    let options = PgConnectOptions::from_str(&url).map_err(|_| StartupError::BadUrl)?;
    match passfile {
        Some(path) if !url_has_password(&url) => {
            let database = options.get_database().unwrap_or(options.get_username()).to_owned();
            let host = if options.get_socket().is_some() || options.get_host().starts_with('/') {
                "localhost".to_owned() // as libpq matches a Unix socket
            } else {
                options.get_host().to_owned()
            };
            match pgpass_password(
                std::path::Path::new(&path),
                &host,
                options.get_port(),
                &database,
                options.get_username(),
            )? {
                Some(password) => Ok(options.password(&password)),
                None => Ok(options),
            }
        }
        _ => Ok(options),
    }
}

/// `url` without the query parameter `name`, and that parameter's (percent-decoded) value.
fn take_query_parameter(url: &str, name: &str) -> (String, Option<String>) {
    let Some((base, query)) = url.split_once('?') else { return (url.to_owned(), None) };
    let mut value = None;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| match pair.split_once('=') {
            Some((key, v)) if key == name => {
                value = Some(percent_decode(v));
                false
            }
            _ => true,
        })
        .collect();
    let url = if kept.is_empty() { base.to_owned() } else { format!("{base}?{}", kept.join("&")) };
    (url, value)
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the URL itself carries a password (user info or a `password` parameter).
fn url_has_password(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let (authority, query) = match rest.split_once('?') {
        Some((before, query)) => (before, query),
        None => (rest, ""),
    };
    let authority = authority.split('/').next().unwrap_or("");
    let in_userinfo = authority.rsplit_once('@').is_some_and(|(userinfo, _)| userinfo.contains(':'));
    in_userinfo || query.split('&').any(|pair| pair.starts_with("password="))
}

/// The password of the first line of a password file (`.pgpass` format:
/// `host:port:database:user:password`, `*` matches anything, `\:` and `\\` escape)
/// that matches. Like libpq, a file others can read is ignored, with a warning.
pub fn pgpass_password(
    path: &std::path::Path,
    host: &str,
    port: u16,
    database: &str,
    user: &str,
) -> Result<Option<String>, StartupError> {
    let fail = |e: std::io::Error| StartupError::Passfile(path.display().to_string(), e.to_string());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).map_err(fail)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(path = %path.display(), "the password file is readable by others (chmod 0600 it); ignored");
            return Ok(None);
        }
    }
    let text = std::fs::read_to_string(path).map_err(fail)?;
    let port = port.to_string();
    for line in text.lines() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let fields = pgpass_fields(line);
        let [h, p, d, u, password] = fields.as_slice() else { continue };
        let matches = |field: &String, value: &str| field == "*" || field == value;
        if matches(h, host) && matches(p, &port) && matches(d, database) && matches(u, user) {
            return Ok(Some(password.clone()));
        }
    }
    Ok(None)
}

/// The colon-separated fields of a password file line, unescaped.
fn pgpass_fields(line: &str) -> Vec<String> {
    let mut fields = vec![String::new()];
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let (Some(next), Some(field)) = (chars.next(), fields.last_mut()) {
                    field.push(next);
                }
            }
            ':' if fields.len() < 5 => fields.push(String::new()),
            c => {
                if let Some(field) = fields.last_mut() {
                    field.push(c);
                }
            }
        }
    }
    fields
}

/// sqlx's TLS failure in words an operator acts on (rustls's error names, as sqlx
/// passes them on, are matched by their text: sqlx boxes them).
fn tls_message(error: &str) -> String {
    if error.contains("UnknownIssuer") || error.contains("BadSignature") {
        format!("the server's certificate is not signed by the CA in sslrootcert ({error})")
    } else if error.contains("NotValidForName") {
        format!("the server's certificate is not valid for the host name in DATABASE_URL ({error})")
    } else if error.contains("does not support") {
        format!("the server does not accept SSL but sslmode asks for it ({error})")
    } else {
        error.to_owned()
    }
}

/// Session settings of every service connection.
///
/// `plan_cache_mode = force_custom_plan`: sqlx keeps prepared statements for the life
/// of a connection, and Postgres switches a prepared statement to a generic plan after
/// five executions. A generic plan made while `es.events` was small scans the table
/// sequentially, and keeps doing so when it holds millions of rows (measured: throughput
/// fell from ~4,500 to ~650 deposits/s within two minutes of a fresh start). Custom
/// plans cost a little planning per statement and always see the table's real size.
pub fn session_options(options: PgConnectOptions) -> PgConnectOptions {
    options.options([("plan_cache_mode", "force_custom_plan")])
}

/// Applies every migration not yet applied. Safe when several services start at once:
/// sqlx serializes runs with an advisory lock. A migration applied that this build does
/// not know is no error: a newer build ran it (the expand step of a rolling update,
/// docs/decisions/0038), and this one keeps working until it is replaced.
pub async fn migrate(pool: &PgPool) -> Result<(), StartupError> {
    let migrator = sqlx::migrate::Migrator {
        migrations: migrations::MIGRATOR.migrations.clone(),
        ignore_missing: true,
        ..sqlx::migrate::Migrator::DEFAULT
    };
    migrator.run(pool).await?;
    Ok(())
}

/// With `MIGRATE_ON_START=false`: applies nothing, and refuses to start on a database
/// that lacks a migration this build needs.
pub async fn require_migrated(pool: &PgPool) -> Result<(), StartupError> {
    let applied: Vec<i64> = sqlx::query_scalar("select version from _sqlx_migrations where success")
        .fetch_all(pool)
        .await
        .or_else(|e| match &e {
            // no migration table: nothing was ever applied
            sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(Vec::new()),
            _ => Err(e),
        })
        .map_err(StartupError::Applied)?;
    let missing: Vec<String> = migrations::MIGRATOR
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| format!("{} ({})", m.version, m.description))
        .collect();
    if missing.is_empty() { Ok(()) } else { Err(StartupError::NotMigrated(missing.join(", "))) }
}

/// Migrates, or with `MIGRATE_ON_START=false` checks that it needs not.
pub async fn migrate_or_check(pool: &PgPool, args: &DatabaseArgs) -> Result<(), StartupError> {
    if args.migrate_on_start { migrate(pool).await } else { require_migrated(pool).await }
}

/// What a service's `main` does before building its state: logging and tracing (as
/// `service`), then the database (waiting for it, then migrating).
pub async fn boot(service: &str, args: &crate::config::ServiceArgs) -> anyhow::Result<PgPool> {
    crate::telemetry::init(service, args.log.log_format, args.log.otel_exporter_otlp_endpoint.as_deref());
    args.app.check(Some(args.database.database_url.expose()), None).map_err(anyhow::Error::msg)?;
    let pool = connect(&args.database).await?;
    migrate_or_check(&pool, &args.database).await?;
    Ok(pool)
}

/// Binds `addr` and serves `app` until SIGINT or SIGTERM, then drains requests in flight.
pub async fn serve_until_signal(service: &str, addr: std::net::SocketAddr, app: axum::Router) -> anyhow::Result<()> {
    serve_with(service, addr, app, crate::shutdown::on_signals(), None).await
}

/// Binds `addr` and serves `app` until `shutdown`; with a background task (a river
/// started with the same token), waits for it to end too.
pub async fn serve_with(
    service: &str,
    addr: std::net::SocketAddr,
    app: axum::Router,
    shutdown: tokio_util::sync::CancellationToken,
    background: Option<tokio::task::JoinHandle<()>>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "{service} listening");
    let served = crate::http::serve(listener, app, shutdown.clone()).await;
    shutdown.cancel();
    let background = match background {
        Some(task) => task.await,
        None => Ok(()),
    };
    crate::telemetry::shutdown().await;
    background?;
    served?;
    tracing::info!("{service} stopped");
    Ok(())
}

/// The parts every command service builds over its pool: the aggregate's repository
/// (with the store's metrics), the token verifier and the HTTP kit.
pub struct CommandParts<A: eventstore::Aggregate> {
    pub repository: eventstore::Repository<A>,
    pub verifier: std::sync::Arc<crate::auth::JwtVerifier>,
    pub kit: crate::http::Kit,
}

impl<A: eventstore::Aggregate> CommandParts<A> {
    pub fn build(
        service: &'static str,
        args: &crate::config::ServiceArgs,
        commands: &crate::config::CommandArgs,
        pool: PgPool,
        openapi: serde_json::Value,
    ) -> anyhow::Result<Self> {
        let registry = prometheus::Registry::new();
        let metrics = eventstore::metrics::StoreMetrics::register(&registry)?;
        let store = eventstore::EventStore::new(pool.clone());
        Ok(CommandParts {
            repository: eventstore::Repository::new(store, commands.repository_config(), metrics),
            verifier: std::sync::Arc::new(crate::auth::JwtVerifier::from_args(&args.auth)?),
            kit: crate::http::Kit::new(service, pool, registry, openapi, &args.http)?,
        })
    }
}

/// Starts the cleanup job of expired HTTP Idempotency-Key records of `repository`'s
/// store unless it is off (`IDEMPOTENCY_CLEANUP_SECS=0`); it runs until `shutdown`.
/// The saga's step records stay.
pub fn start_idempotency_cleanup<A: eventstore::Aggregate>(
    repository: &eventstore::Repository<A>,
    args: &crate::config::IdempotencyArgs,
    shutdown: tokio_util::sync::CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let expiry = args.expiry_config()?;
    let store = repository.store().clone();
    let expired = repository.metrics().idempotency_expired.clone();
    Some(tokio::spawn(eventstore::expiry::run(store, expiry, expired, shutdown)))
}

/// One handle for the tasks that run beside a service's HTTP server: it ends once
/// every one of them has (a task that failed is logged).
pub fn join_background(
    tasks: impl IntoIterator<Item = Option<tokio::task::JoinHandle<()>>>,
) -> tokio::task::JoinHandle<()> {
    let tasks: Vec<_> = tasks.into_iter().flatten().collect();
    tokio::spawn(async move {
        for task in tasks {
            if let Err(error) = task.await {
                tracing::error!(%error, "a background task failed");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_passfile_parameter_is_taken_out_of_the_url() {
        let (url, passfile) =
            take_query_parameter("postgres://u@h/db?sslmode=require&passfile=%2Ftmp%2Fp%20f", "passfile");
        assert_eq!((url.as_str(), passfile.as_deref()), ("postgres://u@h/db?sslmode=require", Some("/tmp/p f")));
        let (url, passfile) = take_query_parameter("postgres://u@h/db?passfile=x", "passfile");
        assert_eq!((url.as_str(), passfile.as_deref()), ("postgres://u@h/db", Some("x")));
        assert!(url_has_password("postgres://u:secret@h/db"));
        assert!(url_has_password("postgres://u@h/db?password=x"));
        assert!(!url_has_password("postgres://u@h:5432/db?sslmode=require"));
    }

    #[test]
    fn a_password_file_line_matches_with_wildcards_and_escapes() {
        let dir = std::env::temp_dir().join(format!("pgpass-{}", uuid::Uuid::now_v7().simple()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let path = dir.join("pgpass");
        std::fs::write(&path, "# comment\nother:5432:*:u:nope\n127.0.0.1:*:bank:u:s\\:cret\n").expect("written");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
        let found = pgpass_password(&path, "127.0.0.1", 5433, "bank", "u").expect("readable");
        assert_eq!(found.as_deref(), Some("s:cret"));
        assert_eq!(pgpass_password(&path, "127.0.0.1", 5433, "other", "u").expect("readable"), None);
        let options =
            connect_options(&format!("postgres://u@127.0.0.1:5433/bank?passfile={}", path.display())).expect("valid");
        let url = sqlx::ConnectOptions::to_url_lossy(&options);
        assert_eq!(url.password(), Some("s%3Acret"));
        std::fs::remove_dir_all(&dir).expect("removed");
    }
}
