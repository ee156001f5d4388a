//! account-service over HTTP against a real Postgres: the happy path, every error
//! code (and that a rejected request changes nothing), roles, idempotency, and
//! concurrency on one account.
#![allow(clippy::unwrap_used)]

use futures::StreamExt;
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tests::{Customer, Teller, expired_token, start_accounts, stream_events, teller_token, token};
use uuid::Uuid;

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn open_deposit_withdraw_close_and_read(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let svc = start_accounts(&pool, |_| {}).await;
    let api = svc.api();
    let alice = token("alice", Customer);
    let tess = teller_token();

    let opened = api
        .post("/accounts")
        .token(&tess)
        .json(json!({"currency": "EUR", "initial_deposit": 1000, "owner": "alice"}))
        .send()
        .await;
    let body = opened.expect(201);
    assert_eq!((body["version"].as_i64(), body["balance"].as_i64()), (Some(2), Some(1000)));
    assert_eq!(
        (body["owner"].as_str(), body["currency"].as_str(), body["status"].as_str()),
        (Some("alice"), Some("EUR"), Some("open"))
    );
    let id = opened.id();

    let deposit = api
        .post(&format!("/accounts/{id}/deposits"))
        .token(&tess)
        .json(json!({"amount": 500, "currency": "EUR"}))
        .send()
        .await;
    assert_eq!((deposit.expect(200)["balance"].as_i64(), deposit.version()), (Some(1500), 3));
    let withdrawal = api
        .post(&format!("/accounts/{id}/withdrawals"))
        .token(&alice)
        .json(json!({"amount": 1500, "currency": "EUR"}))
        .send()
        .await;
    assert_eq!((withdrawal.expect(200)["balance"].as_i64(), withdrawal.version()), (Some(0), 4));

    let read = api.get(&format!("/accounts/{id}")).token(&alice).send().await;
    let body = read.expect(200);
    assert_eq!(
        (body["balance"].as_i64(), body["version"].as_i64(), body["status"].as_str()),
        (Some(0), Some(4), Some("open"))
    );
    let recent = body["recent_transactions"].as_array().unwrap();
    let summary: Vec<_> = recent
        .iter()
        .map(|t| {
            (
                t["kind"].as_str().unwrap(),
                t["amount"].as_i64().unwrap(),
                t["balance_after"].as_i64().unwrap(),
                t["version"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(summary, vec![("debit", 1500, 0, 4), ("credit", 500, 1500, 3), ("credit", 1000, 1000, 2)]);

    let closed = api.post(&format!("/accounts/{id}/close")).token(&alice).send().await;
    assert_eq!((closed.expect(200)["status"].as_str(), closed.version()), (Some("closed"), 5));

    let events = stream_events(&pool, id).await;
    let types: Vec<_> = events.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        types,
        ["account.opened", "account.deposited", "account.deposited", "account.withdrawn", "account.closed"]
    );
    // every event records who acted and the request that caused it
    let metadata: Vec<serde_json::Value> = sqlx::query_scalar::<_, sqlx::types::Json<serde_json::Value>>(
        "select metadata from es.events where stream_id = $1 order by version",
    )
    .bind(id)
    .fetch_all(&pool)
    .await
    .unwrap()
    .into_iter()
    .map(|m| m.0)
    .collect();
    let actors: Vec<_> = metadata.iter().map(|m| m["actor"].as_str().unwrap_or_default()).collect();
    assert_eq!(actors, ["teller-tess", "teller-tess", "teller-tess", "alice", "alice"]);
    assert!(metadata.iter().all(|m| m["request_id"].as_str().is_some_and(|r| !r.is_empty())));
}

/// Every rejection by HTTP, each followed by a check that the stream did not change.
#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn every_bad_request_gets_its_code_and_changes_nothing(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let svc = start_accounts(&pool, |c| {
        c.commands.max_amount_minor = 1_000_000;
        c.service.http.body_limit_bytes = 1024;
    })
    .await;
    let api = svc.api();
    let alice = token("alice", Customer);
    let tess = teller_token();
    let bob = token("bob", Customer);
    let id = api.open_account(&alice, "EUR", 100).await;
    let deposits = format!("/accounts/{id}/deposits");
    let withdrawals = format!("/accounts/{id}/withdrawals");
    let before = stream_events(&pool, id).await;
    let total_before = tests::total_events(&pool).await;

    let unchanged = || async {
        assert_eq!(stream_events(&pool, id).await, before, "a rejected request changed the stream");
        assert_eq!(tests::total_events(&pool).await, total_before, "a rejected request appended somewhere");
    };

    let cases: Vec<(&str, tests::Request, u16, &str)> = vec![
        ("malformed JSON", api.post(&deposits).token(&tess).raw("{\"amount\": 5,"), 400, "malformed_json"),
        ("empty body", api.post(&deposits).token(&tess).raw(""), 400, "malformed_json"),
        (
            "amount of the wrong type",
            api.post(&deposits).token(&tess).json(json!({"amount": "5", "currency": "EUR"})),
            400,
            "invalid_body",
        ),
        (
            "currency of the wrong type",
            api.post(&deposits).token(&tess).json(json!({"amount": 5, "currency": 978})),
            400,
            "invalid_body",
        ),
        ("missing currency", api.post(&deposits).token(&tess).json(json!({"amount": 5})), 400, "invalid_body"),
        (
            "unknown field",
            api.post(&deposits).token(&tess).json(json!({"amount": 5, "currency": "EUR", "amuont": 1})),
            400,
            "invalid_body",
        ),
        ("a JSON array", api.post(&deposits).token(&tess).json(json!([5, "EUR"])), 400, "invalid_body"),
        (
            "amount 0",
            api.post(&deposits).token(&tess).json(json!({"amount": 0, "currency": "EUR"})),
            400,
            "invalid_amount",
        ),
        (
            "negative amount",
            api.post(&deposits).token(&tess).json(json!({"amount": -5, "currency": "EUR"})),
            400,
            "invalid_amount",
        ),
        (
            "negative withdrawal",
            api.post(&withdrawals).token(&alice).json(json!({"amount": -5, "currency": "EUR"})),
            400,
            "invalid_amount",
        ),
        (
            "fractional amount",
            api.post(&deposits).token(&tess).json(json!({"amount": 5.5, "currency": "EUR"})),
            400,
            "invalid_amount",
        ),
        (
            "above the maximum",
            api.post(&deposits).token(&tess).json(json!({"amount": 1_000_001, "currency": "EUR"})),
            400,
            "amount_too_large",
        ),
        (
            "beyond 64 bits",
            api.post(&deposits).token(&tess).raw("{\"amount\": 99999999999999999999999, \"currency\": \"EUR\"}"),
            400,
            "amount_too_large",
        ),
        (
            "1e30",
            api.post(&deposits).token(&tess).raw("{\"amount\": 1e30, \"currency\": \"EUR\"}"),
            400,
            "amount_too_large",
        ),
        (
            "unknown currency",
            api.post(&deposits).token(&tess).json(json!({"amount": 5, "currency": "XYZ"})),
            400,
            "invalid_currency",
        ),
        (
            "another currency",
            api.post(&deposits).token(&tess).json(json!({"amount": 5, "currency": "USD"})),
            422,
            "currency_mismatch",
        ),
        (
            "insufficient funds",
            api.post(&withdrawals).token(&alice).json(json!({"amount": 101, "currency": "EUR"})),
            422,
            "insufficient_funds",
        ),
        ("close with money in it", api.post(&format!("/accounts/{id}/close")).token(&alice), 422, "balance_not_zero"),
        (
            "a stale expected version",
            api.post(&deposits).token(&tess).json(json!({"amount": 5, "currency": "EUR", "expected_version": 1})),
            409,
            "version_conflict",
        ),
        (
            "someone else's account (deposit)",
            api.post(&deposits).token(&bob).json(json!({"amount": 5, "currency": "EUR"})),
            403,
            "forbidden",
        ),
        (
            "someone else's account (withdraw)",
            api.post(&withdrawals).token(&bob).json(json!({"amount": 5, "currency": "EUR"})),
            403,
            "forbidden",
        ),
        ("someone else's account (close)", api.post(&format!("/accounts/{id}/close")).token(&bob), 403, "forbidden"),
        ("someone else's account (read)", api.get(&format!("/accounts/{id}")).token(&bob), 403, "forbidden"),
        // ownership comes before the version check: no version leaks to a stranger
        (
            "someone else's account with a version",
            api.post(&deposits).token(&bob).json(json!({"amount": 5, "currency": "EUR", "expected_version": 0})),
            403,
            "forbidden",
        ),
        (
            "an unknown account with a version",
            api.post(&format!("/accounts/{}/deposits", Uuid::now_v7()))
                .token(&tess)
                .json(json!({"amount": 5, "currency": "EUR", "expected_version": 0})),
            404,
            "account_not_found",
        ),
        (
            "a path id that is not UTF-8",
            api.post("/accounts/%FF/deposits").token(&alice).json(json!({"amount": 5, "currency": "EUR"})),
            400,
            "invalid_id",
        ),
        (
            "a teller paying a payment out of a customer's account",
            api.post(&format!("/accounts/{id}/payments"))
                .token(&token("tom", Teller))
                .json(json!({"amount": 5, "currency": "EUR"})),
            403,
            "forbidden",
        ),
        (
            "a payment with a reference of odd characters",
            api.post(&format!("/accounts/{id}/payments"))
                .token(&alice)
                .json(json!({"amount": 5, "currency": "EUR", "reference": "a b"})),
            400,
            "invalid_body",
        ),
        (
            "a payment larger than the balance",
            api.post(&format!("/accounts/{id}/payments")).token(&alice).json(json!({"amount": 101, "currency": "EUR"})),
            422,
            "insufficient_funds",
        ),
        ("no token", api.post(&deposits).json(json!({"amount": 5, "currency": "EUR"})), 401, "missing_token"),
        (
            "expired token",
            api.post(&deposits).token(&expired_token("alice")).json(json!({"amount": 5, "currency": "EUR"})),
            401,
            "token_expired",
        ),
        (
            "garbage token",
            api.post(&deposits).token("not.a.jwt").json(json!({"amount": 5, "currency": "EUR"})),
            401,
            "invalid_token",
        ),
        (
            "token of another issuer",
            api.post(&deposits)
                .token(
                    &service_kit::auth::issue_hs256("another-secret-of-32-bytes-xxxxxx", "alice", Customer, 600)
                        .unwrap(),
                )
                .json(json!({"amount": 5, "currency": "EUR"})),
            401,
            "invalid_token",
        ),
        (
            "not a Bearer header",
            api.post(&deposits)
                .header("Authorization", "Basic YWxpY2U6eA==")
                .json(json!({"amount": 5, "currency": "EUR"})),
            401,
            "invalid_token",
        ),
        (
            "unknown account",
            api.post(&format!("/accounts/{}/deposits", Uuid::now_v7()))
                .token(&tess)
                .json(json!({"amount": 5, "currency": "EUR"})),
            404,
            "account_not_found",
        ),
        (
            "unknown account (read)",
            api.get(&format!("/accounts/{}", Uuid::now_v7())).token(&alice),
            404,
            "account_not_found",
        ),
        (
            "an id that is no id",
            api.post("/accounts/12345/deposits").token(&alice).json(json!({"amount": 5, "currency": "EUR"})),
            400,
            "invalid_id",
        ),
        (
            "a body over the limit",
            api.post(&deposits)
                .token(&tess)
                .raw(format!("{{\"amount\": 5, \"currency\": \"EUR\", \"pad\": \"{}\"}}", "x".repeat(2048))),
            413,
            "payload_too_large",
        ),
        (
            "not JSON",
            api.post(&deposits)
                .token(&tess)
                .header("content-type", "text/plain")
                .json(json!({"amount": 5, "currency": "EUR"})),
            415,
            "unsupported_media_type",
        ),
        (
            "a bad Idempotency-Key",
            api.post(&deposits)
                .token(&tess)
                .idempotency_key(&"k".repeat(300))
                .json(json!({"amount": 5, "currency": "EUR"})),
            400,
            "invalid_idempotency_key",
        ),
        ("unknown route", api.get("/nowhere").token(&alice), 404, "not_found"),
        ("wrong method", api.request(reqwest::Method::DELETE, &deposits).token(&alice), 405, "method_not_allowed"),
        (
            "open in an unknown currency",
            api.post("/accounts").token(&alice).json(json!({"currency": "EURO"})),
            400,
            "invalid_currency",
        ),
        (
            "open with a negative deposit",
            api.post("/accounts").token(&alice).json(json!({"currency": "EUR", "initial_deposit": -1})),
            400,
            "invalid_amount",
        ),
        ("open without a token", api.post("/accounts").json(json!({"currency": "EUR"})), 401, "missing_token"),
        // money comes from somewhere: a customer takes no cash in, not even to their own account
        (
            "a customer's deposit to their own account",
            api.post(&deposits).token(&alice).json(json!({"amount": 5, "currency": "EUR"})),
            403,
            "forbidden",
        ),
        (
            "a customer's initial deposit",
            api.post("/accounts").token(&alice).json(json!({"currency": "EUR", "initial_deposit": 5})),
            403,
            "forbidden",
        ),
        (
            "a customer opening an account for someone else",
            api.post("/accounts").token(&alice).json(json!({"currency": "EUR", "owner": "bob"})),
            403,
            "forbidden",
        ),
        (
            "an empty owner",
            api.post("/accounts").token(&tess).json(json!({"currency": "EUR", "owner": ""})),
            400,
            "invalid_body",
        ),
    ];
    for (what, request, status, code) in cases {
        let reply = request.send().await;
        assert_eq!((reply.status, reply.code()), (status, code), "{what}: {}", reply.body);
        let text = reply.body.to_string().to_lowercase();
        for internal in ["sqlx", "postgres", "select ", "insert ", "panicked", "src/"] {
            assert!(!text.contains(internal), "{what}: the body leaks `{internal}`: {text}");
        }
        unchanged().await;
    }

    // the closed-account rule, on an account of its own
    let empty = api.open_account(&alice, "EUR", 0).await;
    api.post(&format!("/accounts/{empty}/close")).token(&alice).send().await.expect(200);
    let closed_before = stream_events(&pool, empty).await;
    api.post(&format!("/accounts/{empty}/deposits"))
        .token(&tess)
        .json(json!({"amount": 5, "currency": "EUR"}))
        .send()
        .await
        .expect_error(422, "account_closed");
    api.post(&format!("/accounts/{empty}/close")).token(&alice).send().await.expect_error(422, "account_closed");
    assert_eq!(stream_events(&pool, empty).await, closed_before);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn tellers_take_cash_in_and_out_of_any_account_and_owners_pay_out(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let svc = start_accounts(&pool, |_| {}).await;
    let api = svc.api();
    let id = api.open_account(&token("alice", Customer), "EUR", 0).await;
    let tom = token("tom", Teller);
    let reply = api
        .post(&format!("/accounts/{id}/deposits"))
        .token(&tom)
        .json(json!({"amount": 700, "currency": "EUR"}))
        .send()
        .await;
    assert_eq!(reply.expect(200)["balance"].as_i64(), Some(700));
    let read = api.get(&format!("/accounts/{id}")).token(&tom).send().await;
    assert_eq!((read.expect(200)["owner"].as_str(), read.body["balance"].as_i64()), (Some("alice"), Some(700)));
    let actor: String =
        sqlx::query_scalar("select metadata->>'actor' from es.events where stream_id = $1 and version = 2")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(actor, "tom");
    // a teller pays cash out too (never below zero); the owner sends payments out
    let out = api
        .post(&format!("/accounts/{id}/withdrawals"))
        .token(&tom)
        .json(json!({"amount": 200, "currency": "EUR"}))
        .send()
        .await;
    assert_eq!(out.expect(200)["balance"].as_i64(), Some(500));
    let paid = api
        .post(&format!("/accounts/{id}/payments"))
        .token(&token("alice", Customer))
        .json(json!({"amount": 150, "currency": "EUR", "reference": "invoice-42"}))
        .send()
        .await;
    assert_eq!(paid.expect(200)["balance"].as_i64(), Some(350));
    let events = stream_events(&pool, id).await;
    let last = &events.last().unwrap();
    assert_eq!((last.1.as_str(), last.2["reference"].as_str()), ("account.payment_sent", Some("invoice-42")));
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn an_idempotency_key_replays_the_first_answer_and_refuses_another_body(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let svc = start_accounts(&pool, |_| {}).await;
    let api = svc.api();
    let alice = token("alice", Customer);
    let tess = teller_token();

    // opening: the same key gives the same account, once
    let open = || {
        api.post("/accounts")
            .token(&tess)
            .idempotency_key("open-1")
            .json(json!({"currency": "EUR", "initial_deposit": 50, "owner": "alice"}))
    };
    let first = open().send().await;
    let again = open().send().await;
    assert_eq!((first.status, again.status), (201, 201));
    assert_eq!(first.body, again.body);
    assert!(first.headers.get("idempotent-replayed").is_none());
    assert_eq!(again.headers.get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
    let id = first.id();
    let accounts: i64 = sqlx::query_scalar("select count(*) from es.events where type = 'account.opened'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(accounts, 1);

    // a deposit: replayed, not repeated; the key order of the body does not matter
    let deposits = format!("/accounts/{id}/deposits");
    let d1 = api
        .post(&deposits)
        .token(&tess)
        .idempotency_key("dep-1")
        .raw(r#"{"amount": 25, "currency": "EUR"}"#)
        .send()
        .await;
    let d2 =
        api.post(&deposits).token(&tess).idempotency_key("dep-1").raw(r#"{"currency":"EUR","amount":25}"#).send().await;
    assert_eq!((d1.status, d2.status), (200, 200));
    assert_eq!(d1.body, d2.body);
    assert_eq!(stream_events(&pool, id).await.len(), 3);

    // the same key with another body: 422 and nothing written
    let other = api
        .post(&deposits)
        .token(&tess)
        .idempotency_key("dep-1")
        .json(json!({"amount": 26, "currency": "EUR"}))
        .send()
        .await;
    other.expect_error(422, "idempotency_key_reused");
    // the same key on another route is another request too
    let elsewhere = api
        .post(&format!("/accounts/{id}/withdrawals"))
        .token(&tess)
        .idempotency_key("dep-1")
        .json(json!({"amount": 25, "currency": "EUR"}))
        .send()
        .await;
    elsewhere.expect_error(422, "idempotency_key_reused");
    assert_eq!(stream_events(&pool, id).await.len(), 3);

    // keys belong to their actor: a teller's "dep-1" is a new request
    let tom = api
        .post(&deposits)
        .token(&token("tom", Teller))
        .idempotency_key("dep-1")
        .json(json!({"amount": 25, "currency": "EUR"}))
        .send()
        .await;
    assert_eq!(tom.expect(200)["balance"].as_i64(), Some(100));

    // the same key sent ten times at once: one deposit, ten equal answers
    let racers = (0..10).map(|_| {
        api.post(&deposits)
            .token(&tess)
            .idempotency_key("dep-race")
            .json(json!({"amount": 1, "currency": "EUR"}))
            .send()
    });
    let replies = futures::future::join_all(racers).await;
    assert!(replies.iter().all(|r| r.status == 200 && r.body == replies[0].body), "{replies:?}");
    let events = stream_events(&pool, id).await;
    assert_eq!(events.len(), 5);
    assert_eq!(events.last().unwrap().2["balance_after"].as_i64(), Some(101));

    // the same for a withdrawal that empties the account: a retry decided again would
    // be refused for insufficient funds, though the first one succeeded
    let withdrawals = format!("/accounts/{id}/withdrawals");
    let racers = (0..10).map(|_| {
        api.post(&withdrawals)
            .token(&alice)
            .idempotency_key("wd-race")
            .json(json!({"amount": 101, "currency": "EUR"}))
            .send()
    });
    let replies = futures::future::join_all(racers).await;
    assert!(replies.iter().all(|r| r.status == 200 && r.body == replies[0].body), "{replies:?}");
    assert_eq!(replies[0].body["balance"].as_i64(), Some(0));
    assert_eq!(stream_events(&pool, id).await.len(), 6);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn fifty_deposits_with_twenty_five_in_flight_all_succeed_exactly(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let svc = start_accounts(&pool, |_| {}).await;
    let api = svc.api();
    let alice = token("alice", Customer);
    let tess = teller_token();
    let id = api.open_account(&alice, "EUR", 0).await;
    let deposits = format!("/accounts/{id}/deposits");

    let replies: Vec<tests::Reply> = futures::stream::iter(1..=50_i64)
        .map(|i| api.post(&deposits).token(&tess).json(json!({"amount": i, "currency": "EUR"})).send())
        .buffer_unordered(25)
        .collect()
        .await;
    assert!(
        replies.iter().all(|r| r.status == 200),
        "{:?}",
        replies.iter().filter(|r| r.status != 200).collect::<Vec<_>>()
    );
    let mut versions: Vec<i64> = replies.iter().map(|r| r.version()).collect();
    versions.sort_unstable();
    assert_eq!(versions, (2..=51).collect::<Vec<_>>(), "each deposit got its own version");

    let read = api.get(&format!("/accounts/{id}")).token(&alice).send().await;
    let expected: i64 = (1..=50).sum();
    assert_eq!((read.expect(200)["balance"].as_i64(), read.version()), (Some(expected), 51));
    let events = stream_events(&pool, id).await;
    assert_eq!(events.len(), 51);
    assert_eq!(events.last().unwrap().2["balance_after"].as_i64(), Some(expected));
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn concurrent_withdrawals_never_overdraw(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let svc = start_accounts(&pool, |_| {}).await;
    let api = svc.api();
    let alice = token("alice", Customer);
    let id = api.open_account(&alice, "EUR", 1000).await;
    let withdrawals = format!("/accounts/{id}/withdrawals");

    let replies: Vec<tests::Reply> = futures::future::join_all(
        (0..50).map(|_| api.post(&withdrawals).token(&alice).json(json!({"amount": 30, "currency": "EUR"})).send()),
    )
    .await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused = replies.iter().filter(|r| r.status == 422 && r.code() == "insufficient_funds").count();
    assert_eq!((ok, refused), (33, 17), "1000 covers 33 withdrawals of 30");
    let events = stream_events(&pool, id).await;
    let balances: Vec<i64> = events.iter().filter_map(|e| e.2["balance_after"].as_i64()).collect();
    assert!(balances.iter().all(|b| *b >= 0));
    assert_eq!(*balances.last().unwrap(), 10);
    let read = api.get(&format!("/accounts/{id}")).token(&alice).send().await;
    assert_eq!(read.expect(200)["balance"].as_i64(), Some(10));
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn two_instances_on_one_account_retry_conflicts_instead_of_failing(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let a = start_accounts(&pool, |c| c.commands.command_max_attempts = 50).await;
    let b = start_accounts(&pool, |c| c.commands.command_max_attempts = 50).await;
    let alice = token("alice", Customer);
    let tess = teller_token();
    let id = a.api().open_account(&alice, "EUR", 0).await;
    let apis = [a.api(), b.api()];
    let replies: Vec<tests::Reply> = futures::stream::iter(0..40_usize)
        .map(|i| {
            apis[i % 2]
                .post(&format!("/accounts/{id}/deposits"))
                .token(&tess)
                .json(json!({"amount": 10, "currency": "EUR"}))
                .send()
        })
        .buffer_unordered(8)
        .collect()
        .await;
    assert!(replies.iter().all(|r| r.status == 200), "{:?}", replies.iter().find(|r| r.status != 200));
    let events = stream_events(&pool, id).await;
    assert_eq!(events.len(), 41);
    assert_eq!(events.last().unwrap().2["balance_after"].as_i64(), Some(400));
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn concurrent_withdrawals_through_two_instances_never_overdraw(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    // two instances: the in-process lock no longer covers every racer, the store must
    let pool = tests::pool(options, connect).await;
    let a = start_accounts(&pool, |c| c.commands.command_max_attempts = 60).await;
    let b = start_accounts(&pool, |c| c.commands.command_max_attempts = 60).await;
    let alice = token("alice", Customer);
    let id = a.api().open_account(&alice, "EUR", 1000).await;
    let apis = [a.api(), b.api()];
    let replies: Vec<tests::Reply> = futures::future::join_all((0..50_usize).map(|i| {
        apis[i % 2]
            .post(&format!("/accounts/{id}/withdrawals"))
            .token(&alice)
            .json(json!({"amount": 30, "currency": "EUR"}))
            .send()
    }))
    .await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused = replies.iter().filter(|r| r.status == 422 && r.code() == "insufficient_funds").count();
    assert_eq!((ok, refused), (33, 17), "{:?}", replies.iter().find(|r| r.status != 200 && r.status != 422));
    let events = stream_events(&pool, id).await;
    assert_eq!(events.last().unwrap().2["balance_after"].as_i64(), Some(10));
    assert!(events.iter().filter_map(|e| e.2["balance_after"].as_i64()).all(|b| b >= 0));
}
