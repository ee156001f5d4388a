//! History and temporal reads of account-service, against a real Postgres: the
//! account as of every recorded time and at every version equals the balance
//! computed here from the amounts sent; history pages are contiguous and complete and
//! carry the metadata the store recorded; the transfers of an account come from its
//! own events; who may read, unknown ids and bad parameters.
#![allow(clippy::unwrap_used)]

use bank_client::api::accounts::{HistoryEvent, HistoryQuery, ReadQuery};
use bank_client::{BankClient, Urls};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};
use sqlx::PgPool;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::collections::BTreeMap;
use tests::{Admin, Api, Bank, Customer, Teller, start_accounts, token};
use uuid::Uuid;

/// Every event of a stream as the store has it: version, type, data, metadata, time.
async fn stored(pool: &PgPool, id: Uuid) -> Vec<(i32, String, Value, Value, DateTime<Utc>)> {
    type Row = (i32, String, sqlx::types::Json<Value>, sqlx::types::Json<Value>, DateTime<Utc>);
    let rows: Vec<Row> = sqlx::query_as(
        "select version, type, data, metadata, recorded_at from es.events where stream_id = $1 order by version",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .unwrap();
    rows.into_iter().map(|(v, t, d, m, at)| (v, t, d.0, m.0, at)).collect()
}

/// A time as a query value: RFC 3339, every digit of the store's microseconds, with
/// `+` percent-encoded.
fn query_time(t: DateTime<chrono::FixedOffset>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true).replace('+', "%2B")
}

fn utc(t: DateTime<Utc>) -> DateTime<chrono::FixedOffset> {
    t.fixed_offset()
}

