//! The event bus and the control plane, against real Postgres and a real Kinesis API
//! server: posting (201 after the commit, idempotent by event id, every refusal
//! storing nothing), the paged query of stored events, forged envelopes on the
//! stream, rivers whose subscriptions change while they run, generic rivers read like
//! a queue, and tasks.
#![allow(clippy::unwrap_used)]

use eventstore::envelope::Envelope;
use rapids::river::{Handler, HandlerError, River, RiverConfig, RiverEvent, RiverMetrics, Subscriptions, TopicFilter};
use serde_json::{Value, json};
use sqlx::{PgConnection, PgPool};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tests::{Admin, Api, Customer, Teller, start_bank, token, total_events, wait_for};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn event(kind: &str, data: Value) -> Value {
    json!({"type": kind, "source": "TheSource", "data": data})
}

async fn post(bus: &Api, who: &str, body: Value) -> tests::Reply {
    bus.post("/events").token(who).json(body).send().await
}

/// A teller advertises `topics`, which customers may then post.
async fn advertise(bus: &Api, topics: &[&str]) {
    for topic in topics {
        let reply = bus.post("/topics").token(&tests::teller_token()).json(json!({"name": topic})).send().await;
        assert!(matches!(reply.status, 200 | 201), "{topic}: {}", reply.body);
    }
}

/// Receives from a generic river until `want` messages arrived (each acked unless
/// `ack` is false) or 20 s passed; returns them in order.
async fn receive_all(bus: &Api, admin: &str, river: &str, want: usize, ack: bool) -> Vec<Value> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while got.len() < want {
        assert!(tokio::time::Instant::now() < deadline, "only {} of {want} messages on {river} within 20 s", got.len());
        let reply = bus
            .post(&format!("/rivers/{river}/receive"))
            .token(admin)
            .json(json!({"max_messages": 100, "wait_ms": 500}))
            .send()
            .await;
        let messages = reply.expect(200)["messages"].as_array().cloned().unwrap_or_default();
        if ack && !messages.is_empty() {
            let receipts: Vec<Value> = messages.iter().map(|m| m["receipt"].clone()).collect();
            let acked =
                bus.post(&format!("/rivers/{river}/ack")).token(admin).json(json!({"receipts": receipts})).send().await;
            acked.expect(200);
        }
        got.extend(messages);
    }
    got
}

