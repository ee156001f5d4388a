//! Rolling updates: a deployment that migrates as a step of its own
//! (`MIGRATE_ON_START=false`), and an older build on a database a newer one migrated.
#![allow(clippy::unwrap_used)]

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;

#[sqlx::test(migrations = false)]
async fn without_migrate_on_start_a_database_lacking_a_migration_is_refused_and_an_older_build_runs_on_a_newer_one(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect.clone()).await;
    let url = tests::database_url(&connect);
    let env = |port: u16, migrate: &str| {
        vec![
            ("DATABASE_URL", url.clone()),
            ("MIGRATE_ON_START", migrate.to_owned()),
            ("RIVER_ENABLED", "false".to_owned()),
            ("ACCOUNT_SERVICE_ADDR", format!("127.0.0.1:{port}")),
        ]
    };
    let schemas = || async {
        let n: i64 = sqlx::query_scalar(
            "select count(*) from information_schema.tables where table_schema in ('es', 'rapids', 'views', 'ledger')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        n
    };

    // nothing applied: it refuses to start, says what to run, and creates nothing
    let run = tokio::process::Command::new(tests::binary("account-service"))
        .envs(env(tests::free_port(), "false"))
        .env("RUST_LOG", "error")
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), run).await.expect("it exits at once").unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("lacks migration(s) 1 (") && stderr.contains("bankctl migrate"), "{stderr}");
    assert_eq!(schemas().await, 0);

    // migrated as a step of its own (what `bankctl migrate` runs): it starts
    service_kit::startup::migrate(&pool).await.unwrap();
    let tables = schemas().await;
    assert!(tables > 10);
    let port = tests::free_port();
    tests::terminate(tests::spawn_binary("account-service", port, &env(port, "false")).await).await;

    // a newer build applied a migration this one does not know (the expand step of an
    // update): this build still starts, migrating or not, and changes nothing
    sqlx::query(
        "insert into _sqlx_migrations (version, description, success, checksum, execution_time)
         values (99990001, 'a newer build', true, '\\x00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    for migrate in ["true", "false"] {
        let port = tests::free_port();
        tests::terminate(tests::spawn_binary("account-service", port, &env(port, migrate)).await).await;
    }
    let applied: i64 = sqlx::query_scalar("select count(*) from _sqlx_migrations").fetch_one(&pool).await.unwrap();
    assert_eq!(applied, migrations::MIGRATOR.iter().count() as i64 + 1);
    assert_eq!(schemas().await, tables);
}