#[track_caller]
fn state(body: &Value) -> (i64, i64, &str) {
    (body["version"].as_i64().unwrap(), body["balance"].as_i64().unwrap(), body["status"].as_str().unwrap())
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn the_account_as_of_each_time_and_at_each_version_is_the_fold_up_to_there(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    // a snapshot every 3 versions: reads of the past start from one
    let svc = start_accounts(&pool, |c| c.commands.snapshot_every = 3).await;
    let api = svc.api();
    let alice = token("alice", Customer);
    let teller = token("tina", Teller);

    // version -> (balance, status), computed from what is sent, not read back
    let mut expected: BTreeMap<i64, (i64, &str)> = BTreeMap::new();
    let id = api.open_account(&alice, "EUR", 1000).await;
    expected.insert(1, (0, "open"));
    expected.insert(2, (1000, "open"));
    let mut balance = 1000;
    let steps: [(&str, &str, i64); 6] = [
        ("deposits", &teller, 500),
        ("withdrawals", &alice, 300),
        ("deposits", &teller, 2000),
        ("withdrawals", &alice, 1200),
        ("withdrawals", &alice, 1),
        ("withdrawals", &alice, 1999),
    ];
    for (kind, who, amount) in steps {
        let reply = api
            .post(&format!("/accounts/{id}/{kind}"))
            .token(who)
            .json(json!({"amount": amount, "currency": "EUR"}))
            .send()
            .await;
        reply.expect(200);
        balance += if kind == "deposits" { amount } else { -amount };
        expected.insert(reply.version(), (balance, "open"));
    }
    assert_eq!(balance, 0);
    let closed = api.post(&format!("/accounts/{id}/close")).token(&alice).send().await;
    closed.expect(200);
    expected.insert(closed.version(), (0, "closed"));
    let last = closed.version();
    assert_eq!(expected.keys().copied().collect::<Vec<_>>(), (1..=last).collect::<Vec<_>>());

    let at = |query: String| api.get(&format!("/accounts/{id}?{query}")).token(&alice).send();

    // at every version
    for (&version, &(balance, status)) in &expected {
        let reply = at(format!("at_version={version}")).await;
        let body = reply.expect(200);
        assert_eq!(state(body), (version, balance, status), "at_version={version}");
        assert_eq!((body["id"].as_str(), body["owner"].as_str()), (Some(&*id.to_string()), Some("alice")));
        assert_eq!((body["at_version"].as_i64(), body.get("as_of")), (Some(version), None));
        // the transactions of then: the newest is at or below the version
        let recent = body["recent_transactions"].as_array().unwrap();
        assert!(recent.iter().all(|t| t["version"].as_i64().unwrap() <= version), "{body}");
        // versions 2 to last - 1 are deposits and withdrawals
        assert_eq!(recent.len(), (2..=version.min(last - 1)).count());
    }
    // the newest version equals the read without parameters
    let now = api.get(&format!("/accounts/{id}")).token(&alice).send().await;
    let mut then = at(format!("at_version={last}")).await.body;
    then.as_object_mut().unwrap().remove("at_version");
    assert_eq!(now.expect(200), &then);
    assert!(now.body.get("at_version").is_none() && now.body.get("as_of").is_none());

    let (snapshots,): (i64,) = sqlx::query_as("select count(*) from es.snapshot_history where stream_id = $1")
        .bind(id)
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(snapshots >= 2, "{snapshots} snapshots kept");

    // as of every recorded time: the fold of the events recorded then or before (an
    // account opened with a deposit records both at one time)
    let events = stored(&pool, id).await;
    assert_eq!(events.len() as i64, last);
    for (_, _, _, _, recorded_at) in &events {
        let upto = events.iter().filter(|e| e.4 <= *recorded_at).map(|e| i64::from(e.0)).max().unwrap();
        let (balance, status) = expected[&upto];
        for instant in [utc(*recorded_at), recorded_at.with_timezone(&chrono::FixedOffset::east_opt(2 * 3600).unwrap())]
        {
            let reply = at(format!("as_of={}", query_time(instant))).await;
            let body = reply.expect(200);
            assert_eq!(state(body), (upto, balance, status), "as_of={instant}");
            assert_eq!(body["as_of"].as_str().map(|s| s.parse::<DateTime<Utc>>().unwrap()), Some(*recorded_at));
        }
        // a microsecond before: the version before (or no account yet)
        let before = *recorded_at - chrono::Duration::microseconds(1);
        let reply = at(format!("as_of={}", query_time(utc(before)))).await;
        match events.iter().filter(|e| e.4 <= before).map(|e| i64::from(e.0)).max() {
            Some(v) => assert_eq!(state(reply.expect(200)), (v, expected[&v].0, expected[&v].1)),
            None => reply.expect_error(404, "account_not_found"),
        }
    }
    // the typed client sends the same queries
    let urls = Urls { accounts: svc.base.clone(), transfers: String::new(), queries: String::new() };
    let client = BankClient::new(urls, alice.clone());
    let third = client.account_at(id, &ReadQuery { as_of: Some(events[2].4), at_version: None }).await.unwrap();
    assert_eq!((third.account.version, third.account.balance, third.as_of), (3, expected[&3].0, Some(events[2].4)));
    let fourth = client.account_at(id, &ReadQuery { as_of: None, at_version: Some(4) }).await.unwrap();
    assert_eq!((fourth.account.version, fourth.account.balance, fourth.at_version), (4, expected[&4].0, Some(4)));
    let err = client.account_at(id, &ReadQuery { as_of: None, at_version: Some(last + 1) }).await.unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(409), Some("version_not_reached")));

    let far = at("as_of=9999-12-31T23:59:59Z".into()).await;
    assert_eq!(state(far.expect(200)), (last, 0, "closed"));
    at("as_of=1970-01-01T00:00:00Z".into()).await.expect_error(404, "account_not_found");

    // a version the account has not reached: 409, with where it is
    let ahead = at(format!("at_version={}", last + 1)).await;
    ahead.expect_error(409, "version_not_reached");
    assert_eq!(
        (ahead.body["error"]["current_version"].as_i64(), ahead.body["error"]["wanted_version"].as_i64()),
        (Some(last), Some(last + 1))
    );
    at("at_version=2147483647".into()).await.expect_error(409, "version_not_reached");

    // both at once: the earlier of the two points, both echoed
    let time_of = |v: i64| query_time(utc(events[usize::try_from(v - 1).unwrap()].4));
    for (version, time_version, answer) in [(5, 7, 5), (7, 5, 5), (4, last, 4), (last, 4, 4), (6, 6, 6)] {
        let reply = at(format!("at_version={version}&as_of={}", time_of(time_version))).await;
        let body = reply.expect(200);
        assert_eq!(state(body), (answer, expected[&answer].0, expected[&answer].1), "{version} and {time_version}");
        assert_eq!((body["at_version"].as_i64(), body["as_of"].is_string()), (Some(version), true));
    }
    at("at_version=3&as_of=1970-01-01T00:00:00Z".into()).await.expect_error(404, "account_not_found");
    at(format!("at_version={}&as_of=9999-12-31T23:59:59Z", last + 1)).await.expect_error(409, "version_not_reached");

    // staff read any account's past; another customer none of it
    for staff in [&teller, &token("ada", Admin)] {
        let reply = api.get(&format!("/accounts/{id}?at_version=3")).token(staff).send().await;
        assert_eq!(state(reply.expect(200)), (3, expected[&3].0, "open"));
    }
    let mallory = token("mallory", Customer);
    for query in ["at_version=3", "as_of=9999-12-31T23:59:59Z", "at_version=99", "as_of=1970-01-01T00:00:00Z"] {
        api.get(&format!("/accounts/{id}?{query}")).token(&mallory).send().await.expect_error(403, "forbidden");
    }
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn history_pages_are_contiguous_complete_and_carry_the_recorded_metadata(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let svc = start_accounts(&pool, |_| {}).await;
    let api = svc.api();
    let alice = token("alice", Customer);
    let teller = token("tina", Teller);
    let id = api.open_account(&alice, "EUR", 100).await;
    for n in 1..=8 {
        let (kind, amount, by) = if n % 3 == 0 { ("withdrawals", 50, &alice) } else { ("deposits", 10 * n, &teller) };
        api.post(&format!("/accounts/{id}/{kind}"))
            .token(by)
            .header("X-Request-Id", &format!("req-{n}"))
            .header("X-Correlation-Id", &format!("flow-{n}"))
            .json(json!({"amount": amount, "currency": "EUR"}))
            .send()
            .await
            .expect(200);
    }
    let events = stored(&pool, id).await;
    let total = events.len();
    assert_eq!(total, 10);

    let urls = Urls { accounts: svc.base.clone(), transfers: String::new(), queries: String::new() };
    let client = BankClient::new(urls, alice.clone());
    // every page size, walking the cursor: the concatenation is the stream, once
    for limit in [1, 3, 4, 9, 10, 11, 500] {
        let mut items: Vec<HistoryEvent> = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let page =
                client.account_history(id, &HistoryQuery { after_version: after, limit: Some(limit) }).await.unwrap();
            pages += 1;
            assert_eq!(page.account_id, id);
            assert!(page.items.len() as i64 <= limit);
            items.extend(page.items.iter().cloned());
            match page.next_after_version {
                Some(next) => {
                    assert_eq!(
                        Some(next),
                        page.items.last().map(|e| e.version),
                        "the cursor is the page's last version"
                    );
                    after = Some(next.into());
                }
                None => break,
            }
        }
        assert_eq!(pages, (total as i64).div_euclid(limit) + 1 - i64::from(total as i64 % limit == 0), "limit {limit}");
        let versions: Vec<i32> = items.iter().map(|e| e.version).collect();
        assert_eq!(versions, (1..=total as i32).collect::<Vec<_>>(), "limit {limit}");
        for (item, (version, event_type, data, metadata, recorded_at)) in items.iter().zip(&events) {
            assert_eq!(
                (item.version, &item.event_type, &item.data, item.recorded_at),
                (*version, event_type, data, *recorded_at)
            );
            assert_eq!(item.actor, metadata["actor"].as_str().unwrap());
            for (field, value) in [
                ("request_id", &item.request_id),
                ("correlation_id", &item.correlation_id),
                ("causation_id", &item.causation_id),
            ] {
                assert_eq!(value.as_deref(), metadata[field].as_str(), "{field} of version {version}");
            }
        }
    }
    // the metadata the requests sent came through
    let third = &client.account_history(id, &HistoryQuery { after_version: Some(2), limit: Some(1) }).await.unwrap();
    assert_eq!(
        (third.items[0].request_id.as_deref(), third.items[0].correlation_id.as_deref(), third.items[0].actor.as_str()),
        (Some("req-1"), Some("flow-1"), "tina")
    );
    assert_eq!(third.items[0].causation_id.as_deref(), Some("req-1"));
    // the default page holds them all; past the end, an empty last page
    let all = api.get(&format!("/accounts/{id}/history")).token(&alice).send().await;
    assert_eq!(all.expect(200)["items"].as_array().unwrap().len(), total);
    assert_eq!(all.body["next_after_version"], Value::Null);
    let past = api.get(&format!("/accounts/{id}/history?after_version=2147483647")).token(&alice).send().await;
    assert_eq!(
        (past.expect(200)["items"].as_array().unwrap().len(), &past.body["next_after_version"]),
        (0, &Value::Null)
    );

    // who may read
    for staff in [token("tina", Teller), token("ada", Admin)] {
        api.get(&format!("/accounts/{id}/history")).token(&staff).send().await.expect(200);
        api.get(&format!("/accounts/{id}/transfers")).token(&staff).send().await.expect(200);
    }
    let mallory = token("mallory", Customer);
    for path in ["history", "transfers", "history?after_version=3&limit=2"] {
        api.get(&format!("/accounts/{id}/{path}")).token(&mallory).send().await.expect_error(403, "forbidden");
    }
    api.get(&format!("/accounts/{id}/history")).send().await.expect_error(401, "missing_token");

    // an unknown id, and a stream that is no account
    let unknown = Uuid::now_v7();
    for path in ["", "/history", "/transfers", "?at_version=1", "?as_of=2030-01-01T00:00:00Z"] {
        api.get(&format!("/accounts/{unknown}{path}"))
            .token(&alice)
            .send()
            .await
            .expect_error(404, "account_not_found");
    }
    api.get("/accounts/not-an-id/history").token(&alice).send().await.expect_error(400, "invalid_id");

    // bad parameters: 400, whatever the account
    for target in [id, unknown] {
        for query in [
            "at_version=0",
            "at_version=-1",
            "at_version=x",
            "at_version=1.5",
            "at_version=2147483648",
            "at_version=99999999999999999999",
            "at_version=",
            "as_of=yesterday",
            "as_of=2024-01-01",
            "as_of=2024-01-01T12:99:00Z",
            "as_of=2024-01-01T12:00:00",
            "as_of=2024-01-01T12:00:00+01:00", // an unencoded `+` is a space
            "as_of=",
        ] {
            let reply = api.get(&format!("/accounts/{target}?{query}")).token(&alice).send().await;
            reply.expect_error(400, "invalid_query");
        }
        for query in [
            "limit=0",
            "limit=501",
            "limit=-3",
            "limit=ten",
            "after_version=-1",
            "after_version=2147483648",
            "limit=1.5",
        ] {
            let reply = api.get(&format!("/accounts/{target}/history?{query}")).token(&alice).send().await;
            reply.expect_error(400, "invalid_query");
        }
        for query in ["limit=0", "limit=501", "limit=x"] {
            let reply = api.get(&format!("/accounts/{target}/transfers?{query}")).token(&alice).send().await;
            reply.expect_error(400, "invalid_query");
        }
    }
    // the bounds themselves are fine
    for query in ["at_version=1", "as_of=0001-01-01T00:00:00%2B23:59"] {
        let reply = api.get(&format!("/accounts/{id}?{query}")).token(&alice).send().await;
        assert!(matches!(reply.status, 200 | 404), "{query}: {}", reply.body);
    }
    for query in ["limit=1", "limit=500", "after_version=0", "after_version=2147483647"] {
        api.get(&format!("/accounts/{id}/history?{query}")).token(&alice).send().await.expect(200);
    }
}

