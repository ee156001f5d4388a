//! Token checking with an RS256 public key, and the request timeout: a command that
//! times out is safe to retry with its Idempotency-Key (exactly one deposit results).
#![allow(clippy::unwrap_used)]

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::process::Command;
use tests::{Customer, start_accounts, stream_events, token};

fn openssl(args: &[&str]) {
    let status = Command::new("openssl").args(args).status().expect("openssl (scripts/test installs it)");
    assert!(status.success(), "openssl {args:?}");
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn rs256_tokens_are_checked_with_the_configured_public_key(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect).await;
    let dir = std::env::temp_dir().join(format!("bank-rs256-{}", uuid::Uuid::now_v7()));
    std::fs::create_dir_all(&dir).unwrap();
    let (private, public) = (dir.join("private.pem"), dir.join("public.pem"));
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", private.to_str().unwrap()]);
    openssl(&["pkey", "-in", private.to_str().unwrap(), "-pubout", "-out", public.to_str().unwrap()]);

    let svc = start_accounts(&pool, |c| c.service.auth.jwt_public_key_file = Some(public.clone())).await;
    let api = svc.api();
    let key = EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap();
    let claims = |exp: i64| json!({"sub": "rita", "role": "customer", "exp": chrono::Utc::now().timestamp() + exp});
    let rs256 = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(600), &key).unwrap();
    let opened = api.post("/accounts").token(&rs256).json(json!({"currency": "EUR"})).send().await;
    assert_eq!(opened.expect(201)["owner"], "rita");

    // beside the public key, HS256 tokens are refused unless asked for
    let hs256 = token("alice", Customer);
    api.post("/accounts")
        .token(&hs256)
        .json(json!({"currency": "EUR"}))
        .send()
        .await
        .expect_error(401, "invalid_token");
    let both = start_accounts(&pool, |c| {
        c.service.auth.jwt_public_key_file = Some(public.clone());
        c.service.auth.jwt_allow_hs256 = true;
    })
    .await;
    both.api().post("/accounts").token(&hs256).json(json!({"currency": "EUR"})).send().await.expect(201);
    // an expired RS256 token is refused
    let expired = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(-3600), &key).unwrap();
    api.post("/accounts")
        .token(&expired)
        .json(json!({"currency": "EUR"}))
        .send()
        .await
        .expect_error(401, "token_expired");
    // a token signed by another key pair is refused
    let other = dir.join("other.pem");
    openssl(&["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", other.to_str().unwrap()]);
    let forged_key = EncodingKey::from_rsa_pem(&std::fs::read(&other).unwrap()).unwrap();
    let forged = jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims(600), &forged_key).unwrap();
    api.post("/accounts")
        .token(&forged)
        .json(json!({"currency": "EUR"}))
        .send()
        .await
        .expect_error(401, "invalid_token");
    // alg "none" is never accepted
    let unsigned = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&claims(600).to_string()));
    api.post("/accounts")
        .token(&unsigned)
        .json(json!({"currency": "EUR"}))
        .send()
        .await
        .expect_error(401, "invalid_token");
    let _ = std::fs::remove_dir_all(&dir);
}

fn b64(s: &str) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(TABLE[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_timed_out_deposit_retried_with_its_key_happens_exactly_once(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let svc = start_accounts(&pool, |c| c.service.http.request_timeout_ms = 300).await;
    let api = svc.api();
    let alice = token("alice", Customer);
    let id = api.open_account(&alice, "EUR", 100).await;
    let deposit = || {
        api.post(&format!("/accounts/{id}/deposits"))
            .token(&tests::teller_token())
            .idempotency_key("slow-1")
            .json(json!({"amount": 7, "currency": "EUR"}))
    };

    // hold a lock that blocks every append until the request has timed out
    let mut blocker = pool.begin().await.unwrap();
    sqlx::query("lock table es.events in exclusive mode").execute(&mut *blocker).await.unwrap();
    let timed_out = deposit().send().await;
    timed_out.expect_error(503, "timeout");
    assert!(timed_out.headers.get("retry-after").is_some());
    let metrics = api.get("/metrics").send().await;
    assert!(metrics.body.as_str().unwrap().lines().any(|l| l == "http_request_timeouts_total 1"));
    blocker.rollback().await.unwrap();

    // the retry answers as a success, and the deposit exists exactly once
    let retried = deposit().send().await;
    assert_eq!(retried.expect(200)["balance"].as_i64(), Some(107));
    let deposits = stream_events(&pool, id).await.into_iter().filter(|e| e.2["amount"] == 7).count();
    assert_eq!(deposits, 1);
    assert_eq!(deposit().send().await.expect(200)["balance"].as_i64(), Some(107));
}
