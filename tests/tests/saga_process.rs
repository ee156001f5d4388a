//! The saga across real processes: the tailer, two account-service instances sharing
//! the river `accounts`, and two transfer-service instances sharing `transfers`. One account-service instance is
//! SIGKILLed while transfers run; the other takes its shards over when the leases
//! expire, and every transfer settles with no money created, lost or moved twice.
#![allow(clippy::unwrap_used)]

use futures::StreamExt;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;
use tests::{Api, Customer, token};

fn common(url: &str, stream: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", url.to_owned()),
        ("KINESIS_STREAM", stream.to_owned()),
        ("RIVER_LEASE_MS", "2000".into()),
        ("RIVER_RENEW_MS", "300".into()),
        ("RIVER_SHARD_SYNC_MS", "1000".into()),
        ("RIVER_IDLE_POLL_MS", "20".into()),
    ]
}

async fn start(
    name: &str,
    addr_var: &'static str,
    mut env: Vec<(&'static str, String)>,
) -> (tokio::process::Child, Api) {
    let port = tests::free_port();
    env.push((addr_var, format!("127.0.0.1:{port}")));
    let child = tests::spawn_binary(name, port, &env).await;
    (child, Api::new(&format!("http://127.0.0.1:{port}")))
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn an_account_service_killed_during_transfers_loses_and_doubles_nothing(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect.clone()).await;
    let url = tests::database_url(&connect);
    let rapids = tests::fresh_stream(2).await;
    let env = common(&url, rapids.stream());
    let mut tailer_env = env.clone();
    tailer_env.extend([("TAILER_SOURCE", "poll".to_string()), ("TAILER_SLOT", "poll".to_string())]);
    let (_tailer, _) = start("tailer", "TAILER_ADDR", tailer_env).await;
    let (doomed, accounts) = start("account-service", "ACCOUNT_SERVICE_ADDR", env.clone()).await;
    let (_survivor, _) = start("account-service", "ACCOUNT_SERVICE_ADDR", env.clone()).await;
    // two transfer-service instances too: each one's cached transfers go stale when
    // the other's river moves them on
    let (_transfer_service, transfers) = start("transfer-service", "TRANSFER_SERVICE_ADDR", env.clone()).await;
    let (_transfer_service_2, transfers_2) = start("transfer-service", "TRANSFER_SERVICE_ADDR", env.clone()).await;

    let alice = token("alice", Customer);
    let mut ids = Vec::new();
    for _ in 0..10 {
        let reply = accounts
            .post("/accounts")
            .token(&tests::teller_token())
            .json(json!({"currency": "EUR", "initial_deposit": 1000, "owner": "alice"}))
            .send()
            .await;
        ids.push(reply.id());
    }
    let load = tokio::spawn({
        let (instances, alice, ids) = ([transfers.clone(), transfers_2.clone()], alice.clone(), ids.clone());
        async move {
            futures::stream::iter(0..100)
                .map(|n| {
                    let transfers = &instances[n % 2];
                    let from = rand::random_range(0..ids.len());
                    let to = (from + rand::random_range(1..ids.len())) % ids.len();
                    let body = json!({"from": ids[from], "to": ids[to], "amount": rand::random_range(1..=400), "currency": "EUR"});
                    let request = transfers.post("/transfers").token(&alice).json(body).send();
                    async move { request.await.expect(201).clone() }
                })
                .buffer_unordered(8)
                .collect::<Vec<_>>()
                .await
        }
    });
    // kill one instance once the saga is under way
    tests::wait_for(Duration::from_secs(30), "debits to start", || async {
        let debits: i64 = sqlx::query_scalar("select count(*) from es.events where type = 'account.debited'")
            .fetch_one(&pool)
            .await
            .unwrap();
        (debits >= 10).then_some(())
    })
    .await;
    tests::kill(doomed).await;
    let created = load.await.unwrap();
    assert_eq!(created.len(), 100);

    tests::wait_for(Duration::from_secs(60), "every transfer to settle", || async {
        let settled: i64 = sqlx::query_scalar(
            "select count(*) from es.events where type in ('transfer.completed', 'transfer.failed')",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (settled == 100).then_some(())
    })
    .await;
    // no saga step appended twice
    let doubled: Vec<(String, String, i64)> = sqlx::query_as(
        "select data->>'transfer_id', type, count(*) from es.events
         where stream_type = 'account' and data ? 'transfer_id' group by 1, 2 having count(*) > 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(doubled.is_empty(), "{doubled:?}");
    let store = eventstore::EventStore::new(pool.clone());
    let mut total = 0;
    for id in &ids {
        total += store.load::<bank_domain::account::Account>(*id).await.unwrap().unwrap().state.balance;
    }
    assert_eq!(total, 10 * 1000);
    // the survivor reads every shard of the river now
    let owners: Vec<Option<String>> = sqlx::query_scalar(
        "select distinct owner from rapids.river_shards where river = 'accounts' and finished_at is null",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(owners.len(), 1, "{owners:?}");
    assert!(owners[0].is_some());
}
