//! Monthly statements, a finite job: the task `statements.statement.generate` on the
//! event bus starts the archiver's job, which writes each account's statement of the
//! month (CSV and PDF) to the archive's bucket on a real S3 API server. The closing
//! balance is the account's balance as of the month's end (the event store's fold);
//! running the job again writes the same bytes; the owner and staff download them
//! through the gateway, nobody else; bad tasks are refused and recorded.
#![allow(clippy::unwrap_used)]

use chrono::{DateTime, Datelike, Duration as Days, NaiveDate, SecondsFormat, TimeZone, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use std::time::Duration;
use tests::{Api, Bank, Customer, teller_token, token};
use uuid::Uuid;

/// The first instant of the month `t` is in.
fn month_start(t: DateTime<Utc>) -> DateTime<Utc> {
    Utc.from_utc_datetime(&NaiveDate::from_ymd_opt(t.year(), t.month(), 1).unwrap().and_hms_opt(0, 0, 0).unwrap())
}

/// Posts the task; its id.
async fn generate(bank: &Bank, who: &str, data: Value) -> Uuid {
    let task = json!({"type": "statements.statement.generate", "source": "operations", "data": data});
    let reply = bank.bus.api().post("/events").token(who).json(task).send().await;
    reply.expect(201);
    reply.body["event_id"].as_str().unwrap().parse().unwrap()
}

/// The type and data of what the job recorded for the task (`statement.generated` or
/// `statement.task_rejected`), once it has.
async fn outcome(pool: &PgPool, task: Uuid) -> (String, Value) {
    tests::wait_for(Duration::from_secs(60), &format!("the outcome of task {task}"), || async move {
        sqlx::query_as::<_, (String, sqlx::types::Json<Value>)>("select type, data from es.events where stream_id = $1")
            .bind(task)
            .fetch_optional(pool)
            .await
            .unwrap()
            .map(|(kind, data)| (kind, data.0))
    })
    .await
}

/// A file of the gateway: status, content type, bytes.
async fn download(gateway: &Api, who: &str, path: &str) -> (u16, String, Vec<u8>) {
    let reply = reqwest::Client::new().get(format!("{}{path}", gateway.base())).bearer_auth(who).send().await.unwrap();
    let status = reply.status().as_u16();
    let kind = reply.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (status, kind, reply.bytes().await.unwrap().to_vec())
}

/// A statement's CSV rows: `(event, memo, amount, balance)`.
fn rows(csv: &[u8]) -> Vec<(String, String, Option<i64>, i64)> {
    let mut reader = csv::Reader::from_reader(csv);
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        ["account_id", "currency", "recorded_at", "event", "description", "memo", "amount_minor", "balance_minor"]
    );
    reader
        .records()
        .map(|r| {
            let r = r.unwrap();
            (r[3].to_owned(), r[5].to_owned(), r[6].parse().ok(), r[7].parse().unwrap())
        })
        .collect()
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn the_statements_job_writes_each_month_once_and_its_closing_balance_is_the_store_s(
    options: sqlx::postgres::PgPoolOptions,
    connect: sqlx::postgres::PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let front = tests::start_gateway(&bank, |_| {}).await;
    let gateway = &front.api;
    let (_archiver, _) = tests::start_archiver(&pool, &bank.rapids, &bank.s3).await;
    let (alice, bob, teller) = (token("alice", Customer), token("bob", Customer), teller_token());
    let accounts = bank.accounts.api();
    let a = accounts.open_account(&alice, "EUR", 10_000).await;
    let b = accounts.open_account(&bob, "EUR", 0).await;
    // the account's opening and first deposit were last month
    let now = Utc::now();
    let this_month = month_start(now);
    let last_month_time = this_month - Days::days(15);
    let moved = sqlx::query("update es.events set recorded_at = $2 where stream_id = $1 and version <= 2")
        .bind(a)
        .bind(last_month_time)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(moved.rows_affected(), 2);
    // this month: a transfer out with a memo, a deposit
    let reply = bank
        .transfers
        .api()
        .post("/transfers")
        .token(&alice)
        .idempotency_key("statement-rent")
        .json(json!({"from": a, "to": b, "amount": 2500, "currency": "EUR", "memo": "rent, \"december\""}))
        .send()
        .await;
    let transfer = reply.expect(201)["id"].as_str().unwrap().parse::<Uuid>().unwrap();
    let settled = bank.transfers.api().settled_transfer(&alice, transfer).await;
    assert_eq!(settled["state"], "completed");
    accounts.deposit(a, 300).await;

    let (this, last) = (this_month.format("%Y-%m").to_string(), last_month_time.format("%Y-%m").to_string());
    let task = generate(&bank, &teller, json!({"month": last, "account": "all"})).await;
    assert_eq!(outcome(&pool, task).await.0, "statement.generated");
    let task = generate(&bank, &teller, json!({"month": this, "account": a.to_string()})).await;
    let (kind, data) = outcome(&pool, task).await;
    assert_eq!((kind.as_str(), data["month"].as_str()), ("statement.generated", Some(this.as_str())));

    // alice's statements, newest first
    let list = gateway.get(&format!("/api/accounts/{a}/statements")).token(&alice).send().await;
    let months: Vec<(&str, Vec<&str>)> = list.expect(200)["statements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["month"].as_str().unwrap(),
                s["formats"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect(),
            )
        })
        .collect();
    assert_eq!(months, [(this.as_str(), vec!["csv", "pdf"]), (last.as_str(), vec!["csv", "pdf"])]);
    // bob's account had no statement last month (opened this month), and only "all" ran then
    let list = gateway.get(&format!("/api/accounts/{b}/statements")).token(&bob).send().await;
    assert_eq!(list.expect(200)["statements"], json!([]));

    // last month: opened, 10,000 in; its closing is the balance as of the month's end
    let (status, kind, csv_last) = download(gateway, &alice, &format!("/api/accounts/{a}/statements/{last}.csv")).await;
    assert_eq!((status, kind.as_str()), (200, "text/csv; charset=utf-8"));
    let last_rows = rows(&csv_last);
    assert_eq!(
        last_rows,
        [
            ("opening_balance".into(), String::new(), None, 0),
            ("account.deposited".into(), String::new(), Some(10_000), 10_000),
            ("closing_balance".into(), String::new(), None, 10_000),
        ]
    );
    let as_of = |t: DateTime<Utc>| {
        let when = t.to_rfc3339_opts(SecondsFormat::Micros, true).replace('+', "%2B");
        gateway.get(&format!("/api/accounts/{a}?as_of={when}")).token(&alice).send()
    };
    let end_of_last = as_of(this_month - Days::microseconds(1)).await;
    assert_eq!(end_of_last.expect(200)["balance"].as_i64(), Some(10_000));

    // this month: opens with last month's closing, the transfer with its memo, the deposit
    let (_, _, csv_this) = download(gateway, &alice, &format!("/api/accounts/{a}/statements/{this}.csv")).await;
    let this_rows = rows(&csv_this);
    assert_eq!(
        this_rows,
        [
            ("opening_balance".into(), String::new(), None, 10_000),
            ("account.debited".into(), "rent, \"december\"".into(), Some(-2500), 7500),
            ("account.deposited".into(), String::new(), Some(300), 7800),
            ("closing_balance".into(), String::new(), None, 7800),
        ]
    );
    let now_balance = as_of(Utc::now()).await.expect(200)["balance"].as_i64();
    assert_eq!(now_balance, Some(7800), "the closing balance is the store's balance as of now (the month so far)");
    let (status, kind, pdf_this) =
        download(gateway, &teller, &format!("/api/accounts/{a}/statements/{this}.pdf")).await;
    assert_eq!((status, kind.as_str()), (200, "application/pdf"));
    let closing: &[u8] = b"(Closing balance: 7800) Tj";
    assert!(pdf_this.starts_with(b"%PDF-") && pdf_this.windows(closing.len()).any(|w| w == closing));

    // the job again, run by hand: the same files, byte for byte
    let port = tests::free_port();
    let status = tokio::process::Command::new(tests::binary("archiver"))
        .args(["statements", "--month", &this, "--account", "all"])
        .envs(tests::archiver_env(&pool, &bank.rapids, &bank.s3, port))
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success());
    let (_, _, csv_again) = download(gateway, &alice, &format!("/api/accounts/{a}/statements/{this}.csv")).await;
    let (_, _, pdf_again) = download(gateway, &alice, &format!("/api/accounts/{a}/statements/{this}.pdf")).await;
    let csv_again_copy = csv_again.clone();
    assert_eq!((csv_again, pdf_again), (csv_this, pdf_this));
    // an account whose events do not add up: exit 4, its statement not written, the
    // others written all the same
    let carol = accounts.open_account(&token("carol", Customer), "EUR", 500).await;
    sqlx::query(
        "update es.events set data = jsonb_set(data, '{balance_after}', '499') where stream_id = $1 and version = 2",
    )
    .bind(carol)
    .execute(&pool)
    .await
    .unwrap();
    let job = |account: String| {
        let mut command = tokio::process::Command::new(tests::binary("archiver"));
        command
            .args(["statements", "--month", &this, "--account", &account])
            .envs(tests::archiver_env(&pool, &bank.rapids, &bank.s3, port))
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        command
    };
    assert_eq!(job("all".into()).status().await.unwrap().code(), Some(4));
    let (status, _, _) = download(gateway, &teller, &format!("/api/accounts/{carol}/statements/{this}.csv")).await;
    assert_eq!(status, 404);
    let (_, _, csv_after) = download(gateway, &alice, &format!("/api/accounts/{a}/statements/{this}.csv")).await;
    assert_eq!(csv_after, csv_again_copy);
    // an account of no month: refused, exit 3
    assert_eq!(job(Uuid::now_v7().to_string()).status().await.unwrap().code(), Some(3));

    // "all" this month wrote bob's too (one transfer in)
    let (_, _, csv_bob) = download(gateway, &bob, &format!("/api/accounts/{b}/statements/{this}.csv")).await;
    assert_eq!(rows(&csv_bob)[1], ("account.credited".into(), "rent, \"december\"".into(), Some(2500), 2500));

    // nobody else's; no such account, statement, file
    let path = format!("/api/accounts/{a}/statements");
    gateway.get(&path).token(&bob).send().await.expect_error(403, "forbidden");
    gateway.get(&format!("{path}/{this}.csv")).token(&bob).send().await.expect_error(403, "forbidden");
    let unknown = Uuid::now_v7();
    gateway
        .get(&format!("/api/accounts/{unknown}/statements"))
        .token(&teller)
        .send()
        .await
        .expect_error(404, "account_not_found");
    gateway.get("/api/accounts/not-an-id/statements").token(&teller).send().await.expect_error(400, "invalid_id");
    for file in ["2001-01.csv", "2025-13.csv", &format!("{this}.txt"), "statement", &format!("{this}.csv.pdf")] {
        let reply = gateway.get(&format!("{path}/{file}")).token(&alice).send().await;
        reply.expect_error(404, "statement_not_found");
    }
    gateway.get(&path).send().await.expect_error(401, "missing_token");

    // tasks the job refuses, each recorded with its reason
    for (who, data, code) in [
        (&alice, json!({"month": this, "account": a.to_string()}), "forbidden"),
        (&teller, json!({"month": this, "account": unknown.to_string()}), "account_not_found"),
        (&teller, json!({"month": "2020-13", "account": "all"}), "invalid_body"),
        (&teller, json!({"month": this}), "invalid_body"),
    ] {
        let task = generate(&bank, who, data.clone()).await;
        let (kind, refusal) = outcome(&pool, task).await;
        assert_eq!((kind.as_str(), refusal["code"].as_str()), ("statement.task_rejected", Some(code)), "{data}");
    }
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn an_unreachable_archive_is_a_503_that_says_nothing_of_it(
    options: sqlx::postgres::PgPoolOptions,
    connect: sqlx::postgres::PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let accounts = tests::start_accounts(&pool, |_| {}).await;
    let alice = token("alice", Customer);
    let id = accounts.api().open_account(&alice, "EUR", 0).await;
    // query-service with the archive at a port nothing listens on
    let mut config = query_service::Config::new(tests::service_args(&pool));
    let dead = format!("http://127.0.0.1:{}", tests::free_port());
    config.s3 = archive::s3::S3Args { s3_endpoint: Some(dead.clone()), ..tests::s3_args() };
    let queries =
        tests::spawn(query_service::router(query_service::AppState::new(&config, pool.clone()).unwrap())).await;
    let reply = queries.api().get(&format!("/accounts/{id}/statements")).token(&alice).send().await;
    reply.expect_error(503, "unavailable");
    let month = Utc::now().format("%Y-%m").to_string();
    let reply = queries.api().get(&format!("/accounts/{id}/statements/{month}.pdf")).token(&alice).send().await;
    reply.expect_error(503, "unavailable");
    let port = dead.rsplit(':').next().unwrap();
    assert!(!reply.body.to_string().contains(port), "the answer names the archive: {}", reply.body);
    // the owner check comes first: someone else's account is 403 whatever the archive
    let bob = token("bob", Customer);
    queries.api().get(&format!("/accounts/{id}/statements")).token(&bob).send().await.expect_error(403, "forbidden");
}
