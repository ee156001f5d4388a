//! The API gateway, with the whole system behind it (real Postgres, a real Kinesis
//! API server): the bank used through `/api` only; authentication at the edge (a bad
//! token never reaches a service); the rate limit; a stopped upstream; the dev login.
#![allow(clippy::unwrap_used)]

use serde_json::json;
use sqlx::PgPool;
use tests::{Customer, start_bank};

use tests::start_gateway as gateway;

/// Requests a service answered on a route, from its own metrics.
fn answered(registry: &prometheus::Registry, method: &str, route: &str) -> u64 {
    registry
        .gather()
        .iter()
        .filter(|family| family.name() == "http_requests_total")
        .flat_map(|family| family.get_metric())
        .filter(|m| {
            let label = |name: &str| m.get_label().iter().find(|l| l.name() == name).map(|l| l.value().to_owned());
            label("method").as_deref() == Some(method) && label("route").as_deref() == Some(route)
        })
        .map(|m| m.get_counter().get_value() as u64)
        .sum()
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn the_bank_works_through_the_gateway_alone(pool: PgPool) {
    let bank = start_bank(&pool).await;
    let gw = gateway(&bank, |_| {}).await;
    let api = &gw.api;
    // sign in with the dev login
    let login = api.post("/api/dev/token").json(json!({"sub": "gina", "role": "customer"})).send().await;
    let alice = login.expect(200)["token"].as_str().unwrap().to_owned();
    // cash comes in through a teller (signed in with the dev login too)
    let login = api.post("/api/dev/token").json(json!({"sub": "tina", "role": "teller"})).send().await;
    let tina = login.expect(200)["token"].as_str().unwrap().to_owned();
    let opened = api
        .post("/api/accounts")
        .token(&tina)
        .json(json!({"currency": "EUR", "initial_deposit": 1000, "owner": "gina"}))
        .send()
        .await;
    let from = opened.id();
    let to = api.post("/api/accounts").token(&alice).json(json!({"currency": "EUR"})).send().await.id();
    let deposit = api
        .post(&format!("/api/accounts/{from}/deposits"))
        .token(&tina)
        .json(json!({"amount": 500, "currency": "EUR"}))
        .send()
        .await;
    let version = deposit.expect(200)["version"].as_i64().unwrap();
    // read your own write from the views
    let read = api.get(&format!("/api/accounts/{from}?min_version={version}&wait_ms=5000")).token(&alice).send().await;
    assert_eq!(read.expect(200)["balance"], 1500);
    assert_eq!(read.body["recent_transactions"].as_array().map(Vec::len), Some(2));
    // a transfer, followed to its end
    let created = api
        .post("/api/transfers")
        .token(&alice)
        .header("x-correlation-id", "corr-gw-1")
        .json(json!({"from": from, "to": to, "amount": 300, "currency": "EUR"}))
        .send()
        .await;
    let transfer = created.id();
    let done = api.get(&format!("/api/transfers/{transfer}?min_version=3&wait_ms=10000")).token(&alice).send().await;
    assert_eq!(done.expect(200)["state"], "completed");
    // the correlation id went on to the service and into the events
    let correlation: Option<String> =
        sqlx::query_scalar("select metadata ->> 'correlation_id' from es.events where stream_id = $1 and version = 1")
            .bind(transfer)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(correlation.as_deref(), Some("corr-gw-1"));
    let list = api.get("/api/accounts").token(&alice).send().await;
    let balances: Vec<i64> =
        list.expect(200)["items"].as_array().unwrap().iter().map(|a| a["balance"].as_i64().unwrap()).collect();
    assert_eq!(balances.iter().sum::<i64>(), 1500);
    // history and a temporal read, from the event store
    let history = api.get(&format!("/api/accounts/{from}/history")).token(&alice).send().await;
    let types: Vec<String> = history.expect(200)["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(&types[..3], ["account.opened", "account.deposited", "account.deposited"]);
    let then = api.get(&format!("/api/accounts/{from}?at_version=2")).token(&alice).send().await;
    assert_eq!((then.expect(200)["balance"].as_i64(), then.body["version"].as_i64()), (Some(1000), Some(2)));
    let recorded: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("select recorded_at from es.events where stream_id = $1 and version = 3")
            .bind(from)
            .fetch_one(&pool)
            .await
            .unwrap();
    let as_of = api
        .get(&format!(
            "/api/accounts/{from}?as_of={}",
            recorded.to_rfc3339_opts(chrono::SecondsFormat::Micros, true).replace('+', "%2B")
        ))
        .token(&alice)
        .send()
        .await;
    assert_eq!(as_of.expect(200)["balance"], 1500);
    // the event bus too, once a teller advertised the topic
    let teller = tests::teller_token();
    let ad = api.post("/api/topics").token(&teller).json(json!({"name": "page.viewed"})).send().await;
    ad.expect(201);
    let posted = api
        .post("/api/events")
        .token(&alice)
        .json(json!({"type": "page.viewed", "source": "web", "data": {}}))
        .send()
        .await;
    posted.expect(201);
    // one OpenAPI document for the whole API, once the upstreams answered
    let document = tests::wait_for(std::time::Duration::from_secs(10), "the assembled document", || async {
        let doc = api.get("/openapi.json").send().await;
        doc.body["paths"].get("/api/transfers").is_some().then_some(doc.body)
    })
    .await;
    for path in ["/api/accounts", "/api/accounts/{id}/deposits", "/api/transfers", "/api/events", "/api/dev/token"] {
        assert!(document["paths"].get(path).is_some(), "{path} missing from the document");
    }
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn the_edge_refuses_bad_tokens_limits_rates_and_names_dead_upstreams(pool: PgPool) {
    let bank = start_bank(&pool).await;
    let registry = &bank.account_state.kit.registry;
    let gw = gateway(&bank, |c| {
        c.rate_limit_per_s = 1;
        c.rate_limit_burst = 3;
        c.event_bus_url = format!("http://127.0.0.1:{}", tests::free_port());
        c.dev_login = false;
    })
    .await;
    let api = &gw.api;
    let before = answered(registry, "POST", "/accounts");
    let body = json!({"currency": "EUR"});
    api.post("/api/accounts").json(body.clone()).send().await.expect_error(401, "missing_token");
    api.post("/api/accounts").token("not-a-token").json(body.clone()).send().await.expect_error(401, "invalid_token");
    api.post("/api/accounts")
        .token(&tests::expired_token("alice"))
        .json(body.clone())
        .send()
        .await
        .expect_error(401, "token_expired");
    assert_eq!(answered(registry, "POST", "/accounts"), before, "a bad token reached account-service");

    // the rate limit: a burst of 3, then 429 with Retry-After
    let alice = tests::token("alice", Customer);
    let mut statuses = Vec::new();
    let mut retry_after = None;
    for _ in 0..6 {
        let reply = api.get("/api/accounts").token(&alice).send().await;
        if reply.status == 429 {
            reply.expect_error(429, "rate_limited");
            retry_after =
                reply.headers.get("retry-after").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        }
        statuses.push(reply.status);
    }
    assert_eq!(&statuses[..3], [200, 200, 200]);
    assert!(statuses[3..].contains(&429), "{statuses:?}");
    assert!(retry_after.is_some_and(|s| s >= 1), "429 without a Retry-After");
    // another subject has its own budget
    api.get("/api/accounts").token(&tests::token("bob", Customer)).send().await.expect(200);

    // a stopped upstream: 503 with its code
    let bob = tests::token("bob", Customer);
    let dead = api.post("/api/events").token(&bob).json(json!({"type": "x", "source": "s", "data": {}})).send().await;
    dead.expect_error(503, "upstream_unavailable");
    // no dev login unless DEV_LOGIN
    api.post("/api/dev/token").json(json!({"sub": "x", "role": "admin"})).send().await.expect_error(404, "not_found");
    // unknown API routes are 404 without reaching anyone
    api.get("/api/nothing").token(&bob).send().await.expect_error(404, "not_found");
    // the web app
    let page = api.get("/").send().await;
    assert_eq!(page.status, 200);
    assert!(
        page.body.as_str().is_some_and(|html| html.contains("<html") || html.contains("<!doctype")),
        "{}",
        page.body
    );
}
