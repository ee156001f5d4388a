//! A rolling update under load: three instances of account- and transfer-service and
//! two of every other process behind one gateway (`*_SERVICE_URLS`); deposits and
//! transfers keep flowing through the gateway while every instance is stopped (SIGTERM)
//! and started again, one at a time. No request fails with anything but a business
//! 4xx, no deposit is lost or doubled, every transfer settles, the views match the
//! store and each currency's books balance.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tests::{Api, Customer, token, wait_for};
use uuid::Uuid;

/// One process of the fleet, started again on its port after each stop.
struct Instance {
    binary: &'static str,
    port: u16,
    env: Vec<(&'static str, String)>,
    child: Option<tokio::process::Child>,
}

impl Instance {
    async fn start(binary: &'static str, addr_var: &'static str, common: &[(&'static str, String)]) -> Self {
        let port = tests::free_port();
        let mut env = common.to_vec();
        env.push((addr_var, format!("127.0.0.1:{port}")));
        let child = Some(tests::spawn_binary(binary, port, &env).await);
        let instance = Instance { binary, port, env, child };
        instance.ready().await;
        instance
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    async fn ready(&self) {
        let (client, url) = (reqwest::Client::new(), format!("{}/ready", self.url()));
        wait_for(Duration::from_secs(30), &format!("{} to be ready", self.binary), || {
            let request = client.get(&url).send();
            async move { request.await.is_ok_and(|r| r.status() == 200).then_some(()) }
        })
        .await;
    }

    /// SIGTERM (it must exit cleanly), then the same binary on the same port, ready.
    async fn restart(&mut self) {
        tests::terminate(self.child.take().unwrap()).await;
        self.child = Some(tests::spawn_binary(self.binary, self.port, &self.env).await);
        self.ready().await;
    }
}

/// What the clients saw: every answer by status and code, and what succeeded.
#[derive(Default)]
struct Seen {
    answers: BTreeMap<String, u64>,
    deposited: i64,
    deposits: i64,
    transfers: Vec<Uuid>,
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn every_instance_restarted_one_at_a_time_under_load_fails_no_request_and_loses_nothing(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect.clone()).await;
    let rapids = tests::fresh_stream(4).await;
    let common: Vec<(&'static str, String)> = vec![
        ("DATABASE_URL", tests::database_url(&connect)),
        ("KINESIS_STREAM", rapids.stream().to_owned()),
        ("TAILER_SOURCE", "poll".into()),
        ("RIVER_LEASE_MS", "3000".into()),
        ("RIVER_RENEW_MS", "300".into()),
        ("RIVER_IDLE_POLL_MS", "50".into()),
        // not ready for a while before it stops listening: the gateway (checking every
        // 200 ms) sends it nothing new by then
        ("SHUTDOWN_DRAIN_MS", "600".into()),
        ("MAX_IN_FLIGHT", "4096".into()),
    ];
    let mut fleet = Vec::new();
    for (binary, addr, n) in [
        ("tailer", "TAILER_ADDR", 2),
        ("account-service", "ACCOUNT_SERVICE_ADDR", 3),
        ("transfer-service", "TRANSFER_SERVICE_ADDR", 3),
        ("query-service", "QUERY_SERVICE_ADDR", 2),
        ("view-updater", "VIEW_UPDATER_ADDR", 2),
        ("event-bus", "EVENT_BUS_ADDR", 2),
    ] {
        for _ in 0..n {
            fleet.push(Instance::start(binary, addr, &common).await);
        }
    }
    let urls =
        |binary: &str| fleet.iter().filter(|i| i.binary == binary).map(Instance::url).collect::<Vec<_>>().join(",");
    let port = tests::free_port();
    let mut gateway_env = common.clone();
    gateway_env.extend([
        ("GATEWAY_ADDR", format!("127.0.0.1:{port}")),
        ("GATEWAY_ADMIN_ADDR", format!("127.0.0.1:{}", tests::free_port())),
        ("ACCOUNT_SERVICE_URLS", urls("account-service")),
        ("TRANSFER_SERVICE_URLS", urls("transfer-service")),
        ("QUERY_SERVICE_URLS", urls("query-service")),
        ("EVENT_BUS_URLS", urls("event-bus")),
        ("UPSTREAM_CHECK_MS", "200".into()),
        ("RATE_LIMIT_PER_S", "100000".into()),
        ("RATE_LIMIT_BURST", "100000".into()),
    ]);
    let _gateway = tests::spawn_binary("gateway", port, &gateway_env).await;
    let api = Api::new(&format!("http://127.0.0.1:{port}/api"));

    // ten accounts of alice's, 1,000 each
    let alice = token("alice", Customer);
    let mut accounts = Vec::new();
    for _ in 0..10 {
        accounts.push(api.open_account(&alice, "EUR", 1_000).await);
    }
    tests::views_caught_up(&pool).await;

    // the load: deposits (a teller) and transfers (alice) with Idempotency-Keys, and
    // reads, from four clients, until told to stop
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..4u64)
        .map(|c| {
            let (api, seen, stop, accounts, alice) =
                (api.clone(), seen.clone(), stop.clone(), accounts.clone(), alice.clone());
            tokio::spawn(async move {
                let teller = tests::teller_token();
                let mut n = c;
                while !stop.load(Ordering::Relaxed) {
                    n += 4;
                    let (a, b) = (accounts[(n % 10) as usize], accounts[((n * 7 + 3) % 10) as usize]);
                    let key = Uuid::now_v7().to_string();
                    let (what, reply) = match n % 3 {
                        0 => {
                            let reply = api
                                .post(&format!("/accounts/{a}/deposits"))
                                .token(&teller)
                                .idempotency_key(&key)
                                .json(json!({"amount": 10, "currency": "EUR"}))
                                .send_result()
                                .await;
                            ("deposit", reply)
                        }
                        1 if a != b => {
                            let reply = api
                                .post("/transfers")
                                .token(&alice)
                                .idempotency_key(&key)
                                .json(json!({"from": a, "to": b, "amount": 7, "currency": "EUR"}))
                                .send_result()
                                .await;
                            ("transfer", reply)
                        }
                        _ => ("read", api.get(&format!("/accounts/{a}")).token(&alice).send_result().await),
                    };
                    let mut seen = seen.lock().unwrap();
                    let answer = match &reply {
                        Ok(r) if r.status < 400 => format!("{what} {}", r.status),
                        Ok(r) => format!("{what} {} {}", r.status, r.code()),
                        Err(e) => format!("{what} transport error: {e}"),
                    };
                    *seen.answers.entry(answer).or_default() += 1;
                    match (what, reply) {
                        ("deposit", Ok(r)) if r.status == 200 => {
                            seen.deposits += 1;
                            seen.deposited += 10;
                        }
                        ("transfer", Ok(r)) if r.status == 201 => {
                            seen.transfers.push(r.body["id"].as_str().unwrap().parse().unwrap());
                        }
                        _ => {}
                    }
                }
            })
        })
        .collect();
    let progress = || {
        let seen = seen.lock().unwrap();
        seen.deposits + seen.transfers.len() as i64
    };

    // every instance, one at a time, each after some load reached the fleet
    for instance in &mut fleet {
        let before = progress();
        wait_for(Duration::from_secs(30), "the load to go on", || async { (progress() >= before + 20).then_some(()) })
            .await;
        instance.restart().await;
    }
    let before = progress();
    wait_for(Duration::from_secs(30), "the load to go on", || async { (progress() >= before + 20).then_some(()) })
        .await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }

    let seen = Arc::try_unwrap(seen).ok().unwrap().into_inner().unwrap();
    // only the bank's own answers: successes, and a business refusal
    let expected = ["deposit 200", "transfer 201", "read 200", "transfer 422 insufficient_funds"];
    let unexpected: Vec<_> = seen.answers.iter().filter(|(answer, _)| !expected.contains(&answer.as_str())).collect();
    assert!(
        unexpected.is_empty(),
        "answers besides successes and business refusals: {unexpected:?} (all: {:?})",
        seen.answers
    );
    assert!(seen.deposits > 20 && seen.transfers.len() > 20, "{:?}", seen.answers);

    // every transfer settled, every view at its stream's version
    wait_for(Duration::from_secs(60), "every transfer to settle", || async {
        let open: i64 = sqlx::query_scalar(
            "select count(*) from (select stream_id from es.events where stream_type = 'transfer' group by stream_id
                                   having not bool_or(type in ('transfer.completed', 'transfer.failed'))) t",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        (open == 0).then_some(())
    })
    .await;
    let created: i64 = sqlx::query_scalar("select count(*) from es.events where type = 'transfer.created'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(created, seen.transfers.len() as i64, "a transfer created twice, or one answered and not stored");
    tests::views_caught_up(&pool).await;

    // no deposit lost or doubled: the store holds each one answered 200, once
    let deposits: i64 = sqlx::query_scalar("select count(*) from es.events where type = 'account.deposited'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(deposits, seen.deposits + 10, "the answered deposits and the 10 opening ones");
    // the money: what came in is what the accounts hold (transfers move, never make)
    let held: i64 = sqlx::query_scalar("select sum(balance)::int8 from views.accounts where owner = 'alice'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(held, 10 * 1_000 + seen.deposited);
    let report = ledger::check_now(&pool).await.unwrap();
    assert!(report.balanced, "{report:?}");
    assert_eq!(report.imbalance.get("EUR").copied().unwrap_or(0), 0);
}
