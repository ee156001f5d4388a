//! TLS to Postgres against a cluster that accepts TLS connections only (scripts/test
//! starts it, with a CA of its own, and sets `TLS_DATABASE_URL` with
//! `sslmode=verify-full&sslrootcert=…` and `TLS_OTHER_CA`, a CA that signed nothing):
//! pools and the tailer's replication connection encrypt and verify the server, a
//! plain connection is refused, a wrong CA is refused with a clear error. Without
//! `TLS_DATABASE_URL` each test prints a note and passes.
#![allow(clippy::unwrap_used)]

use service_kit::config::DatabaseArgs;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::str::FromStr;
use std::time::Duration;
use tailer::publish::Publisher;
use tailer::replication::ReplicationTarget;
use tailer::wal::WalSource;
use tailer::{Tailer, TailerConfig, TailerMetrics};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// `TLS_DATABASE_URL`, or `None` (with a note) when scripts/test's TLS phase is not running.
fn tls_url(test: &str) -> Option<String> {
    let url = std::env::var("TLS_DATABASE_URL").ok();
    if url.is_none() {
        println!("{test}: skipped, TLS_DATABASE_URL is not set (scripts/test sets it in a full run)");
    }
    url
}

/// `url` with `sslmode` (and `sslrootcert`) replaced.
fn with_tls(url: &str, mode: &str, root_cert: Option<&str>) -> String {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut pairs: Vec<String> = query
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("sslmode=") && !p.starts_with("sslrootcert="))
        .map(str::to_owned)
        .collect();
    pairs.push(format!("sslmode={mode}"));
    if let Some(root_cert) = root_cert {
        pairs.push(format!("sslrootcert={root_cert}"));
    }
    format!("{base}?{}", pairs.join("&"))
}

fn other_ca() -> String {
    std::env::var("TLS_OTHER_CA").expect("TLS_OTHER_CA is set with TLS_DATABASE_URL (scripts/test)")
}

/// A fresh, migrated database on the TLS cluster, and a function that drops it.
async fn fresh_database(url: &str) -> (PgPool, String, PgPool) {
    let admin_options = PgConnectOptions::from_str(url).unwrap();
    let admin = PgPoolOptions::new().max_connections(2).connect_with(admin_options.clone()).await.unwrap();
    let name = format!("tls_{}", Uuid::now_v7().simple());
    sqlx::query(&format!("create database {name}")).execute(&admin).await.unwrap();
    let pool = PgPoolOptions::new().max_connections(20).connect_with(admin_options.database(&name)).await.unwrap();
    migrations::MIGRATOR.run(&pool).await.unwrap();
    (pool, name, admin)
}

async fn drop_database(admin: &PgPool, name: &str) {
    sqlx::query(&format!("drop database {name} with (force)")).execute(admin).await.unwrap();
}