fn event_ids(messages: &[Value]) -> Vec<String> {
    messages.iter().map(|m| m["message"]["eventId"].as_str().unwrap_or_default().to_owned()).collect()
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_posted_event_is_stored_before_its_answer_and_a_repeat_of_its_id_stores_nothing(pool: PgPool) {
    let bank = start_bank(&pool).await;
    let bus = Api::new(&bank.bus.base);
    let alice = token("alice", Customer);
    advertise(&bus, &["page.viewed"]).await;
    let id = Uuid::now_v7();
    let body = json!({"type": "page.viewed", "source": "web", "data": {"page": "/"}, "event_id": id,
                      "partition_key": "user-7", "tags": {"app": "site"}});
    let first = post(&bus, &alice, body.clone()).await;
    let answer = first.expect(201).clone();
    assert_eq!(answer["event_id"], json!(id));
    assert_eq!((answer["partition_key"].as_str(), answer["tags"]["app"].as_str()), (Some("user-7"), Some("site")));
    // stored, with the actor and role of the token, before the answer came
    let (kind, metadata): (String, Value) = sqlx::query_as("select type, metadata from es.events where event_id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(kind, "page.viewed");
    assert_eq!((metadata["actor"].as_str(), metadata["role"].as_str()), (Some("alice"), Some("customer")));
    assert_eq!((metadata["source"].as_str(), metadata["partition_key"].as_str()), (Some("web"), Some("user-7")));
    let stored = total_events(&pool).await;

    // the same id again: the first answer, nothing stored
    let again = post(&bus, &alice, body).await;
    assert_eq!(again.expect(201), &answer);
    assert_eq!(again.headers.get("idempotent-replayed").map(|v| v.to_str().unwrap_or("")), Some("true"));
    // the same id with other data: refused
    let other =
        post(&bus, &alice, json!({"type": "page.viewed", "source": "web", "data": {"page": "/x"}, "event_id": id}))
            .await;
    other.expect_error(422, "event_id_reused");
    assert_eq!(total_events(&pool).await, stored);

    // and the tailer played it to the rapids with the envelope's new fields
    let envelopes = tests::read_shards(&bank.rapids).await.concat();
    let played = envelopes.iter().find(|e| e.event_id == id).expect("the event reached the stream");
    assert_eq!((played.partition_key.as_str(), played.source.as_str()), ("user-7", "web"));
    assert!(played.timestamp > 0);
    assert_eq!(played.tags.get("service").and_then(Value::as_str), Some("event-bus"));
    assert_eq!(played.tags.get("app").and_then(Value::as_str), Some("site"));
    assert!(played.tags.contains_key("region"));
    let deposit_like = envelopes.iter().find(|e| e.event_type == "account.opened");
    assert!(deposit_like.is_none(), "no account was opened in this test");
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn every_refusal_has_its_code_and_stores_nothing(pool: PgPool) {
    let bank = start_bank(&pool).await;
    let bus = Api::new(&bank.bus.base);
    let alice = token("alice", Customer);
    let before = total_events(&pool).await;
    post(&bus, &alice, event("a.b.c.d", json!({}))).await.expect_error(400, "invalid_event_type");
    post(&bus, &alice, event("1st", json!({}))).await.expect_error(400, "invalid_event_type");
    post(&bus, &alice, event("account.credited", json!({"amount": 1_000_000})))
        .await
        .expect_error(403, "reserved_event_type");
    post(&bus, &alice, event("transfer.created", json!({}))).await.expect_error(403, "reserved_event_type");
    post(&bus, &alice, event("ViewPage", json!([1, 2]))).await.expect_error(400, "invalid_data");
    post(&bus, &alice, json!({"type": "ViewPage", "source": "no spaces", "data": {}}))
        .await
        .expect_error(400, "invalid_source");
    let tags: serde_json::Map<String, Value> = (0..17).map(|i| (format!("t{i}"), json!("v"))).collect();
    post(&bus, &alice, json!({"type": "ViewPage", "source": "s", "data": {}, "tags": tags}))
        .await
        .expect_error(400, "invalid_tags");
    // the tailer's own tags: a producer's would be replaced on the way to the stream
    for reserved in ["region", "service"] {
        post(&bus, &alice, json!({"type": "ViewPage", "source": "s", "data": {}, "tags": {reserved: "mine"}}))
            .await
            .expect_error(400, "invalid_tags");
    }
    post(&bus, &alice, json!({"type": "ViewPage", "source": "s", "data": {}, "partition_key": ""}))
        .await
        .expect_error(400, "invalid_partition_key");
    let big = "x".repeat(257 * 1024);
    post(&bus, &alice, event("ViewPage", json!({"blob": big}))).await.expect_error(413, "payload_too_large");
    bus.post("/events").json(event("ViewPage", json!({}))).send().await.expect_error(401, "missing_token");
    bus.post("/events").token(&alice).raw("{not json").send().await.expect_error(400, "malformed_json");
    // a customer posts only advertised topics, with at most 16 KiB of data and tags
    post(&bus, &alice, event("ViewPage", json!({}))).await.expect_error(403, "topic_not_advertised");
    advertise(&bus, &["ViewPage"]).await;
    let over = json!({"blob": "z".repeat(16 * 1024)});
    post(&bus, &alice, event("ViewPage", over.clone())).await.expect_error(413, "payload_too_large");
    assert_eq!(total_events(&pool).await, before, "a refusal stored something");
    // ... which is within a machine identity's limit, as is a body of 200 KiB
    let shop = token("shop", tests::Service);
    post(&bus, &shop, event("ViewPage", over)).await.expect(201);
    post(&bus, &shop, event("Unadvertised", json!({"blob": "y".repeat(200 * 1024)}))).await.expect(201);
    post(&bus, &alice, event("ViewPage", json!({"blob": "y".repeat(15 * 1024)}))).await.expect(201);
    assert_eq!(total_events(&pool).await, before + 3);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn stored_events_page_by_position_with_filters_for_staff_only(pool: PgPool) {
    let bank = start_bank(&pool).await;
    let bus = Api::new(&bank.bus.base);
    let alice = token("alice", Customer);
    let accounts = Api::new(&bank.accounts.base);
    let account = accounts.open_account(&alice, "EUR", 100).await;
    advertise(&bus, &["page.viewed", "cart.filled"]).await;
    for i in 0..5 {
        post(&bus, &alice, json!({"type": "page.viewed", "source": "web", "data": {"i": i}})).await.expect(201);
        post(&bus, &alice, json!({"type": "cart.filled", "source": "shop", "data": {"i": i}})).await.expect(201);
    }
    let teller = token("tom", Teller);
    // pages of 2 by type: contiguous, in position order, 5 in all
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = bus.get(&format!("/events?type=page.viewed&limit=2&after={after}")).token(&teller).send().await;
        let body = page.expect(200).clone();
        for item in body["items"].as_array().unwrap() {
            assert_eq!(item["type"], "page.viewed");
            seen.push((item["position"].as_i64().unwrap(), item["data"]["i"].as_i64().unwrap()));
        }
        match body["next_after"].as_i64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seen.iter().map(|(_, i)| *i).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    assert!(seen.windows(2).all(|w| w[0].0 < w[1].0));
    let by_source = bus.get("/events?source=shop").token(&teller).send().await;
    assert_eq!(by_source.expect(200)["items"].as_array().map(Vec::len), Some(5));
    // an account's stream: its aggregate events, source `account`
    let stream = bus.get(&format!("/events?stream={account}")).token(&token("root", Admin)).send().await;
    let items = stream.expect(200)["items"].as_array().cloned().unwrap();
    assert_eq!(
        items.iter().map(|e| e["type"].as_str().unwrap()).collect::<Vec<_>>(),
        ["account.opened", "account.deposited"]
    );
    assert!(items.iter().all(|e| e["source"] == "account"));
    bus.get("/events").token(&alice).send().await.expect_error(403, "forbidden");
    bus.get("/events?limit=0").token(&teller).send().await.expect_error(400, "invalid_query");
    bus.get("/events?stream=nope").token(&teller).send().await.expect_error(400, "invalid_query");
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_genuine_event_read_before_its_commit_is_visible_is_delivered_not_called_forged(pool: PgPool) {
    // logical decoding hands the tailer a commit once its record is flushed, a moment
    // before other sessions see it: a river may read an event it cannot see yet
    let bank = start_bank(&pool).await;
    let alice = token("alice", Customer);
    let queries = Api::new(&bank.queries.base);
    let account = Api::new(&bank.accounts.base).open_account(&alice, "EUR", 100).await;
    // stamped with this store's identity, as the tailer publishes it: waited for, not
    // taken for another store's
    let store = Some(eventstore::identity::identity(&pool).await.unwrap());
    let data = json!({"amount": 7, "currency": "EUR", "balance_after": 107});
    let envelope = Envelope { store, ..tests::aggregate_envelope("account.deposited", account, 3, data) };
    // the event written and not committed yet (invisible), its envelope on the stream
    let mut tx = pool.begin().await.unwrap();
    sqlx::query(
        "insert into es.events (stream_id, stream_type, version, event_id, type, schema_version, data, metadata)
         values ($1, 'account', 3, $2, 'account.deposited', 1, $3, '{\"actor\": \"alice\"}')",
    )
    .bind(account)
    .bind(envelope.event_id)
    .bind(&envelope.data)
    .execute(&mut *tx)
    .await
    .unwrap();
    tests::put_envelope(&bank.rapids, &envelope).await;
    wait_for(Duration::from_secs(10), "the views river to look again for the unseen event", || async {
        (tests::counter_sum(&bank.view_metrics.unseen) >= 1).then_some(())
    })
    .await;
    tx.commit().await.unwrap();

    let view = queries.get(&format!("/accounts/{account}?min_version=3&wait_ms=10000")).token(&alice).send().await;
    let view = view.expect(200).clone();
    assert_eq!((view["balance"].as_i64(), view["version"].as_i64()), (Some(107), Some(3)));
    assert_eq!(tests::counter_sum(&bank.view_metrics.forged), 0, "a genuine event was called forged");
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_forged_credit_put_straight_on_the_stream_moves_no_money(pool: PgPool) {
    let bank = start_bank(&pool).await;
    let alice = token("alice", Customer);
    let accounts = Api::new(&bank.accounts.base);
    let queries = Api::new(&bank.queries.base);
    let account = accounts.open_account(&alice, "EUR", 100).await;
    // a credit that claims to be the account's next event, as the tailer would publish it
    let data =
        json!({"amount": 1_000_000, "currency": "EUR", "balance_after": 1_000_100, "transfer_id": Uuid::now_v7()});
    let forged = Envelope {
        actor: "saga:accounts".into(),
        role: None,
        ..tests::aggregate_envelope("account.credited", account, 3, data)
    };
    tests::put_envelope(&bank.rapids, &forged).await;
    // a genuine deposit after it, on the same shard: once the views show it, every
    // river has read past the forged record
    let deposit = accounts
        .post(&format!("/accounts/{account}/deposits"))
        .token(&tests::teller_token())
        .json(json!({"amount": 5, "currency": "EUR"}))
        .send()
        .await;
    let version = deposit.expect(200)["version"].as_i64().unwrap();
    let view =
        queries.get(&format!("/accounts/{account}?min_version={version}&wait_ms=10000")).token(&alice).send().await;
    let view = view.expect(200).clone();
    assert_eq!((view["balance"].as_i64(), view["version"].as_i64()), (Some(105), Some(3)));
    let store: i64 = sqlx::query_scalar("select count(*) from es.events where stream_id = $1")
        .bind(account)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(store, 3, "the forged credit reached the event store");
    let credits: i64 = sqlx::query_scalar(
        "select count(*) from views.account_transactions where account_id = $1 and amount = 1000000",
    )
    .bind(account)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(credits, 0, "the forged credit reached the views");
    // counted by the rivers that read account.* (views and transfers)
    wait_for(Duration::from_secs(10), "the transfers river to count the forged envelope", || async {
        (tests::counter_sum(&bank.transfer_state.river_metrics.forged) >= 1).then_some(())
    })
    .await;
    assert!(tests::counter_sum(&bank.view_metrics.forged) >= 1, "the views river did not count the forged envelope");
    // its id is not in the store: parked once the grace for an unseen commit passed;
    // an operator's retry checks it against the store again and parks it again
    type Parked = (i64, String, Option<Uuid>, Option<String>, Option<i32>);
    let parked: Vec<Parked> = sqlx::query_as(
        "select id, error, stream_id, event_type, version from rapids.river_dead_letters
         where river = 'views' and status = 'parked'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert!(parked[0].1.contains("did not hold"), "{}", parked[0].1);
    // parked with the envelope's identity, for the operator's listing
    assert_eq!((parked[0].2, parked[0].3.as_deref(), parked[0].4), (Some(account), Some("account.credited"), Some(3)));
    assert_eq!(rapids::river::dead_letter::request_retry(&pool, "views", Some(parked[0].0)).await.unwrap(), 1);
    wait_for(Duration::from_secs(20), "the retried forged envelope to be parked again", || async {
        let (status, error): (String, String) =
            sqlx::query_as("select status, error from rapids.river_dead_letters where id = $1")
                .bind(parked[0].0)
                .fetch_one(&pool)
                .await
                .unwrap();
        (status == "parked" && error.contains("does not hold")).then_some(())
    })
    .await;
    let balance = queries.get(&format!("/accounts/{account}")).token(&alice).send().await;
    assert_eq!(balance.expect(200)["balance"], 105, "a retry of the forged credit moved money");

    // a copy of a genuine event (its id, stream, version and type) with other data is
    // forged too: the rivers act on data
    let genuine = tests::read_shards(&bank.rapids)
        .await
        .concat()
        .into_iter()
        .find(|e| e.stream_id == account && e.event_type == "account.deposited" && e.version == 3)
        .expect("the genuine deposit is on the stream");
    let mut tampered = genuine.clone();
    tampered.data["amount"] = json!(1_000_000);
    let before = tests::counter_sum(&bank.view_metrics.forged);
    tests::put_envelope(&bank.rapids, &tampered).await;
    let next = accounts
        .post(&format!("/accounts/{account}/deposits"))
        .token(&tests::teller_token())
        .json(json!({"amount": 1, "currency": "EUR"}))
        .send()
        .await;
    let version = next.expect(200)["version"].as_i64().unwrap();
    let view =
        queries.get(&format!("/accounts/{account}?min_version={version}&wait_ms=10000")).token(&alice).send().await;
    assert_eq!(view.expect(200)["balance"], 106);
    assert!(tests::counter_sum(&bank.view_metrics.forged) > before, "a tampered copy of a genuine event passed");
}

/// A river a service runs with a handler of its own, following the registry.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<String>>>,
}

impl Handler for Recorder {
    async fn handle(&self, _tx: &mut PgConnection, events: &[RiverEvent]) -> Result<(), HandlerError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.extend(events.iter().map(|e| e.envelope.data["n"].as_str().unwrap_or_default().to_owned()));
        Ok(())
    }
}

/// Receives and acknowledges a generic river's messages until `last` arrives; their
/// event ids and tags, in order.
async fn drain_until(bus: &Api, who: &str, river: &str, last: &str) -> Vec<(String, Value)> {
    let mut got: Vec<(String, Value)> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !got.iter().any(|(id, _)| id == last) {
        assert!(tokio::time::Instant::now() < deadline, "waited 20 s in vain for {river} to receive {last}");
        let reply = bus.post(&format!("/rivers/{river}/receive")).token(who).json(json!({"wait_ms": 300})).send().await;
        let messages = reply.expect(200)["messages"].as_array().cloned().unwrap_or_default();
        let receipts: Vec<Value> = messages.iter().map(|m| m["receipt"].clone()).collect();
        if !receipts.is_empty() {
            let ack = bus.post(&format!("/rivers/{river}/ack")).token(who).json(json!({"receipts": receipts})).send();
            ack.await.expect(200);
        }
        got.extend(
            messages.iter().map(|m| {
                (m["message"]["eventId"].as_str().unwrap_or_default().to_owned(), m["message"]["tags"].clone())
            }),
        );
    }
    got
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn tags_route_events_to_the_subscriptions_that_select_them(pool: PgPool) {
    let bank = start_bank(&pool).await;
    let bus = Api::new(&bank.bus.base);
    let engine = token("offer-engine", tests::Service);
    let put = |path: String| bus.request(reqwest::Method::PUT, &path).token(&engine).send();
    put("/rivers/vips/subscriptions/offers.assembled?tags=vip".into()).await.expect(200);
    // several selectors: all of them; given in any order, kept sorted
    put("/rivers/vips/subscriptions/ViewPage?tags=vip%2Csegment%3Droad-warrior".into()).await.expect(200);
    put("/rivers/warriors/subscriptions/offers.assembled?tags=segment%3Droad-warrior".into()).await.expect(200);
    put("/rivers/everything/subscriptions/offers.assembled".into()).await.expect(200);
    for river in ["vips", "warriors", "everything"] {
        put(format!("/rivers/{river}/subscriptions/sentinel.made")).await.expect(200);
    }
    let subs = bus.get("/rivers/vips/subscriptions").token(&tests::teller_token()).send().await;
    assert_eq!(
        subs.expect(200)["subscriptions"],
        json!([
            {"topic": "offers.assembled", "tags": ["vip"]},
            {"topic": "ViewPage", "tags": ["segment=road-warrior", "vip"]},
            {"topic": "sentinel.made", "tags": []}])
    );
    assert_eq!(subs.body["topics"], json!(["offers.assembled", "ViewPage", "sentinel.made"]));

    // one shard (one partition key), so the sentinel comes last in every river
    let send = |kind: &'static str, tags: Value| {
        let (bus, engine) = (bus.clone(), engine.clone());
        async move {
            let mut body = json!({"type": kind, "source": "offers", "data": {}, "partition_key": "visitor-1"});
            if !tags.is_null() {
                body["tags"] = tags;
            }
            let reply = post(&bus, &engine, body).await;
            reply.expect(201)["event_id"].as_str().unwrap().to_owned()
        }
    };
    let both = send("offers.assembled", json!({"vip": "true", "segment": "road-warrior"})).await;
    let casual = send("offers.assembled", json!({"segment": "casual"})).await;
    let untagged = send("offers.assembled", Value::Null).await;
    let vip_view = send("ViewPage", json!({"vip": "yes"})).await;
    let vip_warrior_view = send("ViewPage", json!({"vip": "yes", "segment": "road-warrior"})).await;
    let sentinel = send("sentinel.made", Value::Null).await;
    let ids = |got: Vec<(String, Value)>| got.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    let vips = drain_until(&bus, &engine, "vips", &sentinel).await;
    assert_eq!(vips[0].1["vip"], "true", "a message carries its tags: {:?}", vips[0]);
    assert_eq!(vips[0].1["segment"], "road-warrior");
    assert_eq!(ids(vips), [both.clone(), vip_warrior_view, sentinel.clone()]);
    assert_eq!(ids(drain_until(&bus, &engine, "warriors", &sentinel).await), [both.clone(), sentinel.clone()]);
    assert_eq!(
        ids(drain_until(&bus, &engine, "everything", &sentinel).await),
        [both, casual, untagged, sentinel.clone()]
    );
    assert!(!vip_view.is_empty());

    // removing: with tags, exactly that subscription; without, every one of the topic
    let delete = |path: &str| bus.request(reqwest::Method::DELETE, path).token(&engine).send();
    put("/rivers/vips/subscriptions/offers.assembled?tags=gold".into()).await.expect(200);
    let left = delete("/rivers/vips/subscriptions/offers.assembled?tags=vip").await;
    assert_eq!(
        left.expect(200)["subscriptions"],
        json!([
            {"topic": "ViewPage", "tags": ["segment=road-warrior", "vip"]},
            {"topic": "sentinel.made", "tags": []},
            {"topic": "offers.assembled", "tags": ["gold"]}])
    );
    let left = delete("/rivers/vips/subscriptions/ViewPage").await;
    assert_eq!(left.expect(200)["topics"], json!(["sentinel.made", "offers.assembled"]));

    // bad selectors are refused and change nothing
    for bad in ["", "a%20b", "k%3D", "%3Dv", "1k", "vip%2C", "a%3Db%3Dc"] {
        put(format!("/rivers/vips/subscriptions/ViewPage?tags={bad}")).await.expect_error(400, "invalid_tags");
    }
    put("/rivers/vips/subscriptions/ViewPage?tag=vip".into()).await.expect_error(400, "invalid_query");
    let nine = (0..9).map(|i| format!("k{i}")).collect::<Vec<_>>().join("%2C");
    put(format!("/rivers/vips/subscriptions/ViewPage?tags={nine}")).await.expect_error(400, "invalid_tags");
    let stored: i64 = sqlx::query_scalar("select count(*) from rapids.river_subscriptions where river = 'vips'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(stored, 2);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn subscriptions_changed_at_runtime_reach_running_rivers_and_built_in_rivers_refuse_them(pool: PgPool) {
    let bank = start_bank(&pool).await;
    let bus = Api::new(&bank.bus.base);
    let admin = token("root", Admin);
    let alice = token("alice", Customer);
    // a machine identity posts the topics (no advertising needed)
    let shop = token("shop", tests::Service);

    // a service's river, running before it has any subscription
    let recorder = Recorder::default();
    let topics = TopicFilter::default();
    let config = RiverConfig {
        subscriptions: Subscriptions::Registry,
        renew_every: Duration::from_millis(200),
        idle_poll: Duration::from_millis(20),
        ..RiverConfig::new("svc1", topics.clone())
    };
    let metrics = RiverMetrics::register(&prometheus::Registry::new()).unwrap();
    let stop = CancellationToken::new();
    let _guard = stop.clone().drop_guard();
    tokio::spawn(River::new(config, pool.clone(), bank.rapids.clone(), recorder.clone(), metrics).run(stop.clone()));
    // it registers itself as served by its service: the bus runs no queue of that name
    // (which would take its shards' leases and its events)
    wait_for(Duration::from_secs(10), "the river to register as served", || async {
        let served: Option<bool> = sqlx::query_scalar("select served from rapids.rivers where name = 'svc1'")
            .fetch_optional(&pool)
            .await
            .unwrap();
        (served == Some(true)).then_some(())
    })
    .await;

    let send = |kind: &'static str, n: &'static str| {
        let (bus, shop) = (bus.clone(), shop.clone());
        async move {
            post(&bus, &shop, json!({"type": kind, "source": "s", "data": {"n": n}, "partition_key": "one-shard"}))
                .await
                .expect(201);
        }
    };
    bus.request(reqwest::Method::PUT, "/rivers/svc1/subscriptions/thing.made").token(&admin).send().await.expect(200);
    wait_for(Duration::from_secs(10), "the running river to take the new topic", || async {
        (topics.patterns() == ["thing.made"]).then_some(())
    })
    .await;
    send("thing.made", "a1").await;
    send("other.made", "skip").await;
    wait_for(Duration::from_secs(15), "a1 to be handled", || async {
        recorder.seen.lock().unwrap().contains(&"a1".to_owned()).then_some(())
    })
    .await;
    // removed likewise: b1 (now unsubscribed) is not handled, the sentinel after it on the same shard is
    bus.request(reqwest::Method::PUT, "/rivers/svc1/subscriptions/sentinel.made")
        .token(&admin)
        .send()
        .await
        .expect(200);
    bus.request(reqwest::Method::DELETE, "/rivers/svc1/subscriptions/thing.made")
        .token(&admin)
        .send()
        .await
        .expect(200);
    wait_for(Duration::from_secs(10), "the running river to drop the topic", || async {
        (topics.patterns() == ["sentinel.made"]).then_some(())
    })
    .await;
    send("thing.made", "b1").await;
    send("sentinel.made", "s1").await;
    wait_for(Duration::from_secs(15), "the sentinel to be handled", || async {
        recorder.seen.lock().unwrap().contains(&"s1".to_owned()).then_some(())
    })
    .await;
    assert_eq!(*recorder.seen.lock().unwrap(), ["a1", "s1"]);
    let subs = bus.get("/rivers/svc1/subscriptions").token(&admin).send().await;
    assert_eq!(subs.expect(200)["topics"], json!(["sentinel.made"]));
    // a tagged subscription reaches it too: only thing.made tagged vip is handled
    bus.request(reqwest::Method::PUT, "/rivers/svc1/subscriptions/thing.made?tags=vip")
        .token(&admin)
        .send()
        .await
        .expect(200);
    wait_for(Duration::from_secs(10), "the running river to take the tagged topic", || async {
        let tagged = rapids::river::Selection { pattern: "thing.made".into(), tags: vec!["vip".into()] };
        topics.selections().contains(&tagged).then_some(())
    })
    .await;
    let tagged = |n: &'static str, tags: Value| {
        let (bus, shop) = (bus.clone(), shop.clone());
        async move {
            let body = json!({"type": "thing.made", "source": "s", "data": {"n": n}, "partition_key": "one-shard", "tags": tags});
            post(&bus, &shop, body).await.expect(201);
        }
    };
    tagged("c0", json!({"segment": "vip"})).await;
    tagged("c1", json!({"vip": "true"})).await;
    send("sentinel.made", "s2").await;
    wait_for(Duration::from_secs(15), "the second sentinel to be handled", || async {
        recorder.seen.lock().unwrap().contains(&"s2".to_owned()).then_some(())
    })
    .await;
    assert_eq!(*recorder.seen.lock().unwrap(), ["a1", "s1", "c1", "s2"]);
    // not a queue: the bus queued none of its events and refuses to serve it
    let queued: i64 = sqlx::query_scalar("select count(*) from rapids.river_messages where river = 'svc1'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(queued, 0);
    bus.post("/rivers/svc1/receive").token(&admin).json(json!({})).send().await.expect_error(409, "river_served");
    bus.post("/rivers/svc1/ack")
        .token(&admin)
        .json(json!({"receipts": [Uuid::now_v7()]}))
        .send()
        .await
        .expect_error(409, "river_served");

    // the built-in rivers list their topics and refuse changes
    wait_for(Duration::from_secs(10), "the built-in rivers to register", || async {
        let reply = bus.get("/rivers/accounts/subscriptions").token(&admin).send().await;
        (reply.body["managed"] == json!(true)).then_some(reply.body)
    })
    .await;
    let accounts = bus.get("/rivers/accounts/subscriptions").token(&admin).send().await;
    assert_eq!(accounts.expect(200)["topics"], json!(["accounts.*", "transfer.*"]));
    let transfers = bus.get("/rivers/transfers/subscriptions").token(&admin).send().await;
    assert_eq!(transfers.expect(200)["topics"], json!(["account.*", "transfers.*"]));
    for (method, path) in [
        (reqwest::Method::PUT, "/rivers/accounts/subscriptions/ViewPage"),
        (reqwest::Method::DELETE, "/rivers/transfers/subscriptions/account.*"),
        (reqwest::Method::PUT, "/rivers/views/subscriptions/x"),
    ] {
        bus.request(method, path).token(&admin).send().await.expect_error(409, "river_managed");
    }
    let accounts = bus.get("/rivers/accounts/subscriptions").token(&admin).send().await;
    assert_eq!(accounts.expect(200)["topics"], json!(["accounts.*", "transfer.*"]));
    // the control plane is for staff; names are checked
    bus.request(reqwest::Method::PUT, "/rivers/r9/subscriptions/x")
        .token(&alice)
        .send()
        .await
        .expect_error(403, "forbidden");
    bus.request(reqwest::Method::PUT, "/rivers/9r/subscriptions/x")
        .token(&admin)
        .send()
        .await
        .expect_error(400, "invalid_river");
    bus.request(reqwest::Method::PUT, "/rivers/r9/subscriptions/a.*.b")
        .token(&admin)
        .send()
        .await
        .expect_error(400, "invalid_topic");
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_generic_river_is_a_queue_that_loses_nothing(pool: PgPool) {
    let bank = start_bank(&pool).await;
    let bus = Api::new(&bank.bus.base);
    let admin = token("root", Admin);
    let alice = token("alice", Customer);
    bus.post("/topics").token(&admin).json(json!({"name": "ViewPage"})).send().await.expect(201);
    bus.post("/topics").token(&admin).json(json!({"name": "ViewPage"})).send().await.expect(200);
    // sent before the first subscription: never delivered
    post(&bus, &alice, event("ViewPage", json!({"n": "before"}))).await.expect(201);
    bus.request(reqwest::Method::PUT, "/rivers/q1/subscriptions/ViewPage").token(&admin).send().await.expect(200);
    let empty = bus.post("/rivers/q1/receive").token(&admin).json(json!({"wait_ms": 300})).send().await;
    assert_eq!(empty.expect(200)["messages"], json!([]));

    // visibility timeout: an unacknowledged message comes back, with another receipt
    let first = post(&bus, &alice, event("ViewPage", json!({"n": 1}))).await.expect(201)["event_id"].clone();
    let got = wait_for(Duration::from_secs(20), "the first message", || async {
        let reply = bus
            .post("/rivers/q1/receive")
            .token(&admin)
            .json(json!({"wait_ms": 500, "visibility_ms": 400}))
            .send()
            .await;
        let messages = reply.expect(200)["messages"].as_array().cloned().unwrap_or_default();
        (!messages.is_empty()).then_some(messages)
    })
    .await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["message"]["eventId"], first);
    assert_eq!(got[0]["message"]["eventType"], "ViewPage");
    assert_eq!(got[0]["message"]["eventDomain"], "TheSource");
    assert_eq!(got[0]["message"]["payload"], json!({"n": 1}));
    assert!(got[0]["message"]["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    // invisible meanwhile
    let hidden = bus.post("/rivers/q1/receive").token(&admin).json(json!({"wait_ms": 0})).send().await;
    assert_eq!(hidden.expect(200)["messages"], json!([]));
    let back = wait_for(Duration::from_secs(5), "the message to come back", || async {
        let reply = bus.post("/rivers/q1/receive").token(&admin).json(json!({"wait_ms": 200})).send().await;
        let messages = reply.expect(200)["messages"].as_array().cloned().unwrap_or_default();
        (!messages.is_empty()).then_some(messages)
    })
    .await;
    assert_eq!((back[0]["message"]["eventId"].clone(), back[0]["receive_count"].as_i64()), (first.clone(), Some(2)));
    assert_ne!(back[0]["receipt"], got[0]["receipt"]);
    // the stale receipt acknowledges nothing; the fresh one does, and it never comes back
    let stale = bus.post("/rivers/q1/ack").token(&admin).json(json!({"receipts": [got[0]["receipt"]]})).send().await;
    assert_eq!(stale.expect(200)["acked"], 0);
    let acked = bus.post("/rivers/q1/ack").token(&admin).json(json!({"receipts": [back[0]["receipt"]]})).send().await;
    assert_eq!(acked.expect(200)["acked"], 1);

    // two competing readers never get the same message
    let mut sent = HashSet::new();
    for n in 0..30 {
        let id = post(&bus, &alice, event("ViewPage", json!({"n": n}))).await.expect(201)["event_id"].clone();
        sent.insert(id.as_str().unwrap_or_default().to_owned());
    }
    let readers = (0..2).map(|_| {
        let (bus, admin) = (bus.clone(), admin.clone());
        tokio::spawn(async move {
            let mut mine = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            while tokio::time::Instant::now() < deadline {
                let reply = bus
                    .post("/rivers/q1/receive")
                    .token(&admin)
                    .json(json!({"max_messages": 3, "wait_ms": 300}))
                    .send()
                    .await;
                let messages = reply.expect(200)["messages"].as_array().cloned().unwrap_or_default();
                if messages.is_empty() && !mine.is_empty() {
                    break;
                }
                let receipts: Vec<Value> = messages.iter().map(|m| m["receipt"].clone()).collect();
                if !receipts.is_empty() {
                    bus.post("/rivers/q1/ack")
                        .token(&admin)
                        .json(json!({"receipts": receipts}))
                        .send()
                        .await
                        .expect(200);
                }
                mine.extend(event_ids(&messages));
            }
            mine
        })
    });
    let mut by_reader = Vec::new();
    for reader in readers {
        by_reader.push(reader.await.unwrap());
    }
    let all: Vec<&String> = by_reader.iter().flatten().collect();
    let distinct: HashSet<&String> = all.iter().copied().collect();
    assert_eq!(all.len(), distinct.len(), "a message went to both readers");
    let rest = receive_all(&bus, &admin, "q1", sent.len().saturating_sub(all.len()), true).await;
    let mut delivered: HashSet<String> = distinct.into_iter().cloned().collect();
    delivered.extend(event_ids(&rest));
    assert_eq!(delivered, sent);

    // a restart of the bus in between: events stored while it was down are delivered after
    bank.stop_bus();
    let stop = CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let (restarted, _) = tests::start_bus(&pool, bank.rapids.clone(), stop).await;
    let bus2 = Api::new(&restarted.base);
    let mut later = HashSet::new();
    for n in 0..5 {
        let id = post(&bus2, &alice, event("ViewPage", json!({"late": n}))).await.expect(201)["event_id"].clone();
        later.insert(id.as_str().unwrap_or_default().to_owned());
    }
    let after = receive_all(&bus2, &admin, "q1", later.len(), true).await;
    assert_eq!(event_ids(&after).into_iter().collect::<HashSet<_>>(), later);
    // nothing acknowledged comes back, nothing is left
    let none = bus2.post("/rivers/q1/receive").token(&admin).json(json!({"wait_ms": 500})).send().await;
    assert_eq!(none.expect(200)["messages"], json!([]));
    let waiting: i64 =
        sqlx::query_scalar("select count(*) from rapids.river_messages where river = 'q1' and acked_at is null")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(waiting, 0);
    // the event sent before the subscription was never queued
    let before: i64 =
        sqlx::query_scalar("select count(*) from rapids.river_messages where message -> 'payload' ->> 'n' = 'before'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(before, 0);
    bus2.post("/rivers/nosuch/receive").token(&admin).json(json!({})).send().await.expect_error(404, "river_not_found");
    bus2.post("/rivers/accounts/receive").token(&admin).json(json!({})).send().await.expect_error(409, "river_managed");
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_task_runs_with_the_rights_of_its_poster_once_and_a_refusal_says_why(pool: PgPool) {
    let bank = start_bank(&pool).await;
    let bus = Api::new(&bank.bus.base);
    let accounts = Api::new(&bank.accounts.base);
    let transfers = Api::new(&bank.transfers.base);
    let admin = token("root", Admin);
    let (alice, bob) = (token("alice", Customer), token("bob", Customer));
    let from = accounts.open_account(&alice, "EUR", 1000).await;
    let to = accounts.open_account(&bob, "EUR", 0).await;
    bus.request(reqwest::Method::PUT, "/rivers/refusals/subscriptions/transfer.task_rejected")
        .token(&admin)
        .send()
        .await
        .expect(200);
    let task = |amount: i64| {
        json!({"type": "transfers.transfer.create", "source": "app",
                                   "data": {"from": from, "to": to, "amount": amount, "currency": "EUR"}})
    };

    // alice moves her own money
    let posted = post(&bus, &alice, task(300)).await.expect(201).clone();
    let task_id: Uuid = serde_json::from_value(posted["event_id"].clone()).unwrap();
    let done = transfers.get(&format!("/transfers/{task_id}?min_version=3&wait_ms=10000")).token(&alice).send().await;
    let done = done.expect(200).clone();
    assert_eq!((done["state"].as_str(), done["amount"].as_i64()), (Some("completed"), Some(300)));
    assert_eq!(done["initiated_by"], "alice");
    let causation: Option<String> =
        sqlx::query_scalar("select metadata ->> 'causation_id' from es.events where stream_id = $1 and version = 1")
            .bind(task_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(causation, Some(task_id.to_string()));

    // the same task again on the stream (a redelivery): still one transfer
    let envelopes = tests::read_shards(&bank.rapids).await.concat();
    let again = envelopes.iter().find(|e| e.event_id == task_id).expect("the task is on the stream").clone();
    tests::put_envelope(&bank.rapids, &again).await;
    // bob's task from alice's account is refused, with an event saying why; it goes
    // to the redelivery's shard, so once it is handled the redelivery was too
    let mut bobs = task(100);
    bobs["partition_key"] = json!(again.stream_id.to_string());
    let refused = post(&bus, &bob, bobs).await.expect(201)["event_id"].clone();
    let messages = receive_all(&bus, &admin, "refusals", 1, true).await;
    assert_eq!(messages.len(), 1);
    let m = &messages[0]["message"];
    assert_eq!(m["eventType"], "transfer.task_rejected");
    assert_eq!((m["payload"]["task_id"].clone(), m["payload"]["code"].as_str()), (refused.clone(), Some("forbidden")));
    assert_eq!(m["payload"]["actor"], "bob");
    tests::views_caught_up(&pool).await;
    let created: i64 =
        sqlx::query_scalar("select count(*) from es.events where type = 'transfer.created' and stream_id = $1")
            .bind(task_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(created, 1);
    let balances: HashMap<Uuid, i64> = sqlx::query_as::<_, (Uuid, i64)>("select id, balance from views.accounts")
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
    assert_eq!((balances[&from], balances[&to]), (700, 300));
    let refused_id: Uuid = serde_json::from_value(refused).unwrap();
    transfers.get(&format!("/transfers/{refused_id}")).token(&bob).send().await.expect_error(404, "transfer_not_found");
}