async fn transfer(bank: &Bank, owner: &str, from: Uuid, to: Uuid, amount: i64) -> Uuid {
    bank.transfers.api().create_transfer(&token(owner, Customer), None, from, to, amount).await
}

/// Waits until the transfer is `completed` or `failed`; returns its state.
async fn settled(api: &Api, owner: &str, id: Uuid) -> String {
    let body = api.settled_transfer(&token(owner, Customer), id).await;
    body["state"].as_str().unwrap_or_default().to_owned()
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn the_transfers_of_an_account_come_from_its_own_events_newest_first(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let bank = tests::start_bank(&pool).await;
    let api = bank.accounts.api();
    let (alice, bob, carol) = (token("alice", Customer), token("bob", Customer), token("carol", Customer));
    let a = api.open_account(&alice, "EUR", 1000).await;
    let b = api.open_account(&bob, "EUR", 0).await;
    let c = api.open_account(&carol, "USD", 0).await;

    // one after another, so the account's versions are known: completed, refused by
    // the source, refused by the target (then refunded)
    let t1 = transfer(&bank, "alice", a, b, 300).await;
    assert_eq!(settled(&bank.transfers.api(), "alice", t1).await, "completed");
    let t2 = transfer(&bank, "alice", a, b, 5000).await;
    assert_eq!(settled(&bank.transfers.api(), "alice", t2).await, "failed");
    let t3 = transfer(&bank, "alice", a, c, 100).await;
    assert_eq!(settled(&bank.transfers.api(), "alice", t3).await, "failed");

    let items = |account: Uuid, who: &str, query: &str| {
        let request = api.get(&format!("/accounts/{account}/transfers{query}")).token(who).send();
        async move {
            let reply = request.await;
            let body = reply.expect(200).clone();
            assert_eq!(body["account_id"], json!(account));
            body["items"].as_array().unwrap().clone()
        }
    };
    // transfer, kind, amount, reason, version
    type Summary = (Uuid, String, Option<i64>, Option<String>, i64);
    let summary = |items: &[Value]| -> Vec<Summary> {
        items
            .iter()
            .map(|i| {
                (
                    i["transfer_id"].as_str().unwrap().parse().unwrap(),
                    i["kind"].as_str().unwrap().to_owned(),
                    i["amount"].as_i64(),
                    i["reason"].as_str().map(str::to_owned),
                    i["version"].as_i64().unwrap(),
                )
            })
            .collect()
    };
    // a: opened 1, deposited 2, debited 3 (t1), debit_rejected 4 (t2), debited 5 (t3),
    // refunded 6 (t3: its newest step stands for it)
    let of_a = items(a, &alice, "").await;
    assert_eq!(
        summary(&of_a),
        vec![
            (t3, "refund".into(), Some(100), None, 6),
            (t2, "debit_rejected".into(), None, Some("insufficient_funds".into()), 4),
            (t1, "debit".into(), Some(300), None, 3),
        ]
    );
    assert_eq!((of_a[2]["counterparty"].clone(), of_a[2]["currency"].clone()), (json!(b), json!("EUR")));
    assert_eq!(summary(&items(a, &alice, "?limit=1").await), summary(&of_a[..1]));
    assert_eq!(summary(&items(b, &bob, "").await), vec![(t1, "credit".into(), Some(300), None, 2)]);
    assert_eq!(
        summary(&items(c, &carol, "").await),
        vec![(t3, "credit_rejected".into(), None, Some("currency_mismatch".into()), 2)]
    );
    assert!(items(c, &token("tina", Teller), "").await.len() == 1);
    let mine = api.open_account(&alice, "EUR", 0).await;
    assert!(items(mine, &alice, "").await.is_empty());

    // the fold at each version of a, against the amounts sent
    let expected = [(1, 0), (2, 1000), (3, 700), (4, 700), (5, 600), (6, 700)];
    for (version, balance) in expected {
        let reply = api.get(&format!("/accounts/{a}?at_version={version}")).token(&alice).send().await;
        assert_eq!(state(reply.expect(200)), (version, balance, "open"));
    }
    let events = stored(&pool, a).await;
    for (version, _, _, _, recorded_at) in &events {
        let reply =
            api.get(&format!("/accounts/{a}?as_of={}", query_time(utc(*recorded_at)))).token(&alice).send().await;
        let upto = events.iter().filter(|e| e.4 <= *recorded_at).map(|e| e.0).max().unwrap();
        assert!(upto >= *version);
        assert_eq!(state(reply.expect(200)), (i64::from(upto), expected[upto as usize - 1].1, "open"));
    }

    // the saga's steps carry the transfer's flow: the correlation id and cause of the
    // event that led to them, as recorded
    let history = api.get(&format!("/accounts/{a}/history?after_version=2&limit=1")).token(&alice).send().await;
    let debit = &history.expect(200)["items"][0];
    assert_eq!(debit["type"], "account.debited");
    let created: (sqlx::types::Json<Value>, Uuid) =
        sqlx::query_as("select metadata, event_id from es.events where stream_id = $1 and type = 'transfer.created'")
            .bind(t1)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(created.0["correlation_id"].is_string());
    assert_eq!(debit["correlation_id"], created.0["correlation_id"]);
    assert_eq!(debit["causation_id"], json!(created.1.to_string()));
    assert_eq!(history.body["next_after_version"], json!(3));
}