#[tokio::test]
async fn a_pool_connects_over_tls_and_verifies_the_server() {
    let Some(url) = tls_url("a_pool_connects_over_tls_and_verifies_the_server") else { return };
    let pool = service_kit::startup::connect(&DatabaseArgs::new(url)).await.unwrap();
    let ssl: bool =
        sqlx::query_scalar("select ssl from pg_stat_ssl where pid = pg_backend_pid()").fetch_one(&pool).await.unwrap();
    assert!(ssl, "the pool's connection is encrypted");
    // LISTEN connections are built from the pool's options
    let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await.unwrap();
    listener.listen("tls_test").await.unwrap();
    let listening: bool = sqlx::query_scalar(
        "select bool_and(s.ssl) from pg_stat_activity a join pg_stat_ssl s using (pid)
         where a.query like 'LISTEN%' and a.datname = current_database()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(listening, "the LISTEN connection is encrypted");
}

#[tokio::test]
async fn a_plain_connection_is_refused_by_the_server() {
    let Some(url) = tls_url("a_plain_connection_is_refused_by_the_server") else { return };
    let plain = with_tls(&url, "disable", None);
    let mut args = DatabaseArgs::new(plain.clone());
    args.database_connect_timeout_secs = 0;
    let error = service_kit::startup::connect(&args).await.expect_err("refused");
    assert!(error.to_string().contains("no encryption"), "{error}");

    let target = ReplicationTarget::new(&PgConnectOptions::from_str(&plain).unwrap());
    let error = target.probe().await.expect_err("refused");
    // a logical replication connection (replication=database) is matched by the
    // database lines of pg_hba.conf, like any other connection to that database
    assert!(error.message.contains("no pg_hba.conf entry"), "{}", error.message);
    assert!(error.message.contains("no encryption"), "{}", error.message);
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused_with_a_clear_error() {
    let Some(url) = tls_url("a_server_certificate_from_another_ca_is_refused_with_a_clear_error") else { return };
    let other = other_ca();
    for mode in ["verify-full", "verify-ca"] {
        let wrong = with_tls(&url, mode, Some(&other));
        let error = service_kit::startup::connect(&DatabaseArgs::new(wrong.clone())).await.expect_err("refused");
        assert!(
            error.to_string().contains("the server's certificate is not signed by the CA in sslrootcert"),
            "pool, {mode}: {error}"
        );
        let target = ReplicationTarget::new(&PgConnectOptions::from_str(&wrong).unwrap());
        let error = target.probe().await.expect_err("refused");
        assert_eq!(
            error.message, "the server's certificate is not signed by the CA in sslrootcert",
            "replication, {mode}"
        );
    }
    // the right CA: every mode that encrypts logs in
    let ca = root_cert(&url);
    for mode in ["prefer", "require", "verify-ca", "verify-full"] {
        let options = PgConnectOptions::from_str(&with_tls(&url, mode, Some(&ca))).unwrap();
        ReplicationTarget::new(&options).probe().await.unwrap_or_else(|e| panic!("{mode}: {e}"));
    }
}

/// The `sslrootcert` of a URL.
fn root_cert(url: &str) -> String {
    let query = url.split_once('?').map_or("", |(_, q)| q);
    query.split('&').find_map(|p| p.strip_prefix("sslrootcert=")).expect("TLS_DATABASE_URL has sslrootcert").to_owned()
}

#[tokio::test]
async fn the_wal_source_streams_events_over_tls() {
    let Some(url) = tls_url("the_wal_source_streams_events_over_tls") else { return };
    let (pool, name, admin) = fresh_database(&url).await;
    let rapids = tests::fresh_stream(2).await;
    let slot = format!("t_{}", Uuid::now_v7().simple());
    let shutdown = CancellationToken::new();
    let tailer = tokio::spawn({
        let (pool, slot, rapids, shutdown) = (pool.clone(), slot.clone(), rapids.clone(), shutdown.clone());
        async move {
            let metrics = TailerMetrics::register(&prometheus::Registry::new()).unwrap();
            let config = TailerConfig { batch_size: 500, idle_poll: Duration::from_millis(100), in_flight: 4 };
            let source = WalSource::new(pool.clone(), &slot);
            Tailer { pool, source, publisher: Publisher::new(rapids), metrics, config }.run(shutdown).await.unwrap();
        }
    });
    let written = tests::load::write_load(&pool, 4, 20).await;
    tests::load::assert_delivered(&rapids, &written).await;
    // the walsender serving the slot talks TLS
    let ssl: Option<bool> = sqlx::query_scalar(
        "select s.ssl from pg_replication_slots r join pg_stat_ssl s on s.pid = r.active_pid where r.slot_name = $1",
    )
    .bind(&slot)
    .fetch_optional(&pool)
    .await
    .unwrap();
    assert_eq!(ssl, Some(true), "the replication connection of slot {slot} is encrypted");
    shutdown.cancel();
    tailer.await.unwrap();
    WalSource::drop_slot(&pool, &slot).await.unwrap();
    pool.close().await;
    drop_database(&admin, &name).await;
}
