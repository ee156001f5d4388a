//! Overload sheds, it does not swell: a service running MAX_IN_FLIGHT requests (here
//! waiting reads) refuses one more at once with 503 `overloaded` and Retry-After,
//! keeps answering its operational routes, and takes requests again as soon as one
//! of those in flight ends.
#![allow(clippy::unwrap_used)]

use sqlx::PgPool;
use std::time::{Duration, Instant};
use tests::{Customer, token};

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_service_at_its_limit_refuses_at_once_and_recovers_at_once(pool: PgPool) {
    let mut config = query_service::Config::new(tests::service_args(&pool));
    config.service.http.max_in_flight = 2;
    let state = query_service::AppState::new(&config, pool.clone()).unwrap();
    let running = tests::spawn(query_service::router(state)).await;
    let api = running.api();
    let alice = token("alice", Customer);
    // two reads waiting 8 s for an account version that never comes take both places
    let waiting: Vec<_> = (0..2)
        .map(|_| {
            let (api, alice) = (api.clone(), alice.clone());
            tokio::spawn(async move {
                let id = uuid::Uuid::now_v7();
                api.get(&format!("/accounts/{id}?min_version=5&wait_ms=8000")).token(&alice).send().await
            })
        })
        .collect();
    // a third request is refused as soon as both are in flight, without waiting
    let refused = tests::wait_for(Duration::from_secs(8), "the third request to be shed", || async {
        let started = Instant::now();
        let reply = api.get(&format!("/accounts/{}", uuid::Uuid::now_v7())).token(&alice).send().await;
        (reply.status == 503).then_some((reply, started.elapsed()))
    })
    .await;
    let (reply, took) = refused;
    reply.expect_error(503, "overloaded");
    assert!(reply.headers.contains_key("retry-after"), "{:?}", reply.headers);
    assert!(took < Duration::from_secs(1), "shedding took {took:?}");
    // the limit is the service's, not the route's: another route is refused too
    let other = api.get(&format!("/transfers/{}", uuid::Uuid::now_v7())).token(&alice).send().await;
    other.expect_error(503, "overloaded");
    // the operational routes still answer, and count what was shed
    let metrics = api.get("/metrics").send().await;
    let text = metrics.expect(200).as_str().unwrap().to_owned();
    assert!(tests::metric(&text, "http_requests_shed_total").unwrap_or(0.0) >= 1.0, "{text}");
    api.get("/health").send().await.expect(200);
    // once the waits end, the next request is taken at once
    for read in waiting {
        let answered = read.await.unwrap();
        assert!(matches!(answered.status, 404 | 409), "{}: {}", answered.status, answered.body);
    }
    let after = api.get(&format!("/accounts/{}", uuid::Uuid::now_v7())).token(&alice).send().await;
    after.expect_error(404, "account_not_found");
}
