//! Attacks on the edges, each sent as an attacker would and shown refused: the gateway's
//! route check walked around with backslashes and encoded separators, its metrics
//! grown with made-up methods, an undeclared method on a known path, a token subject
//! that would share the saga's idempotency namespace, the web app framed by another
//! site.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use sqlx::PgPool;
use tests::{Customer, start_bank, token};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Sends `request_line` as it is (no client normalises it) and returns the status and
/// the whole answer.
async fn raw(base: &str, request_line: &str, token: &str) -> (u16, String) {
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "{request_line} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.unwrap();
    let text = String::from_utf8_lossy(&answer).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, text)
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn the_gateways_route_check_cannot_be_walked_around(pool: PgPool) {
    let bank = start_bank(&pool).await;
    let gw = tests::start_gateway(&bank, |_| {}).await;
    let alice = token("alice", Customer);
    let id = uuid::Uuid::now_v7();
    for target in [
        // a raw backslash: the URL library would turn it into `/` and resolve the dots
        "GET /api/events/x\\..\\..\\metrics".to_owned(),
        "GET /api/accounts/x\\..\\..\\metrics?as_of=1".to_owned(),
        // encoded separators and dots
        "GET /api/events/x%2f..%2f..%2fmetrics".to_owned(),
        "GET /api/events/x%5c..%5c..%5cmetrics".to_owned(),
        "GET /api/events/%2e%2e/metrics".to_owned(),
        "GET /api/events/..%2Fmetrics".to_owned(),
        format!("GET /api/accounts/{id}%2f..%2f..%2fmetrics"),
        // dot and empty segments, a semicolon parameter, a NUL
        "GET /api/events/./../metrics".to_owned(),
        "GET /api/accounts//metrics".to_owned(),
        format!("GET /api/accounts/{id};x=1"),
        "GET /api/events/%00".to_owned(),
    ] {
        let (status, answer) = raw(gw.api.base(), &target, &alice).await;
        assert!(status == 404 || status == 400, "{target}: {status}\n{answer}");
        assert!(!answer.contains("# HELP"), "{target} reached a /metrics: {answer}");
    }
    // the canonical path still works
    let (status, answer) = raw(gw.api.base(), &format!("GET /api/accounts/{id}"), &alice).await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer.contains("account_not_found"), "{answer}");
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn made_up_methods_do_not_grow_the_metrics_and_known_paths_answer_405(pool: PgPool) {
    let bank = start_bank(&pool).await;
    let gw = tests::start_gateway(&bank, |_| {}).await;
    let alice = token("alice", Customer);
    for method in ["ZZ8", "ZZ9", "FOO", "TRACE"] {
        let reply = gw.api.request(method.parse().unwrap(), "/api/accounts").send().await;
        assert_eq!((reply.status, reply.code()), (405, "method_not_allowed"), "{method}: {}", reply.body);
        let allow = reply.headers.get("allow").map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(allow.as_deref(), Some("GET, POST"), "{method}");
    }
    let reply = gw.api.request("TRACE".parse().unwrap(), "/api/transfers/x").token(&alice).send().await;
    assert_eq!((reply.status, reply.headers.get("allow").map(|v| v.to_str().unwrap())), (405, Some("GET")));
    let metrics = gw.admin.get("/metrics").send().await;
    let text = metrics.expect(200).as_str().unwrap().to_owned();
    for made_up in ["ZZ8", "ZZ9", "FOO"] {
        assert!(!text.contains(&format!("method=\"{made_up}\"")), "a series for {made_up}:\n{text}");
    }
    assert!(text.contains("method=\"other\""), "{text}");
    // the public address serves neither the metrics nor readiness
    for path in ["/metrics", "/ready"] {
        gw.api.get(path).send().await.expect_error(404, "not_found");
    }
    gw.admin.get("/ready").send().await.expect(200);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_subject_with_a_colon_is_refused(pool: PgPool) {
    let accounts = tests::start_accounts(&pool, |_| {}).await;
    // `saga:accounts` is the saga's idempotency namespace
    for subject in ["saga:accounts", "a:b"] {
        let reply = accounts
            .api()
            .post("/accounts")
            .token(&token(subject, Customer))
            .json(json!({"currency": "EUR"}))
            .send()
            .await;
        assert_eq!((reply.status, reply.code()), (401, "invalid_token"), "{subject}: {}", reply.body);
    }
    assert_eq!(tests::total_events(&pool).await, 0);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn the_web_app_cannot_be_framed_nor_load_another_origin(pool: PgPool) {
    let bank = start_bank(&pool).await;
    let gw = tests::start_gateway(&bank, |_| {}).await;
    for path in ["/", "/app/app.js", "/api/accounts"] {
        let reply = gw.api.get(path).send().await;
        let header = |name: &str| reply.headers.get(name).map(|v| v.to_str().unwrap().to_owned());
        let csp = header("content-security-policy").unwrap_or_default();
        assert!(csp.contains("default-src 'self'") && csp.contains("frame-ancestors 'none'"), "{path}: {csp}");
        assert_eq!(header("x-content-type-options").as_deref(), Some("nosniff"), "{path}");
        assert_eq!(header("x-frame-options").as_deref(), Some("DENY"), "{path}");
        assert_eq!(header("referrer-policy").as_deref(), Some("no-referrer"), "{path}");
    }
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_generic_river_is_its_owners_and_nobody_posts_as_the_bank(pool: PgPool) {
    use tests::{Admin, Service, Teller};
    let bank = start_bank(&pool).await;
    let bus = tests::Api::new(&bank.bus.base);
    let (tina, tom, admin) = (token("tina", Teller), token("tom", Teller), token("root", Admin));
    let rail = token("rail-1", Service);
    // tina's river
    let created = bus.request(reqwest::Method::PUT, "/rivers/tinas/subscriptions/offer.made").token(&tina).send().await;
    assert_eq!(created.expect(200)["owner"], "tina");
    let alice = token("alice", Customer);
    let posted = bus
        .post("/events")
        .token(&alice)
        .json(json!({"type": "offer.made", "source": "shop", "data": {"n": 1}}))
        .send()
        .await;
    posted.expect(201);
    // another teller can neither drain it, nor acknowledge on it, nor change it
    let receive = json!({"max_messages": 10, "wait_ms": 0});
    bus.post("/rivers/tinas/receive").token(&tom).json(receive.clone()).send().await.expect_error(403, "forbidden");
    let ack = json!({"receipts": [uuid::Uuid::now_v7()]});
    bus.post("/rivers/tinas/ack").token(&tom).json(ack).send().await.expect_error(403, "forbidden");
    for method in [reqwest::Method::PUT, reqwest::Method::DELETE] {
        let change = bus.request(method.clone(), "/rivers/tinas/subscriptions/offer.taken").token(&tom).send().await;
        change.expect_error(403, "forbidden");
    }
    bus.post("/rivers/tinas/receive").token(&rail).json(receive.clone()).send().await.expect_error(403, "forbidden");
    // customers own no rivers
    let mine = bus.request(reqwest::Method::PUT, "/rivers/alices/subscriptions/offer.made").token(&alice).send().await;
    mine.expect_error(403, "forbidden");
    // the owner reads it, and every message says who posted it; an admin may read any river
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while got.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "tina's message never came");
        let reply = bus
            .post("/rivers/tinas/receive")
            .token(&tina)
            .json(json!({"max_messages": 10, "wait_ms": 500}))
            .send()
            .await;
        got = reply.expect(200)["messages"].as_array().cloned().unwrap_or_default();
    }
    assert_eq!(got[0]["message"]["poster"], json!({"subject": "alice", "role": "customer"}));
    bus.post("/rivers/tinas/receive").token(&admin).json(receive).send().await.expect(200);

    // the bank's own domains are reserved as sources, whoever posts
    for source in ["account", "Transfer", "ledger", "bank", "account-service", "transfer.v2"] {
        let reply = bus
            .post("/events")
            .token(&admin)
            .json(json!({"type": "offer.made", "source": source, "data": {}}))
            .send()
            .await;
        assert_eq!((reply.status, reply.code()), (403, "reserved_source"), "{source}: {}", reply.body);
    }
}
