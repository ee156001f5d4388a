//! What every service offers operators: health, readiness (database and Kinesis),
//! Prometheus metrics, the OpenAPI document, request ids, opaque faults.
#![allow(clippy::unwrap_used)]

use rapids::{Rapids, RapidsConfig};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use tests::{Customer, start_accounts, start_transfers, token};

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn health_and_readiness_check_the_real_database_and_kinesis(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    for svc in [start_accounts(&pool, |_| {}).await, start_transfers(&pool, |_| {}).await] {
        let api = svc.api();
        assert_eq!(api.get("/health").send().await.expect(200)["status"], "ok");
        let ready = api.get("/ready").send().await;
        assert_eq!(ready.expect(200)["checks"], json!({"database": "ok", "kinesis": "ok"}));
    }
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn readiness_fails_when_kinesis_is_unreachable(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    // a port nobody listens on
    let rapids =
        Rapids::connect(&RapidsConfig::local(&format!("http://127.0.0.1:{}", tests::free_port()), "rapids")).await;
    let svc = tests::start_accounts_with(&pool, |_| {}, rapids).await;
    let ready = svc.api().get("/ready").send().await;
    ready.expect_error(503, "not_ready");
    assert_eq!(ready.body["error"]["checks"], json!({"database": "ok", "kinesis": "unavailable"}));
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn metrics_count_requests_by_route_and_the_stores_appends(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let svc = start_accounts(&pool, |_| {}).await;
    let api = svc.api();
    let alice = token("alice", Customer);
    let id = api.open_account(&alice, "EUR", 0).await;
    for _ in 0..3 {
        api.post(&format!("/accounts/{id}/deposits"))
            .token(&tests::teller_token())
            .json(json!({"amount": 1, "currency": "EUR"}))
            .send()
            .await
            .expect(200);
    }
    api.post(&format!("/accounts/{id}/withdrawals"))
        .token(&alice)
        .json(json!({"amount": 99, "currency": "EUR"}))
        .send()
        .await
        .expect(422);

    let reply = api.get("/metrics").send().await;
    assert_eq!(reply.status, 200);
    let text = reply.body.as_str().unwrap();
    let line =
        |prefix: &str| text.lines().find(|l| l.starts_with(prefix)).map(|l| l.rsplit(' ').next().unwrap().to_owned());
    assert_eq!(
        line(r#"http_requests_total{method="POST",route="/accounts/{id}/deposits",status="200"}"#).as_deref(),
        Some("3")
    );
    assert_eq!(
        line(r#"http_requests_total{method="POST",route="/accounts/{id}/withdrawals",status="422"}"#).as_deref(),
        Some("1")
    );
    assert!(text.contains(r#"http_request_duration_seconds_bucket{method="POST",route="/accounts/{id}/deposits""#));
    assert_eq!(line(r#"es_appends_total{stream_type="account"}"#).as_deref(), Some("4"));
    assert_eq!(line(r#"es_events_appended_total{stream_type="account"}"#).as_deref(), Some("4"));
    // no raw ids as labels
    assert!(!text.contains(&id.to_string()));
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn the_openapi_document_describes_every_route(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let cases = [
        (
            start_accounts(&pool, |_| {}).await,
            vec![
                ("/accounts", "post"),
                ("/accounts/{id}", "get"),
                ("/accounts/{id}/deposits", "post"),
                ("/accounts/{id}/withdrawals", "post"),
                ("/accounts/{id}/payments", "post"),
                ("/accounts/{id}/close", "post"),
                ("/accounts/{id}/history", "get"),
                ("/accounts/{id}/transfers", "get"),
            ],
        ),
        (start_transfers(&pool, |_| {}).await, vec![("/transfers", "post"), ("/transfers/{id}", "get")]),
    ];
    let alice = token("alice", Customer);
    for (svc, routes) in cases {
        let api = svc.api();
        let doc = api.get("/openapi.json").send().await;
        let doc = doc.expect(200);
        assert_eq!(doc["openapi"], "3.1.0");
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.push((path.clone(), method.clone()));
            }
        }
        for op in ["/health", "/ready", "/metrics", "/openapi.json"] {
            assert!(documented.contains(&(op.to_owned(), "get".to_owned())), "{op} undocumented");
        }
        for (path, method) in &routes {
            assert!(documented.contains(&((*path).to_owned(), (*method).to_owned())), "{method} {path} undocumented");
            // and the route really exists: it is not answered with the not-found fallback
            let concrete = path.replace("{id}", &uuid::Uuid::now_v7().to_string());
            let reply = api.request(method.parse().unwrap(), &concrete).token(&alice).json(json!({})).send().await;
            assert_ne!(reply.code(), "not_found", "{method} {path} is documented but not routed");
        }
        assert_eq!(documented.len(), routes.len() + 4, "every documented route is listed here: {documented:?}");
    }
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn request_ids_are_returned_and_kept(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let svc = start_accounts(&pool, |_| {}).await;
    let api = svc.api();
    let generated = api.get("/health").send().await;
    assert!(generated.headers.get("x-request-id").is_some_and(|v| !v.is_empty()));
    let given = api.get("/health").header("x-request-id", "req-42").send().await;
    assert_eq!(given.headers.get("x-request-id").unwrap(), "req-42");
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_database_fault_is_an_opaque_error(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let svc = start_accounts(&pool, |c| c.commands.aggregate_cache_size = 0).await;
    let api = svc.api();
    let alice = token("alice", Customer);
    let id = api.open_account(&alice, "EUR", 10).await;
    // the table the store writes to disappears under the service
    sqlx::query("alter table es.events rename to events_gone").execute(&pool).await.unwrap();
    let reply = api
        .post(&format!("/accounts/{id}/deposits"))
        .token(&tests::teller_token())
        .json(json!({"amount": 1, "currency": "EUR"}))
        .send()
        .await;
    reply.expect_error(500, "internal");
    let text = reply.body.to_string().to_lowercase();
    for internal in ["sqlx", "relation", "es.events", "select", "insert", "postgres"] {
        assert!(!text.contains(internal), "the body leaks `{internal}`: {text}");
    }
    sqlx::query("alter table es.events_gone rename to events").execute(&pool).await.unwrap();
}
