//! Attacks on the edges, each sent as an attacker would and shown refused: the gateway's
//! route check walked around with backslashes and encoded separators, its metrics
//! grown with made-up methods, an undeclared method on a known path, a token subject
//! that would share the saga's idempotency namespace, the web app framed by another
//! site, the rapids flooded or written to as the bank, rivers drained by another
//! caller, known secrets, a dev login on a public address, https upstreams unverified,
//! a stream lengthened to make reads of the past expensive. (The Postgres container's
//! logins without its password are refused in scripts/images.)
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
    bus.post("/topics").token(&tina).json(json!({"name": "offer.made"})).send().await.expect(201);
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
    // a machine identity owns rivers of its own, but never of the bank's events
    for topic in ["account.*", "transfer.*", "*", "account.deposited"] {
        let wide = bus
            .request(reqwest::Method::PUT, &format!("/rivers/rails/subscriptions/{topic}"))
            .token(&rail)
            .send()
            .await;
        assert_eq!((wide.status, wide.code()), (403, "forbidden"), "{topic}: {}", wide.body);
    }
    let own = bus.request(reqwest::Method::PUT, "/rivers/rails/subscriptions/offer.made").token(&rail).send().await;
    assert_eq!(own.expect(200)["owner"], "rail-1");
    // nor does it hold accounts or move money of its own
    let accounts = tests::Api::new(&bank.accounts.base);
    accounts
        .post("/accounts")
        .token(&rail)
        .json(json!({"currency": "EUR"}))
        .send()
        .await
        .expect_error(403, "forbidden");
    let transfers = tests::Api::new(&bank.transfers.base);
    let body = json!({"from": uuid::Uuid::now_v7(), "to": uuid::Uuid::now_v7(), "amount": 1, "currency": "EUR"});
    transfers.post("/transfers").token(&rail).json(body).send().await.expect_error(403, "forbidden");
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

/// A token signed with `secret` (HS256), its header's `kid` and claims as given.
#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_customer_can_neither_flood_the_rapids_nor_post_what_nobody_advertised(pool: PgPool) {
    // a bus whose posts are limited to 1 a second with a burst of 3, per subject
    let config =
        event_bus::Config { posts_per_s: 1, posts_burst: 3, ..event_bus::Config::new(tests::service_args(&pool)) };
    let state = event_bus::AppState::new(&config, pool.clone(), None).unwrap();
    let running = tests::spawn(event_bus::router(state)).await;
    let bus = tests::Api::new(&running.base);
    let (mallory, alice) = (token("mallory", Customer), token("alice", Customer));
    let before = tests::total_events(&pool).await;
    let post = |who: &str, kind: &str, data: serde_json::Value| {
        bus.post("/events").token(who).json(json!({"type": kind, "source": "shop", "data": data})).send()
    };
    // an unadvertised topic, a bank's task, too much data: each refused or held to the rules
    post(&mallory, "victim.spammed", json!({})).await.expect_error(403, "topic_not_advertised");
    let teller = tests::teller_token();
    bus.post("/topics").token(&teller).json(json!({"name": "offer.made"})).send().await.expect(201);
    let big = json!({"blob": "x".repeat(17 * 1024)});
    post(&mallory, "offer.made", big).await.expect_error(413, "payload_too_large");
    assert_eq!(tests::total_events(&pool).await, before, "a refusal stored something");
    // every attempt counts against the burst: within a few more posts, 429 with Retry-After
    let mut stored: i64 = 0;
    let limited = loop {
        let reply = post(&mallory, "offer.made", json!({"n": stored})).await;
        if reply.status != 201 {
            break reply;
        }
        stored += 1;
        assert!(stored <= 3, "a burst of 3 at 1/s let {stored} posts through after 2 attempts");
    };
    limited.expect_error(429, "rate_limited");
    let retry: u64 = limited.headers.get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).unwrap_or(0);
    assert!(retry >= 1, "429 without a Retry-After: {:?}", limited.headers);
    assert_eq!(tests::total_events(&pool).await, before + stored, "a limited post was stored");
    // another subject has its own budget; what mallory did costs alice nothing
    post(&alice, "offer.made", json!({"n": 1})).await.expect(201);
    assert_eq!(tests::total_events(&pool).await, before + stored + 1);
}

fn signed(secret: &str, kid: Option<&str>, claims: serde_json::Value) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, &claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())).unwrap()
}

