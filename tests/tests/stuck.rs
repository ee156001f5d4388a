//! Stuck transfers are seen: a transfer whose debit is parked stays `initiated`;
//! transfer-service's `transfers_unsettled` gauge counts it once it is older than
//! `TRANSFER_STUCK_AFTER_SECS`, and `bankctl stuck` lists it with where it stopped.
#![allow(clippy::unwrap_used)]

use bank_domain::transfer::{Memo, TransferCommand};
use bank_domain::{Currency, Money};
use serde_json::{Value, json};
use std::time::Duration;
use tests::{Bank, Customer, token};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn open(bank: &Bank, owner: &str, deposit: i64) -> Uuid {
    bank.accounts.api().open_account(&token(owner, Customer), "EUR", deposit).await
}

/// The value of a gauge without labels in a service's `/metrics`.
async fn gauge(api: &tests::Api, name: &str) -> Option<i64> {
    let text = api.get("/metrics").send().await.expect(200).as_str().unwrap_or_default().to_owned();
    tests::metric(&text, name).map(|v| v as i64)
}

/// `bankctl stuck --older-than <secs>` against the bank's event bus: its JSON.
async fn bankctl_stuck(bank: &Bank, older_than: &str) -> Value {
    let out = tokio::process::Command::new(tests::binary("bankctl"))
        .args(["stuck", "--older-than", older_than])
        .env("BANK_BUS_URL", &bank.bus.base)
        .env("JWT_SECRET", tests::secret())
        .env_remove("BANK_TOKEN")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bankctl stuck: {} / {}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("bankctl stuck printed no JSON ({e}): {stdout}"))
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_transfer_parked_midway_shows_in_the_gauge_and_in_bankctl_stuck(
    options: sqlx::postgres::PgPoolOptions,
    connect: sqlx::postgres::PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    // the gauge with a threshold of 1 s, refreshed every 100 ms
    let config = transfer_service::Config {
        stuck_after_secs: 1,
        stuck_check_ms: 100,
        ..transfer_service::Config::new(tests::service_args(&pool))
    };
    let stop = CancellationToken::new();
    let _stop_gauge = stop.clone().drop_guard();
    transfer_service::start_unsettled_gauge(&config, &bank.transfer_state, stop);

    // a transfer that settles is never counted
    let a = open(&bank, "alice", 1000).await;
    let b = open(&bank, "bob", 0).await;
    let settles = bank
        .transfers
        .api()
        .post("/transfers")
        .token(&token("alice", Customer))
        .json(json!({"from": a, "to": b, "amount": 100, "currency": "EUR"}))
        .send()
        .await;
    let settles = settles.expect(201)["id"].as_str().unwrap().to_owned();

    // a transfer from an account that does not exist (past POST /transfers's checks):
    // its debit fails for good and is parked, so it stays `initiated`
    let stuck = Uuid::now_v7();
    let create = TransferCommand::Create {
        from: Uuid::now_v7(),
        to: b,
        amount: Money::new(250, Currency::parse("EUR").unwrap(), i64::MAX).unwrap(),
        initiated_by: "alice".into(),
        memo: Memo::default(),
    };
    bank.transfer_state
        .transfers
        .execute(stuck, create, eventstore::CommandContext::default(), |_, version| json!({ "version": version }))
        .await
        .unwrap();
    tests::wait_until_true(
        &pool,
        Duration::from_secs(30),
        "the debit of the stuck transfer to be parked",
        "select exists (select 1 from rapids.river_dead_letters where river = 'accounts' and stream_id = $1::uuid)",
        &[&stuck.to_string()],
    )
    .await;
    tests::wait_until_true(
        &pool,
        Duration::from_secs(30),
        "the other transfer to complete in the views",
        "select exists (select 1 from views.transfers where id = $1::uuid and state = 'completed')",
        &[&settles],
    )
    .await;

    // the gauge counts it once it is older than the threshold, and it alone
    let api = bank.transfers.api();
    tests::wait_for(Duration::from_secs(15), "transfers_unsettled to report the stuck transfer", || {
        let api = api.clone();
        async move { (gauge(&api, "transfers_unsettled").await == Some(1)).then_some(()) }
    })
    .await;
    let within_an_hour = transfer_service::count_unsettled(&pool, Duration::from_secs(3600)).await.unwrap();
    assert_eq!(within_an_hour, 0, "younger than the threshold, it is not counted");

    // bankctl lists it, with where it stopped
    let listed = bankctl_stuck(&bank, "1").await;
    assert_eq!(listed["older_than_s"], 1, "{listed}");
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "the settled transfer is not listed: {listed}");
    let item = &items[0];
    assert_eq!(item["id"], stuck.to_string(), "{listed}");
    assert_eq!((item["state"].as_str(), item["version"].as_i64()), (Some("initiated"), Some(1)), "{listed}");
    assert!(item["age_s"].as_f64().unwrap() >= 1.0, "{listed}");
    assert_eq!((item["to_account"].as_str(), item["amount"].as_i64()), (Some(b.to_string().as_str()), Some(250)));
    // younger than --older-than: not listed
    assert_eq!(bankctl_stuck(&bank, "3600").await["items"], json!([]));
}
