//! The ledger end to end, on a real Postgres and Kinesis API server: money enters only
//! through staff or a payment rail (once per reference), the reconciliation finds an
//! unbalanced event written past the aggregate within 10 s (its gauge, `bankctl
//! reconcile` exit 1 naming the account), and 200 concurrent transfers with concurrent
//! payments keep every sample of the books at zero with nothing stuck.
#![allow(clippy::unwrap_used)]

use bank_domain::Currency;
use bank_domain::ledger::BankAccount;
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;
use tests::{Admin, Api, Customer, Service, teller_token, token};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn eur() -> Currency {
    Currency::parse("EUR").unwrap()
}

/// `bankctl reconcile` on the test's database: whether it exited 0, and its report.
async fn bankctl_reconcile(pool: &PgPool) -> (bool, Value) {
    let out = tokio::process::Command::new(tests::binary("bankctl"))
        .arg("reconcile")
        .env("DATABASE_URL", tests::database_url(&pool.connect_options()))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("bankctl reconcile printed no JSON ({e}): {stdout} / {}", String::from_utf8_lossy(&out.stderr))
    });
    (out.status.success(), report)
}

/// A task posted to the bus by `who`: an inbound payment, all on one partition so that
/// the tasks are handled in the order posted.
async fn receive_payment(bus: &Api, who: &str, reference: &str, account: Uuid, amount: i64) -> Uuid {
    let body = json!({"type": "accounts.payment.receive", "source": "rail", "partition_key": "rail-1",
                      "data": {"reference": reference, "account": account, "amount": amount, "currency": "EUR"}});
    let posted = bus.post("/events").token(who).json(body).send().await;
    serde_json::from_value(posted.expect(201)["event_id"].clone()).unwrap()
}