#[test]
fn known_and_short_secrets_are_refused_and_keys_rotate_by_kid() {
    use service_kit::auth::{AuthSetupError, JwtVerifier, KNOWN_SECRETS};
    use service_kit::config::{AuthArgs, Secret};
    for known in KNOWN_SECRETS {
        let refused = JwtVerifier::from_args(&AuthArgs::hs256(*known));
        assert!(matches!(refused, Err(AuthSetupError::KnownSecret(_))), "{known}: {refused:?}");
    }
    let short = JwtVerifier::from_args(&AuthArgs::hs256("x".repeat(31)));
    assert!(matches!(short, Err(AuthSetupError::WeakSecret(_))), "{short:?}");
    let bad_set = AuthArgs { jwt_keys: Some(Secret::new("no-equals-sign")), ..AuthArgs::hs256("y".repeat(40)) };
    assert!(matches!(JwtVerifier::from_args(&bad_set), Err(AuthSetupError::KeySet)));

    // two keys valid while one rotates: each token names its key
    let (old, new) = ("o".repeat(40), "n".repeat(40));
    let args = AuthArgs { jwt_keys: Some(Secret::new(format!("2026-11={old},2026-12={new}"))), ..AuthArgs::default() };
    let verifier = JwtVerifier::from_args(&args).unwrap();
    let now = chrono::Utc::now().timestamp();
    let claims = json!({"sub": "alice", "role": "customer", "exp": now + 600});
    assert!(verifier.verify(&signed(&old, Some("2026-11"), claims.clone())).is_ok());
    assert!(verifier.verify(&signed(&new, Some("2026-12"), claims.clone())).is_ok());
    for (secret, kid) in [(&old, Some("2026-12")), (&new, Some("2027-01")), (&new, None)] {
        let refused = verifier.verify(&signed(secret, kid, claims.clone())).unwrap_err();
        assert_eq!(refused.code.as_str(), "invalid_token", "{kid:?}");
    }

    // iss and aud when configured, nbf, and no token valid for more than the maximum
    let secret = "s".repeat(40);
    let args = AuthArgs {
        jwt_issuer: Some("https://login.bank".into()),
        jwt_audience: Some("bank-api".into()),
        jwt_max_ttl_secs: 3600,
        ..AuthArgs::hs256(secret.as_str())
    };
    let verifier = JwtVerifier::from_args(&args).unwrap();
    let good =
        json!({"sub": "alice", "role": "customer", "exp": now + 600, "iss": "https://login.bank", "aud": "bank-api"});
    assert!(verifier.verify(&signed(&secret, None, good.clone())).is_ok());
    let mut cases = Vec::new();
    for (field, value) in [
        ("iss", json!("https://evil.example")),
        ("aud", json!("another-api")),
        ("nbf", json!(now + 600)),
        ("exp", json!(now + 7200)),
    ] {
        let mut claims = good.clone();
        claims[field] = value;
        cases.push((field, claims));
    }
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("iss");
    cases.push(("no iss", missing));
    for (what, claims) in cases {
        let refused = verifier.verify(&signed(&secret, None, claims)).unwrap_err();
        assert_eq!(refused.code.as_str(), "invalid_token", "{what}");
    }
}

#[test]
fn every_secret_written_in_the_repository_is_one_the_services_refuse() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut files = vec![root.join("compose.yaml"), root.join(".env.example"), root.join("Dockerfile")];
    for dir in ["scripts", "deploy/containers"] {
        for entry in std::fs::read_dir(root.join(dir)).unwrap() {
            files.push(entry.unwrap().path());
        }
    }
    let assignment = |line: &str| -> Option<String> {
        let rest = line.trim_start().trim_start_matches("export ").strip_prefix("JWT_SECRET")?;
        let value = rest.trim_start().strip_prefix(['=', ':'])?.trim();
        let value = value.split_whitespace().next().unwrap_or_default().trim_matches('"');
        let value = value.strip_prefix("${JWT_SECRET:-").map(|v| v.trim_end_matches('}')).unwrap_or(value);
        // a value computed at run time, or read from elsewhere, is not written here
        (!value.is_empty() && !value.starts_with('$') && !value.starts_with("${")).then(|| value.to_owned())
    };
    let mut seen = 0;
    for file in files.iter().filter(|f| f.is_file()) {
        for line in std::fs::read_to_string(file).unwrap_or_default().lines() {
            if let Some(value) = assignment(line) {
                seen += 1;
                assert!(
                    service_kit::auth::KNOWN_SECRETS.contains(&value.as_str()),
                    "{} writes JWT_SECRET={value}: add it to KNOWN_SECRETS so that no service accepts it",
                    file.display()
                );
            }
        }
    }
    assert!(seen >= 1, "the scan found .env.example's example secret");
}

