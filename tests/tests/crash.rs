//! The real account-service binary, killed with SIGKILL in the middle of a load of
//! deposits, loses no acknowledged deposit: every 2xx the clients saw is an event.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tests::{Api, Customer, token};
use tokio::process::Child;

/// Starts the binary on the test's database and waits until it answers.
async fn start(database_url: &str, port: u16) -> Child {
    let env = [
        ("DATABASE_URL", database_url.to_owned()),
        ("ACCOUNT_SERVICE_ADDR", format!("127.0.0.1:{port}")),
        ("JWT_SECRET", tests::secret()),
    ];
    tests::spawn_binary("account-service", port, &env).await
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_sigkill_during_deposits_loses_no_acknowledged_deposit(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect.clone()).await;
    let url = tests::database_url(&connect);
    let port = tests::free_port();
    let child = start(&url, port).await;
    let api = Api::new(&format!("http://127.0.0.1:{port}"));
    let alice = token("alice", Customer);
    let id = api.open_account(&alice, "EUR", 0).await;

    // 8 clients deposit distinct amounts until the service stops answering
    let acked: Arc<Mutex<Vec<(i64, i64)>>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..8_i64 {
        let (api, acked) = (api.clone(), acked.clone());
        clients.push(tokio::spawn(async move {
            for i in 0.. {
                let amount = c + 8 * i + 1;
                let req = api
                    .post(&format!("/accounts/{id}/deposits"))
                    .token(&tests::teller_token())
                    .json(json!({"amount": amount, "currency": "EUR"}));
                let sent = tokio::time::timeout(Duration::from_secs(10), req.send_result()).await;
                match sent {
                    Ok(Ok(reply)) if reply.status == 200 => acked.lock().unwrap().push((reply.version(), amount)),
                    Ok(Ok(reply)) => panic!("unexpected answer before the kill: {reply:?}"),
                    _ => return,
                }
            }
        }));
    }
    // kill it once a good number of deposits were acknowledged
    let (acked_so_far, clients_ref) = (&acked, &clients);
    tests::wait_for(Duration::from_secs(60), "150 acknowledged deposits", || async move {
        assert!(clients_ref.iter().all(|c| !c.is_finished()), "a client stopped before the kill (see its panic)");
        (acked_so_far.lock().unwrap().len() >= 150).then_some(())
    })
    .await;
    tests::kill(child).await;
    for client in clients {
        client.await.unwrap();
    }

    let acked = acked.lock().unwrap().clone();
    let stored: Vec<(i32, String, serde_json::Value)> = tests::stream_events(&pool, id).await;
    let stored_deposits: BTreeSet<(i64, i64)> = stored
        .iter()
        .filter(|e| e.1 == "account.deposited")
        .map(|e| (i64::from(e.0), e.2["amount"].as_i64().unwrap()))
        .collect();
    for (version, amount) in &acked {
        assert!(
            stored_deposits.contains(&(*version, *amount)),
            "acknowledged deposit of {amount} at version {version} is lost"
        );
    }
    // the stream is whole: contiguous versions, and each balance follows from the last
    let mut balance = 0;
    for (i, (version, _, data)) in stored.iter().enumerate() {
        assert_eq!(*version, i as i32 + 1);
        if let Some(amount) = data["amount"].as_i64() {
            balance += amount;
            assert_eq!(data["balance_after"].as_i64(), Some(balance));
        }
    }

    // after a restart, the service carries on from exactly what was stored
    let port = tests::free_port();
    let _child = start(&url, port).await;
    let api = Api::new(&format!("http://127.0.0.1:{port}"));
    let read = api.get(&format!("/accounts/{id}")).token(&alice).send().await;
    assert_eq!((read.expect(200)["balance"].as_i64(), read.version()), (Some(balance), stored.len() as i64));
    let next = api
        .post(&format!("/accounts/{id}/deposits"))
        .token(&tests::teller_token())
        .json(json!({"amount": 1, "currency": "EUR"}))
        .send()
        .await;
    assert_eq!((next.expect(200)["balance"].as_i64(), next.version()), (Some(balance + 1), stored.len() as i64 + 1));
}