async fn count(pool: &PgPool, sql: &str, id: Uuid) -> i64 {
    sqlx::query_scalar(sql).bind(id).fetch_one(pool).await.unwrap()
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_payment_rail_posts_a_payment_once_per_reference_and_nobody_else_can(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let bus = Api::new(&bank.bus.base);
    let admin = token("root", Admin);
    let rail = token("rail-sepa", Service);
    let alice = token("alice", Customer);
    let account = bank.accounts.api().open_account(&alice, "EUR", 0).await;
    bus.request(reqwest::Method::PUT, "/rivers/refusals/subscriptions/account.task_rejected")
        .token(&admin)
        .send()
        .await
        .expect(200);

    // the rail's payment lands once; the same reference again (a second task) is no
    // second payment; the same reference for another amount, a customer posting a
    // payment, an unknown account, a malformed reference: each refused with a reason
    let handled_before = tests::counter_sum(&bank.account_state.river_metrics.handled);
    receive_payment(&bus, &rail, "sepa-0001", account, 750).await;
    receive_payment(&bus, &rail, "sepa-0001", account, 750).await;
    let mut refused = vec![
        (receive_payment(&bus, &rail, "sepa-0001", account, 999).await, "idempotency_key_reused".to_owned()),
        (receive_payment(&bus, &alice, "self-made", account, 1_000_000).await, "forbidden".to_owned()),
        (receive_payment(&bus, &rail, "sepa-0002", Uuid::now_v7(), 5).await, "account_not_found".to_owned()),
        (receive_payment(&bus, &rail, "with space", account, 5).await, "invalid_body".to_owned()),
    ];
    tests::wait_for(Duration::from_secs(30), "the river accounts to handle the six tasks", || async {
        (tests::counter_sum(&bank.account_state.river_metrics.handled) >= handled_before + 6).then_some(())
    })
    .await;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while seen.len() < refused.len() {
        assert!(tokio::time::Instant::now() < deadline, "only {} refusals: {seen:?}", seen.len());
        let reply = bus
            .post("/rivers/refusals/receive")
            .token(&admin)
            .json(json!({"max_messages": 10, "wait_ms": 500}))
            .send()
            .await;
        for m in reply.expect(200)["messages"].as_array().cloned().unwrap_or_default() {
            let payload = &m["message"]["payload"];
            let task: Uuid = payload["task_id"].as_str().unwrap().parse().unwrap();
            seen.push((task, payload["code"].as_str().unwrap().to_owned()));
        }
    }
    seen.sort();
    refused.sort();
    assert_eq!(seen, refused);
    // one payment, nothing else
    let payments = count(
        &pool,
        "select count(*) from es.events where stream_id = $1 and type = 'account.payment_received'",
        account,
    )
    .await;
    assert_eq!(payments, 1);
    let read = bank.accounts.api().get(&format!("/accounts/{account}")).token(&alice).send().await;
    assert_eq!(read.expect(200)["balance"].as_i64(), Some(750));
    // the money came from the bank's inbound account, which staff read like any account
    tests::views_caught_up(&pool).await;
    let inbound = BankAccount::Inbound.id(eur());
    let read = bank.queries.api().get(&format!("/accounts/{inbound}")).token(&teller_token()).send().await;
    assert_eq!((read.expect(200)["balance"].as_i64(), read.body["owner"].as_str()), (Some(-750), Some("bank:inbound")));
    let (balanced, report) = bankctl_reconcile(&pool).await;
    assert!(balanced, "{report}");
    assert_eq!(report["imbalance"]["EUR"], 0);
    // the operator's page reads the same report; customers do not
    let books = bus.get("/ops/ledger").token(&admin).send().await;
    assert_eq!(
        (books.expect(200)["balanced"].as_bool(), books.body["imbalance"]["EUR"].as_i64()),
        (Some(true), Some(0))
    );
    bus.get("/ops/ledger").token(&alice).send().await.expect_error(403, "forbidden");
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn an_unbalanced_event_written_into_the_store_is_reported_within_ten_seconds(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let api = tests::start_accounts(&pool, |_| {}).await;
    let alice = token("alice", Customer);
    let id = api.api().open_account(&alice, "EUR", 100).await;
    // view-updater's reconciliation, checking every 200 ms, and its metrics
    let (updater, _reconciling) = tests::start_reconciliation(&pool).await;
    let gauge = |text: &str| tests::metric(text, r#"ledger_imbalance_minor{currency="EUR"}"#);
    let metrics = || async { updater.api().get("/metrics").send().await.body.as_str().unwrap_or_default().to_owned() };
    tests::wait_for(Duration::from_secs(10), "a first complete check", || async {
        let text = metrics().await;
        (gauge(&text) == Some(0.0) && tests::metric(&text, "ledger_last_check_age_seconds").is_some_and(|a| a < 5.0))
            .then_some(())
    })
    .await;
    let (balanced, _) = bankctl_reconcile(&pool).await;
    assert!(balanced);

    // a deposit of 5 that says the balance went from 100 to 1,100: written straight
    // into the store, past the aggregate
    tests::write_unbalanced_deposit(&pool, id).await;
    let started = std::time::Instant::now();
    // the two gauges are set one after the other: both are awaited
    tests::wait_for(Duration::from_secs(10), "the gauges to show the imbalance and the finding", || async {
        let text = metrics().await;
        (gauge(&text) == Some(995.0) && tests::metric(&text, "ledger_findings") == Some(1.0)).then_some(())
    })
    .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    let (balanced, report) = bankctl_reconcile(&pool).await;
    assert!(!balanced, "bankctl reconcile exits 1: {report}");
    assert_eq!(report["imbalance"]["EUR"], 995);
    let findings = report["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{report}");
    assert_eq!(
        (findings[0]["kind"].as_str(), findings[0]["account_id"].as_str()),
        (Some("unbalanced"), Some(id.to_string().as_str()))
    );
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn concurrent_transfers_and_payments_keep_every_sample_of_the_books_at_zero(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let bus = Api::new(&bank.bus.base);
    let rail = token("rail-sepa", Service);
    let owners: Vec<String> = (0..10).map(|i| format!("owner{i}")).collect();
    let mut accounts = Vec::new();
    for owner in &owners {
        accounts.push(bank.accounts.api().open_account(&token(owner, Customer), "EUR", 10_000).await);
    }
    // a closed account: transfers to it are refused by the target and refunded
    let closed = bank.accounts.api().open_account(&token("carol", Customer), "EUR", 0).await;
    bank.accounts
        .api()
        .post(&format!("/accounts/{closed}/close"))
        .token(&token("carol", Customer))
        .send()
        .await
        .expect(200);

    // the books are sampled all along, by the reconciliation itself
    let sampling = CancellationToken::new();
    let sampler = tokio::spawn({
        let (pool, stop) = (pool.clone(), sampling.clone());
        async move {
            let mut samples = Vec::new();
            while !stop.is_cancelled() {
                samples.push(ledger::check_now(&pool).await.unwrap());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            samples
        }
    });

    let transfers = bank.transfers.api();
    let load = (0..200).map(|i| {
        // every ninth to the closed account; the others to another owner's account
        let (from, to) = (i % accounts.len(), (i + 1 + i / 10 % 9) % accounts.len());
        let to = if i % 9 == 0 { closed } else { accounts[to] };
        let (who, from) = (token(&owners[i % owners.len()], Customer), accounts[from]);
        let transfers = &transfers;
        async move { transfers.create_transfer(&who, None, from, to, 1 + (i as i64 % 50)).await }
    });
    let references: Vec<String> = (0..40).map(|i| format!("sepa-{i}")).collect();
    let payments = references.iter().enumerate().map(|(i, r)| receive_payment(&bus, &rail, r, accounts[i % 10], 100));
    let outbound = (0..20).map(|i| {
        let (api, owner, account) = (bank.accounts.api(), token(&owners[i % 10], Customer), accounts[i % 10]);
        async move {
            api.post(&format!("/accounts/{account}/payments"))
                .token(&owner)
                .json(json!({"amount": 30, "currency": "EUR"}))
                .send()
                .await
                .expect(200);
        }
    });
    let (ids, _, _) = tokio::join!(
        futures::future::join_all(load),
        futures::future::join_all(payments),
        futures::future::join_all(outbound)
    );
    let mut states = std::collections::BTreeMap::<String, usize>::new();
    for id in &ids {
        let settled = transfers.settled_transfer(&token("root", Admin), *id).await;
        *states.entry(settled["state"].as_str().unwrap().to_owned()).or_default() += 1;
    }
    assert_eq!(states.values().sum::<usize>(), 200, "every transfer settled: {states:?}");
    assert!(states.get("failed").is_some_and(|n| *n > 0), "some went to the closed account: {states:?}");
    // every payment landed
    tests::wait_for(Duration::from_secs(30), "the 40 payments", || async {
        let n: i64 = sqlx::query_scalar("select count(*) from es.events where type = 'account.payment_received'")
            .fetch_one(&pool)
            .await
            .unwrap();
        (n == 40).then_some(())
    })
    .await;
    sampling.cancel();
    let samples = sampler.await.unwrap();
    assert!(samples.len() >= 3, "{} samples", samples.len());
    for report in &samples {
        assert!(report.balanced(), "a sample of the books was off: {report:?}");
    }
    // at the end: nothing in transit, cash in = 10 × 10,000, payments in and out
    tests::views_caught_up(&pool).await;
    let last = ledger::check_now(&pool).await.unwrap();
    assert!(last.balanced(), "{last:?}");
    assert_eq!(last.in_transit["EUR"], ledger::InTransit::default(), "{last:?}");
    let total: i64 =
        sqlx::query_scalar("select sum(balance)::int8 from views.accounts").fetch_one(&pool).await.unwrap();
    assert_eq!(total, 10 * 10_000 + 40 * 100 - 20 * 30);
    let read = |kind: BankAccount| {
        let api = bank.queries.api();
        async move {
            let reply = api.get(&format!("/accounts/{}", kind.id(eur()))).token(&teller_token()).send().await;
            reply.expect(200)["balance"].as_i64().unwrap()
        }
    };
    assert_eq!(
        (read(BankAccount::Cash).await, read(BankAccount::Inbound).await, read(BankAccount::Outbound).await),
        (-100_000, -4_000, 600)
    );
    assert_eq!(read(BankAccount::InTransit).await, 0);
    // the views agree with the store on every account the last check compared
    let (balanced, report) = bankctl_reconcile(&pool).await;
    assert!(balanced, "{report}");
    let unchecked: i64 = sqlx::query_scalar("select count(*) from ledger.balances where not view_checked and not bank")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(unchecked, 0, "every customer account's view was compared with the store");
}
