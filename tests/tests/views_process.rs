//! The real view-updater binary, SIGKILLed during a load and restarted: the views end
//! equal to a full replay of the event store (`view-updater rebuild --verify`).
#![allow(clippy::unwrap_used)]

use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;
use tests::{Api, Customer, token};

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_view_updater_killed_during_a_load_ends_equal_to_a_replay(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect.clone()).await;
    let url = tests::database_url(&connect);
    let rapids = tests::fresh_stream(2).await;
    let env = |extra: &[(&'static str, String)]| {
        let mut env = vec![
            ("DATABASE_URL", url.clone()),
            ("KINESIS_STREAM", rapids.stream().to_owned()),
            ("RIVER_LEASE_MS", "1500".into()),
            ("RIVER_RENEW_MS", "300".into()),
            ("RIVER_IDLE_POLL_MS", "50".into()),
        ];
        env.extend_from_slice(extra);
        env
    };
    let port = tests::free_port();
    let _tailer = tests::spawn_binary(
        "tailer",
        port,
        &env(&[("TAILER_SOURCE", "poll".into()), ("TAILER_ADDR", format!("127.0.0.1:{port}"))]),
    )
    .await;
    let port = tests::free_port();
    let _accounts = tests::spawn_binary(
        "account-service",
        port,
        &env(&[("RIVER_ENABLED", "false".into()), ("ACCOUNT_SERVICE_ADDR", format!("127.0.0.1:{port}"))]),
    )
    .await;
    let accounts = Api::new(&format!("http://127.0.0.1:{port}"));
    let view_updater = || {
        let port = tests::free_port();
        let env = env(&[("VIEW_UPDATER_ADDR", format!("127.0.0.1:{port}"))]);
        async move { tests::spawn_binary("view-updater", port, &env).await }
    };
    let mut updater = view_updater().await;

    let alice = token("alice", Customer);
    let mut ids = Vec::new();
    for _ in 0..10 {
        let reply = accounts.post("/accounts").token(&alice).json(json!({"currency": "EUR"})).send().await;
        ids.push(reply.id());
    }
    let load = tokio::spawn({
        let (accounts, ids) = (accounts.clone(), ids.clone());
        async move {
            let clients = (0..8).map(|c| {
                let (accounts, ids) = (accounts.clone(), ids.clone());
                async move {
                    for n in 0..60 {
                        let path = format!("/accounts/{}/deposits", ids[(c + n) % ids.len()]);
                        accounts
                            .post(&path)
                            .token(&tests::teller_token())
                            .json(json!({"amount": 1, "currency": "EUR"}))
                            .send()
                            .await
                            .expect(200);
                    }
                }
            });
            futures::future::join_all(clients).await;
        }
    });
    // killed once the views have applied 50, then 150 of the 480 deposits
    for applied_before_kill in [50i64, 150] {
        tests::wait_for(Duration::from_secs(20), "the views to move", || async {
            let applied: i64 =
                sqlx::query_scalar("select count(*) from views.account_transactions").fetch_one(&pool).await.unwrap();
            (applied >= applied_before_kill).then_some(())
        })
        .await;
        tests::kill(updater).await;
        updater = view_updater().await;
    }
    load.await.unwrap();
    tests::views_caught_up(&pool).await;

    let out = tokio::process::Command::new(tests::binary("view-updater"))
        .args(["rebuild", "--verify", "--quiet"])
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "error")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains(", 0 differences"), "{stdout}");
    let total: i64 =
        sqlx::query_scalar("select sum(balance)::int8 from views.accounts").fetch_one(&pool).await.unwrap();
    assert_eq!(total, 8 * 60);
    tests::kill(updater).await;
}
