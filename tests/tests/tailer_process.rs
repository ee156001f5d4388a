//! The real tailer binary: SIGKILLed (and, every other time, stopped with SIGTERM)
//! again and again during a load, it loses nothing; two instances run, one is
//! active, and the other takes over when it dies.
#![allow(clippy::unwrap_used)]

use rapids::Rapids;
use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;
use tailer::wal::WalSource;
use tokio::process::Child;
use uuid::Uuid;

struct Tailer {
    child: Child,
    port: u16,
}

/// Starts the binary and waits until it answers `/health`.
async fn start(database_url: &str, rapids: &Rapids, slot: &str, source: &str) -> Tailer {
    let port = tests::free_port();
    let env = [
        ("DATABASE_URL", database_url.to_owned()),
        ("KINESIS_STREAM", rapids.stream().to_owned()),
        ("TAILER_SLOT", slot.to_owned()),
        ("TAILER_SOURCE", source.to_owned()),
        ("TAILER_ADDR", format!("127.0.0.1:{port}")),
    ];
    Tailer { child: tests::spawn_binary("tailer", port, &env).await, port }
}

impl Tailer {
    async fn is_leader(&self) -> bool {
        let reply = tests::Api::new(&format!("http://127.0.0.1:{}", self.port)).get("/metrics").send_result().await;
        reply.is_ok_and(|r| r.body.as_str().is_some_and(|t| t.lines().any(|l| l == "tailer_is_leader 1")))
    }

    /// Waits until this instance is the active tailer; fails the test after `within`.
    async fn wait_leading(&self, within: Duration, what: &str) {
        tests::wait_for(within, what, || async move { self.is_leader().await.then_some(()) }).await;
    }

    async fn kill(self) {
        tests::kill(self.child).await;
    }
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_tailer_killed_again_and_again_during_a_load_loses_nothing(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect.clone()).await;
    let url = tests::database_url(&connect);
    for source in ["wal", "poll"] {
        let rapids = tests::fresh_stream(2).await;
        let slot = format!("t_{}", Uuid::now_v7().simple());
        let mut tailer = Some(start(&url, &rapids, &slot, source).await);
        let load = tokio::spawn({
            let pool = pool.clone();
            async move { tests::load::write_load(&pool, 8, 60).await }
        });
        let (mut kills_while_leading, mut stops_while_leading, mut during_the_load) = (0, 0, 0);
        // at least two kills and a stop, and on until the load is over
        while !load.is_finished() || kills_while_leading < 2 || stops_while_leading < 1 {
            // kill it (or, every other time, stop it: SIGTERM, and it waits for its
            // requests in flight) while it is the active tailer, at a varying point of
            // its work
            let running = tailer.take().unwrap();
            running.wait_leading(Duration::from_secs(10), "the new tailer to become active").await;
            tokio::time::sleep(Duration::from_millis(rand::random_range(0..150))).await;
            if !load.is_finished() {
                during_the_load += 1;
            }
            if (kills_while_leading + stops_while_leading) % 2 == 0 {
                running.kill().await;
                kills_while_leading += 1;
            } else {
                tests::terminate(running.child).await;
                stops_while_leading += 1;
            }
            tailer = Some(start(&url, &rapids, &slot, source).await);
        }
        let written = load.await.unwrap();
        assert!(
            during_the_load >= 2,
            "{source}: the active tailer was interrupted {during_the_load} times only during the load"
        );
        tests::load::assert_delivered(&rapids, &written).await;
        tailer.take().unwrap().kill().await;
        WalSource::drop_slot(&pool, &slot).await.unwrap();
    }
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_standby_takes_over_when_the_active_tailer_dies(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect.clone()).await;
    let url = tests::database_url(&connect);
    let rapids = tests::fresh_stream(2).await;
    let slot = format!("t_{}", Uuid::now_v7().simple());
    let a = start(&url, &rapids, &slot, "wal").await;
    let b = start(&url, &rapids, &slot, "wal").await;
    let (a_leads, b_leads) = (&a, &b);
    let a_is_leader = tests::wait_for(Duration::from_secs(10), "one tailer to become active", || async move {
        match (a_leads.is_leader().await, b_leads.is_leader().await) {
            (true, true) => panic!("two active tailers"),
            (false, false) => None,
            (a_is_leader, _) => Some(a_is_leader),
        }
    })
    .await;
    let (leader, standby) = if a_is_leader { (a, b) } else { (b, a) };
    let first = tests::load::write_load(&pool, 4, 20).await;
    tests::load::assert_delivered(&rapids, &first).await;

    leader.kill().await;
    standby.wait_leading(Duration::from_secs(5), "the standby to take over").await;
    let second = tests::load::write_load(&pool, 4, 20).await;
    tests::load::assert_delivered(&rapids, &second).await;
    standby.kill().await;
    WalSource::drop_slot(&pool, &slot).await.unwrap();
}

/// The wal source's replication connection logs in with the password of the database
/// URL, by SCRAM-SHA-256 and by MD5 (`scripts/test` requires them of these two roles).
#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn the_replication_connection_logs_in_with_a_password(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect.clone()).await;
    let url = tests::database_url(&connect);
    let (server, database) = url.rsplit_once('/').unwrap();
    let host = server.rsplit_once('@').unwrap().1;
    for (role, encryption) in [("bank_scram", "scram-sha-256"), ("bank_md5", "md5")] {
        // roles are cluster-wide: the first test run creates them
        let mut conn = pool.acquire().await.unwrap();
        sqlx::query(&format!("set password_encryption = '{encryption}'")).execute(&mut *conn).await.unwrap();
        let created =
            sqlx::query(&format!("create role {role} login superuser password 'p@ss w0rd'")).execute(&mut *conn).await;
        if let Err(e) = created {
            let code = e.as_database_error().and_then(|d| d.code()).map(|c| c.into_owned());
            assert_eq!(code.as_deref(), Some("42710"), "creating {role}: {e}");
        }
        drop(conn);
        // the role does need its password, and it is stored for the method under test
        let wrong = sqlx::PgConnection::connect(&format!("postgres://{role}:wrong@{host}/{database}")).await;
        assert!(wrong.is_err(), "{role} logs in only with its password");
        let stored: String = sqlx::query_scalar("select rolpassword from pg_authid where rolname = $1")
            .bind(role)
            .fetch_one(&pool)
            .await
            .unwrap();
        assert!(stored.to_lowercase().starts_with(&encryption[..3]), "{role}'s password is stored as {encryption}");
        let rapids = tests::fresh_stream(1).await;
        let slot = format!("t_{}", Uuid::now_v7().simple());
        let role_url = format!("postgres://{role}:p%40ss%20w0rd@{host}/{database}");
        let tailer = start(&role_url, &rapids, &slot, "wal").await;
        tailer.wait_leading(Duration::from_secs(10), "the tailer to become active").await;
        let written = tests::load::write_load(&pool, 2, 10).await;
        tests::load::assert_delivered(&rapids, &written).await;
        tests::wait_until_true(
            &pool,
            Duration::from_secs(10),
            "the slot to be streamed over the role's connection",
            "select exists (select 1 from pg_stat_replication where application_name = 'rapids tailer' and usename = $1)",
            &[role],
        )
        .await;
        // and what commits now comes over that stream
        let more = tests::load::write_load(&pool, 2, 10).await;
        tests::load::assert_delivered(&rapids, &more).await;
        tailer.kill().await;
        WalSource::drop_slot(&pool, &slot).await.unwrap();
    }
}
