//! transfer-service over HTTP: creating a transfer is checked against what the event
//! store says about the accounts; a rejected request records nothing.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tests::{Admin, Customer, Teller, expired_token, start_accounts, start_transfers, token};
use uuid::Uuid;

async fn transfer_events(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from es.events where stream_type = 'transfer'").fetch_one(pool).await.unwrap()
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_transfer_is_created_initiated_and_readable_by_its_initiator(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let accounts_svc = start_accounts(&pool, |_| {}).await;
    let accounts = accounts_svc.api();
    let svc = start_transfers(&pool, |_| {}).await;
    let api = svc.api();
    let alice = token("alice", Customer);
    let from = accounts.open_account(&alice, "EUR", 1000).await;
    let to = accounts.open_account(&token("bob", Customer), "EUR", 0).await;

    let created = api
        .post("/transfers")
        .token(&alice)
        .json(json!({"from": from, "to": to, "amount": 500, "currency": "EUR"}))
        .send()
        .await;
    let body = created.expect(201);
    assert_eq!(
        (body["state"].as_str(), body["version"].as_i64(), body["amount"].as_i64()),
        (Some("initiated"), Some(1), Some(500))
    );
    assert_eq!((&body["from"], &body["to"]), (&json!(from), &json!(to)));
    let id = created.id();
    let events = tests::stream_events(&pool, id).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].1, "transfer.created");
    assert_eq!(events[0].2["amount"].as_i64(), Some(500));

    let read = api.get(&format!("/transfers/{id}")).token(&alice).send().await;
    assert_eq!((read.expect(200)["state"].as_str(), read.version()), (Some("initiated"), 1));
    api.get(&format!("/transfers/{id}")).token(&token("tom", Teller)).send().await.expect(200);
    api.get(&format!("/transfers/{id}")).token(&token("root", Admin)).send().await.expect(200);
    api.get(&format!("/transfers/{id}")).token(&token("bob", Customer)).send().await.expect_error(403, "forbidden");
    api.get(&format!("/transfers/{}", Uuid::now_v7()))
        .token(&alice)
        .send()
        .await
        .expect_error(404, "transfer_not_found");
    api.get("/transfers/nope").token(&alice).send().await.expect_error(400, "invalid_id");
    // an account id is not a transfer id
    api.get(&format!("/transfers/{from}")).token(&alice).send().await.expect_error(404, "transfer_not_found");
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn every_bad_transfer_gets_its_code_and_records_nothing(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let accounts_svc = start_accounts(&pool, |_| {}).await;
    let accounts = accounts_svc.api();
    let svc = start_transfers(&pool, |c| c.commands.max_amount_minor = 100_000).await;
    let api = svc.api();
    let alice = token("alice", Customer);
    let bob = token("bob", Customer);
    let from = accounts.open_account(&alice, "EUR", 1000).await;
    let to = accounts.open_account(&bob, "EUR", 0).await;
    let bobs = accounts.open_account(&bob, "EUR", 1000).await;
    let dollars = accounts.open_account(&alice, "USD", 0).await;
    let closed = accounts.open_account(&alice, "EUR", 0).await;
    accounts.post(&format!("/accounts/{closed}/close")).token(&alice).send().await.expect(200);
    let unknown = Uuid::now_v7();
    let before = tests::total_events(&pool).await;

    let body = |from: serde_json::Value, to: serde_json::Value, amount: serde_json::Value, currency: &str| json!({"from": from, "to": to, "amount": amount, "currency": currency});
    let (from, to, bobs, dollars, closed, unknown) =
        (json!(from), json!(to), json!(bobs), json!(dollars), json!(closed), json!(unknown));
    let cases = vec![
        ("same account", alice.clone(), body(from.clone(), from.clone(), json!(5), "EUR"), 422, "same_account"),
        ("amount 0", alice.clone(), body(from.clone(), to.clone(), json!(0), "EUR"), 400, "invalid_amount"),
        ("negative amount", alice.clone(), body(from.clone(), to.clone(), json!(-5), "EUR"), 400, "invalid_amount"),
        (
            "above the maximum",
            alice.clone(),
            body(from.clone(), to.clone(), json!(100_001), "EUR"),
            400,
            "amount_too_large",
        ),
        ("unknown currency", alice.clone(), body(from.clone(), to.clone(), json!(5), "ABC"), 400, "invalid_currency"),
        ("amount as text", alice.clone(), body(from.clone(), to.clone(), json!("5"), "EUR"), 400, "invalid_body"),
        ("an id that is no id", alice.clone(), body(json!("abc"), to.clone(), json!(5), "EUR"), 400, "invalid_id"),
        ("unknown source", alice.clone(), body(unknown.clone(), to.clone(), json!(5), "EUR"), 404, "account_not_found"),
        (
            "unknown target",
            alice.clone(),
            body(from.clone(), unknown.clone(), json!(5), "EUR"),
            404,
            "account_not_found",
        ),
        ("someone else's source", alice.clone(), body(bobs.clone(), to.clone(), json!(5), "EUR"), 403, "forbidden"),
        (
            "source in another currency",
            alice.clone(),
            body(dollars.clone(), to.clone(), json!(5), "EUR"),
            422,
            "currency_mismatch",
        ),
        ("closed source", alice.clone(), body(closed.clone(), to.clone(), json!(5), "EUR"), 422, "account_closed"),
        (
            "expired token",
            expired_token("alice"),
            body(from.clone(), to.clone(), json!(5), "EUR"),
            401,
            "token_expired",
        ),
    ];
    for (what, token, body, status, code) in cases {
        let reply = api.post("/transfers").token(&token).json(body).send().await;
        assert_eq!((reply.status, reply.code()), (status, code), "{what}: {}", reply.body);
        assert_eq!(tests::total_events(&pool).await, before, "{what}: something was recorded");
    }
    api.post("/transfers").json(json!({})).send().await.expect_error(401, "missing_token");
    api.post("/transfers").token(&alice).raw("{\"from\":").send().await.expect_error(400, "malformed_json");
    assert_eq!(transfer_events(&pool).await, 0);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_repeated_transfer_request_with_its_key_creates_one_transfer(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let accounts_svc = start_accounts(&pool, |_| {}).await;
    let accounts = accounts_svc.api();
    let api_svc = start_transfers(&pool, |_| {}).await;
    let api = api_svc.api();
    let alice = token("alice", Customer);
    let from = accounts.open_account(&alice, "EUR", 1000).await;
    let to = accounts.open_account(&token("bob", Customer), "EUR", 0).await;
    let request = json!({"from": from, "to": to, "amount": 5, "currency": "EUR"});

    let first = api.post("/transfers").token(&alice).idempotency_key("t-1").json(request.clone()).send().await;
    let second = api.post("/transfers").token(&alice).idempotency_key("t-1").json(request.clone()).send().await;
    assert_eq!((first.status, second.status), (201, 201));
    assert_eq!(first.id(), second.id());
    assert_eq!(transfer_events(&pool).await, 1);
    let changed = json!({"from": from, "to": to, "amount": 6, "currency": "EUR"});
    api.post("/transfers")
        .token(&alice)
        .idempotency_key("t-1")
        .json(changed)
        .send()
        .await
        .expect_error(422, "idempotency_key_reused");
    // without a key, the same body is a second transfer
    api.post("/transfers").token(&alice).json(request).send().await.expect(201);
    assert_eq!(transfer_events(&pool).await, 2);
}