#[tokio::test]
async fn the_dev_login_works_only_on_a_loopback_address() {
    use clap::Parser;
    let mut config = gateway::Config::try_parse_from(["gateway"]).unwrap();
    config.auth = service_kit::config::AuthArgs::hs256("g".repeat(40));
    config.dev_login = true;
    config.addr = "0.0.0.0:8080".parse().unwrap();
    let refused = gateway::AppState::new(config.clone()).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused.contains("DEV_LOGIN"), "{refused}");
    config.addr = "127.0.0.1:8080".parse().unwrap();
    assert!(gateway::AppState::new(config.clone()).is_ok());
    // and never in production
    config.app.app_env = service_kit::config::AppEnv::Production;
    let refused = gateway::AppState::new(config).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(refused.contains("APP_ENV=production"), "{refused}");
}

/// An upstream that says which path it was asked, over HTTPS only.
fn tls_upstream() -> axum::Router {
    axum::Router::new().fallback(|uri: axum::http::Uri| async move {
        axum::Json(json!({"status": "ready", "served_over_tls": uri.path()}))
    })
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn the_gateway_reaches_https_upstreams_and_verifies_them(pool: PgPool) {
    let upstream = tests::spawn_https(tls_upstream()).await;
    let bank = start_bank(&pool).await;
    let alice = token("alice", Customer);
    // trusting the upstream's CA: the request goes through, over TLS
    let ca = upstream.ca_file.clone();
    let base = upstream.running.base.clone();
    let gateway = tests::start_gateway(&bank, |c| {
        c.query_service_url = base.clone();
        c.upstream_ca_file = Some(ca);
    })
    .await;
    let reply = gateway.api.get("/api/accounts").token(&alice).send().await;
    assert_eq!(reply.expect(200)["served_over_tls"], "/accounts");
    // with the system's roots alone, the private CA's certificate is refused: no answer
    let base = upstream.running.base.clone();
    let untrusting = tests::start_gateway(&bank, |c| c.query_service_url = base).await;
    untrusting.api.get("/api/accounts").token(&alice).send().await.expect_error(503, "upstream_unavailable");
    // a CA file that holds no certificate stops the gateway at start-up, naming the file
    let empty = std::env::temp_dir().join(format!("bank-empty-ca-{}.pem", uuid::Uuid::new_v4()));
    std::fs::write(&empty, "not a certificate").unwrap();
    let mut config = <gateway::Config as clap::Parser>::try_parse_from(["gateway"]).unwrap();
    config.auth = service_kit::config::AuthArgs::hs256(tests::secret());
    config.upstream_ca_file = Some(empty.clone());
    let refused = gateway::AppState::new(config).err().map(|e| e.to_string()).unwrap_or_default();
    std::fs::remove_file(&empty).unwrap();
    assert!(refused.contains("holds no PEM certificate"), "{refused}");
}

#[tokio::test]
async fn bankctl_reaches_https_services_and_verifies_them() {
    let upstream = tests::spawn_https(tls_upstream()).await;
    let base = upstream.running.base.clone();
    let status = async |ca: Option<&std::path::Path>| {
        let mut command = tokio::process::Command::new(tests::binary("bankctl"));
        command.args(["status", "--accounts", &base, "--transfers", &base, "--queries", &base]);
        command.env_remove("BANK_CA_FILE");
        if let Some(ca) = ca {
            command.env("BANK_CA_FILE", ca);
        }
        command.output().await.unwrap()
    };
    let trusted = status(Some(&upstream.ca_file)).await;
    let report: serde_json::Value = serde_json::from_slice(&trusted.stdout).unwrap();
    assert!(trusted.status.success(), "{report}");
    assert_eq!(report["query-service"]["status"], 200);
    assert_eq!(report["query-service"]["body"]["served_over_tls"], "/ready");
    // the system's roots alone do not know the private CA: not ready, with the reason
    let untrusted = status(None).await;
    assert!(!untrusted.status.success());
    let report: serde_json::Value = serde_json::from_slice(&untrusted.stdout).unwrap();
    let error = report["account-service"]["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("certificate"), "{report}");
}

/// The rows account-service read for its reads of the past of kind `read`, so far.
async fn past_rows(accounts: &tests::Api, read: &str) -> (f64, f64) {
    let reply = accounts.get("/metrics").send().await;
    let text = reply.expect(200).as_str().unwrap_or_default().to_owned();
    let sum = tests::metric(&text, &format!("account_past_read_rows_sum{{read=\"{read}\"}}")).unwrap_or(0.0);
    let count = tests::metric(&text, &format!("account_past_read_rows_count{{read=\"{read}\"}}")).unwrap_or(0.0);
    (sum, count)
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_stream_lengthened_by_a_hundred_thousand_credits_costs_a_past_read_one_snapshot_interval(pool: PgPool) {
    use bank_domain::account::{Account, AccountEvent};
    use bank_domain::money::Currency;
    use eventstore::Aggregate;
    use eventstore::store::{Append, NewEvent, SnapshotWrite};
    const EVENTS: i32 = 100_000;
    const INTERVAL: i32 = 100;
    // alice's account, then 100,000 one-cent credits from transfers of anyone, appended
    // as the repository appends them: a snapshot with each crossing of 100 versions
    let store = eventstore::EventStore::new(pool.clone());
    let id = uuid::Uuid::now_v7();
    let eur = Currency::parse("EUR").unwrap();
    let mut state = Account::default();
    let mut version = 0;
    let mut last_transfer = uuid::Uuid::nil();
    while version < EVENTS + 1 {
        let mut events = Vec::new();
        while events.len() < INTERVAL as usize && version + (events.len() as i32) < EVENTS + 1 {
            let event = if version == 0 && events.is_empty() {
                AccountEvent::Opened { owner: "alice".into(), currency: eur }
            } else {
                last_transfer = uuid::Uuid::now_v7();
                let balance_after = state.balance + 1;
                AccountEvent::Credited {
                    transfer_id: last_transfer,
                    amount: 1,
                    currency: eur,
                    balance_after,
                    counterparty: uuid::Uuid::now_v7(),
                }
            };
            state = state.apply(&event);
            events.push(NewEvent::from_domain(&event).unwrap());
        }
        let expected_version = version;
        version += events.len() as i32;
        let snapshot = SnapshotWrite {
            version,
            schema_version: Account::SNAPSHOT_SCHEMA_VERSION,
            state: serde_json::to_value(&state).unwrap(),
        };
        let append = Append {
            stream_id: id,
            stream_type: Account::STREAM_TYPE,
            expected_version,
            events,
            metadata: Default::default(),
            snapshot: Some(snapshot),
            idempotency: Vec::new(),
        };
        store.append(&append).await.unwrap();
    }
    assert_eq!(state.balance, i64::from(EVENTS));
    let running = tests::start_accounts(&pool, |_| {}).await;
    let accounts = running.api();
    let alice = token("alice", Customer);

    // the account at a version deep in its history: exact, from the snapshot before it
    let (sum, count) = past_rows(&accounts, "as_of").await;
    let then = accounts.get(&format!("/accounts/{id}?at_version=73456")).token(&alice).send().await;
    assert_eq!((then.expect(200)["version"].as_i64(), then.body["balance"].as_i64()), (Some(73_456), Some(73_455)));
    let (sum2, count2) = past_rows(&accounts, "as_of").await;
    assert_eq!(count2 - count, 1.0);
    let rows = sum2 - sum;
    // a snapshot, at most one interval of events, the 20 newest transactions then
    assert!(rows <= f64::from(1 + INTERVAL + 20), "at_version read {rows} rows of a stream of {EVENTS}");

    // ... and at a time: the prefix recorded by then (whole appends share a time)
    let (recorded,): (chrono::DateTime<chrono::Utc>,) =
        sqlx::query_as("select recorded_at from es.events where stream_id = $1 and version = 50001")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
    let (last_then,): (i32,) =
        sqlx::query_as("select max(version) from es.events where stream_id = $1 and recorded_at <= $2")
            .bind(id)
            .bind(recorded)
            .fetch_one(&pool)
            .await
            .unwrap();
    let at = recorded.to_rfc3339_opts(chrono::SecondsFormat::Micros, true).replace('+', "%2B");
    let then = accounts.get(&format!("/accounts/{id}?as_of={at}")).token(&alice).send().await;
    let expected = (Some(i64::from(last_then)), Some(i64::from(last_then) - 1));
    assert_eq!((then.expect(200)["version"].as_i64(), then.body["balance"].as_i64()), expected);
    let (sum3, _) = past_rows(&accounts, "as_of").await;
    assert!(sum3 - sum2 <= f64::from(1 + INTERVAL + 20), "as_of read {} rows", sum3 - sum2);

    // the account's transfers: the newest first, from its newest events alone
    let (sum, _) = past_rows(&accounts, "transfers").await;
    let listed = accounts.get(&format!("/accounts/{id}/transfers?limit=10")).token(&alice).send().await;
    let items = listed.expect(200)["items"].as_array().cloned().unwrap_or_default();
    assert_eq!(items.len(), 10);
    assert_eq!(items[0]["transfer_id"], json!(last_transfer));
    let (sum2, _) = past_rows(&accounts, "transfers").await;
    assert!(sum2 - sum <= 64.0, "the transfers read {} rows", sum2 - sum);
}
