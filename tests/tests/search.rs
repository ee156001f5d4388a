//! `GET /search` on query-service: a customer finds their own transactions by the words
//! of a transfer's memo, a kind, the other party's account, an amount and days, newest
//! first and paged; never another customer's. Staff find everyone's, and accounts by
//! owner. Bad input is 400 `invalid_query`. `view-updater rebuild` keeps it working
//! (the memo's index comes along).
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use sqlx::PgPool;
use std::collections::BTreeSet;
use tests::{Api, Customer, token};
use uuid::Uuid;

/// A transfer with a memo, settled.
async fn transfer(api: &Api, who: &str, from: Uuid, to: Uuid, amount: i64, memo: &str) -> Uuid {
    let reply = api
        .post("/transfers")
        .token(who)
        .idempotency_key(&Uuid::now_v7().to_string())
        .json(json!({"from": from, "to": to, "amount": amount, "currency": "EUR", "memo": memo}))
        .send()
        .await;
    reply.expect(201);
    reply.id()
}

/// `(account, kind, amount, memo)` of each hit, in the order answered.
fn hits(page: &Value) -> Vec<(Uuid, String, i64, String)> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["account_id"].as_str().unwrap().parse().unwrap(),
                h["kind"].as_str().unwrap().to_owned(),
                h["amount"].as_i64().unwrap(),
                h["memo"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

async fn found(queries: &Api, who: &str, query: &str) -> Value {
    queries.get(&format!("/search?{query}")).token(who).send().await.expect(200).clone()
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn customers_find_their_own_transactions_and_staff_everyones(pool: PgPool) {
    let bank = tests::start_bank(&pool).await;
    let (accounts, transfers, queries) = (bank.accounts.api(), bank.transfers.api(), bank.queries.api());
    let (alice, bob) = (token("alice", Customer), token("bob", Customer));
    let teller = tests::teller_token();
    let (a1, a2) = (accounts.open_account(&alice, "EUR", 1_000).await, accounts.open_account(&alice, "EUR", 0).await);
    let b1 = accounts.open_account(&bob, "EUR", 500).await;
    // one after the other, each settled before the next: their legs' order is known
    let settled = |n: &'static str| {
        let pool = pool.clone();
        async move {
            let sql = format!("select count(*) = {n} from views.transfers where state = 'completed'");
            tests::wait_until_true(&pool, std::time::Duration::from_secs(30), "a transfer to settle", &sql, &[]).await;
        }
    };
    let rent = transfer(&transfers, &alice, a1, a2, 250, "Rent for May").await;
    settled("1").await;
    transfer(&transfers, &alice, a1, b1, 40, "pizza night").await;
    settled("2").await;
    transfer(&transfers, &bob, b1, a1, 15, "rent share").await;
    settled("3").await;
    tests::views_caught_up(&pool).await;

    // a memo's word, any case: alice's three legs, newest first; never bob's debit
    let page = found(&queries, &alice, "q=RENT").await;
    let rent_hits = hits(&page);
    assert_eq!(
        rent_hits,
        [
            (a1, "transfer_credit".into(), 15, "rent share".into()),
            (a2, "transfer_credit".into(), 250, "Rent for May".into()),
            (a1, "transfer_debit".into(), 250, "Rent for May".into()),
        ]
    );
    assert_eq!(page["items"][2]["transfer_id"], json!(rent));
    assert_eq!(page["accounts"], json!([]), "a customer finds no accounts");
    assert_eq!(page["next_cursor"], Value::Null);
    // bob: his own leg of the rent share only; a memo is the payment's reference, which
    // the recipient sees on the credit (bob finds alice's pizza)
    assert_eq!(hits(&found(&queries, &bob, "q=rent").await), [(b1, "transfer_debit".into(), 15, "rent share".into())]);
    assert_eq!(
        hits(&found(&queries, &bob, "q=pizza").await),
        [(b1, "transfer_credit".into(), 40, "pizza night".into())]
    );
    // a web search's syntax: a word left out
    assert_eq!(
        hits(&found(&queries, &alice, "q=rent%20-may").await),
        [(a1, "transfer_credit".into(), 15, "rent share".into())]
    );
    // every word must be in the memo
    assert_eq!(hits(&found(&queries, &alice, "q=rent%20may").await).len(), 2);
    // an amount, a kind, the start of the other party's account id
    assert_eq!(
        hits(&found(&queries, &alice, "amount=40").await),
        [(a1, "transfer_debit".into(), 40, "pizza night".into())]
    );
    let deposits = hits(&found(&queries, &alice, "q=deposit").await);
    assert_eq!(deposits, [(a1, "deposit".into(), 1_000, String::new())]);
    // (ids are UUIDv7: their starts are times; the app shows their last 8 characters)
    let with_bob = hits(&found(&queries, &alice, &format!("q={}", &b1.to_string()[28..])).await);
    assert_eq!(with_bob.iter().map(|h| h.2).collect::<Vec<_>>(), [15, 40]);
    // another customer's account finds nothing: no error that would say it exists
    assert_eq!(hits(&found(&queries, &alice, &format!("account={b1}")).await), []);
    assert_eq!(hits(&found(&queries, &alice, &format!("account={a2}")).await).len(), 1);
    // days (UTC): from yesterday to tomorrow finds everything, the day after tomorrow and
    // the day before yesterday nothing
    let today = chrono::Utc::now().date_naive();
    let (yesterday, tomorrow) = (today.pred_opt().unwrap(), today.succ_opt().unwrap());
    let all = hits(&found(&queries, &alice, &format!("from={yesterday}&to={tomorrow}")).await).len();
    let stored: i64 = sqlx::query_scalar(
        "select count(*) from views.account_transactions t join views.accounts a on a.id = t.account_id
         where a.owner = 'alice'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(all as i64, stored);
    let later = tomorrow.succ_opt().unwrap();
    let earlier = yesterday.pred_opt().unwrap();
    assert_eq!(hits(&found(&queries, &alice, &format!("from={later}")).await), []);
    assert_eq!(hits(&found(&queries, &alice, &format!("to={earlier}")).await), []);
    // days the wrong way round: an empty range, nothing found
    assert_eq!(hits(&found(&queries, &alice, &format!("from={tomorrow}&to={yesterday}")).await), []);

    // paged newest first: pages of 2 hold every one of alice's transactions once
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let after = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let page = found(&queries, &alice, &format!("limit=2{after}")).await;
        let items = page["items"].as_array().unwrap().clone();
        assert!(items.len() <= 2);
        seen.extend(
            items.iter().map(|h| (h["account_id"].as_str().unwrap().to_owned(), h["version"].as_i64().unwrap())),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen.len() as i64, stored);
    assert_eq!(seen.iter().collect::<BTreeSet<_>>().len(), seen.len(), "a transaction on two pages");

    // staff: everyone's legs, and accounts by owner
    let staff = found(&queries, &teller, "q=rent").await;
    assert_eq!(hits(&staff).len(), 4);
    let owners = found(&queries, &teller, "q=ALI").await;
    let mut listed: Vec<&str> =
        owners["accounts"].as_array().unwrap().iter().map(|a| a["id"].as_str().unwrap()).collect();
    listed.sort_unstable();
    let mut expected = [a1.to_string(), a2.to_string()];
    expected.sort_unstable();
    assert_eq!(listed, expected);

    // bad input: 400 invalid_query, and a machine identity reads no account
    let long = "x".repeat(201);
    for bad in [
        "q=".to_owned(),
        "q=%20%20".to_owned(),
        "q=a%00b".to_owned(),
        format!("q={long}"),
        "amount=0".into(),
        "amount=ten".into(),
        "amount=-5".into(),
        "from=2026-13-01".into(),
        "from=-5000-01-01".into(),
        "from=1969-12-31".into(),
        "limit=0".into(),
        "limit=101".into(),
        "limit=0x10".into(),
        "account=not-an-id".into(),
        "cursor=garbage".into(),
        "cursor=1_2_3".into(),
        "colour=blue".into(),
    ] {
        queries.get(&format!("/search?{bad}")).token(&alice).send().await.expect_error(400, "invalid_query");
    }
    let rail = token("rail", tests::Service);
    queries.get("/search?q=rent").token(&rail).send().await.expect_error(403, "forbidden");
    queries.get("/search?q=rent").send().await.expect_error(401, "missing_token");

    // the memo's words are found through its index (the planner told to use one)
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("set local enable_seqscan = off").execute(&mut *tx).await.unwrap();
    let plan: Value = sqlx::query_scalar(
        "explain (format json) select id from views.transfers
         where to_tsvector('simple', memo) @@ websearch_to_tsquery('simple', 'rent')",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert!(plan.to_string().contains("transfers_memo_search"), "{plan}");
    tx.rollback().await.unwrap();

    // the views rebuilt from the events: the same answers, the memo's index with them
    view_updater::rebuild::rebuild(&pool, false).await.unwrap();
    assert_eq!(hits(&found(&queries, &alice, "q=RENT").await), rent_hits);
    let indexed: bool = sqlx::query_scalar(
        "select exists (select 1 from pg_indexes where schemaname = 'views' and indexname = 'transfers_memo_search')",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(indexed);
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn order_relevance_puts_the_best_matches_first_and_pages_them(pool: PgPool) {
    let bank = tests::start_bank(&pool).await;
    let (accounts, transfers, queries) = (bank.accounts.api(), bank.transfers.api(), bank.queries.api());
    let alice = token("alice", Customer);
    let (a1, a2) = (accounts.open_account(&alice, "EUR", 1_000).await, accounts.open_account(&alice, "EUR", 0).await);
    // the best match is the oldest: newest first would list it last
    for (n, memo) in [(1, "rent rent, the rent"), (2, "rent for June"), (3, "groceries")] {
        transfer(&transfers, &alice, a1, a2, 10 * n, memo).await;
        let sql = format!("select count(*) = {n} from views.transfers where state = 'completed'");
        tests::wait_until_true(&pool, std::time::Duration::from_secs(30), "a transfer to settle", &sql, &[]).await;
    }
    tests::views_caught_up(&pool).await;

    let memos = |page: &Value| hits(page).into_iter().map(|h| (h.1, h.3)).collect::<Vec<_>>();
    let newest = memos(&found(&queries, &alice, "q=rent").await);
    let best = memos(&found(&queries, &alice, "q=rent&order=relevance").await);
    let (debit, credit) = ("transfer_debit".to_owned(), "transfer_credit".to_owned());
    let (often, once) = ("rent rent, the rent".to_owned(), "rent for June".to_owned());
    // each transfer's two legs (alice holds both accounts); legs of one transfer: newest first
    assert_eq!(&newest[..2].iter().map(|h| &h.1).collect::<Vec<_>>(), &[&once, &once]);
    assert_eq!(best.len(), 4);
    assert_eq!(best[..2].iter().map(|h| &h.1).collect::<Vec<_>>(), [&often, &often]);
    assert_eq!(best[2..].iter().map(|h| &h.1).collect::<Vec<_>>(), [&once, &once]);
    assert!(best.contains(&(debit, often.clone())) && best.contains(&(credit, often)));

    // paged one by one, the same order
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let after = cursor.as_ref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let page = found(&queries, &alice, &format!("q=rent&order=relevance&limit=1{after}")).await;
        paged.extend(memos(&page));
        match page["next_cursor"].as_str() {
            Some(next) => {
                assert!(next.starts_with('r'), "a cursor of the order by relevance: {next}");
                cursor = Some(next.to_owned());
            }
            None => break,
        }
    }
    assert_eq!(paged, best);

    // without words every rank is 0: newest first; a cursor of the other order is a
    // position still (by relevance, one without a rank starts from the best again)
    let everything = found(&queries, &alice, "order=relevance").await;
    assert_eq!(hits(&everything), hits(&found(&queries, &alice, "").await));
    let newest_cursor = found(&queries, &alice, "q=rent&limit=1").await["next_cursor"].as_str().unwrap().to_owned();
    let again = found(&queries, &alice, &format!("q=rent&order=relevance&limit=1&cursor={newest_cursor}")).await;
    assert_eq!(memos(&again)[0], best[0]);
    queries.get("/search?q=rent&order=best").token(&alice).send().await.expect_error(400, "invalid_query");
}
