//! Following one transfer through the logs (STYLE.md item 16): the real
//! account-service and transfer-service binaries, with `LOG_FORMAT=json` and
//! `RUST_LOG=info`, write their logs to files; after one transfer completes, the lines
//! of each file that contain the transfer id tell its story. Every saga step is there,
//! inside its delivery's span: the event's correlation id (the one of the request that
//! created the transfer, the same in both services), causation id, stream and version,
//! under the river's span (river and shard).
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tests::{Api, Customer, token};

/// Starts a binary with JSON logs at `info`, its stdout and stderr appended to `log`,
/// and waits until it answers `GET /health` on `port`.
async fn spawn_logging(name: &str, port: u16, env: &[(&str, String)], log: &Path) -> tokio::process::Child {
    let file = std::fs::File::create(log).unwrap();
    let child = tokio::process::Command::new(tests::binary(name))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(file.try_clone().unwrap())
        .stderr(file)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/health");
    tests::wait_for(Duration::from_secs(15), &format!("{name} to start"), || {
        let request = client.get(&url).send();
        async move { request.await.is_ok_and(|r| r.status() == 200).then_some(()) }
    })
    .await;
    child
}

/// The lines of `log` that contain `needle` (one grep), each parsed as JSON.
#[track_caller]
fn grep(log: &Path, needle: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap();
    text.lines()
        .filter(|line| line.contains(needle))
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}")))
        .collect()
}

/// The `saga step` line of `step`, if logged.
fn step<'a>(lines: &'a [Value], step: &str) -> Option<&'a Value> {
    lines.iter().find(|l| l["message"] == "saga step" && l["step"] == step)
}

/// The `delivered` line of the event at `version` of the grepped stream, if logged.
fn delivered(lines: &[Value], version: i64) -> Option<&Value> {
    lines.iter().find(|l| l["message"] == "delivered" && l["span"]["version"] == version)
}

/// Asserts that a line sits in a delivery span of `river` with the envelope's ids,
/// correlated with `correlation`; returns that span.
#[track_caller]
fn delivery_span<'a>(line: &'a Value, river: &str, correlation: &str) -> &'a Value {
    let span = &line["span"];
    assert_eq!(span["name"], "delivery", "not in a delivery span: {line}");
    assert_eq!(span["correlation_id"], correlation, "another correlation id: {line}");
    assert!(span["causation_id"].as_str().is_some_and(|c| !c.is_empty()), "no causation id: {line}");
    assert!(span["event_id"].as_str().is_some_and(|e| !e.is_empty()), "no event id: {line}");
    assert!(span["stream_id"].as_str().is_some_and(|s| uuid::Uuid::parse_str(s).is_ok()), "no stream id: {line}");
    assert!(span["version"].as_i64().is_some_and(|v| v >= 1), "no version: {line}");
    assert!(span["event_type"].as_str().is_some(), "no event type: {line}");
    let spans = line["spans"].as_array().unwrap_or_else(|| panic!("no span list: {line}"));
    assert!(
        spans.iter().any(|s| s["name"] == "river" && s["river"] == river && s["shard"].is_string()),
        "not under the river {river}'s span: {line}"
    );
    span
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn one_grep_for_a_transfer_id_finds_its_steps_in_both_services_logs(
    _options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let url = tests::database_url(&connect);
    let rapids = tests::fresh_stream(2).await;
    let dir: PathBuf = std::env::temp_dir().join(format!("bank-logs-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let env = |addr_var: &'static str, port: u16| {
        vec![
            ("DATABASE_URL", url.clone()),
            ("KINESIS_STREAM", rapids.stream().to_owned()),
            ("RIVER_RENEW_MS", "300".into()),
            ("RIVER_SHARD_SYNC_MS", "1000".into()),
            ("RIVER_IDLE_POLL_MS", "20".into()),
            (addr_var, format!("127.0.0.1:{port}")),
        ]
    };
    let port = tests::free_port();
    let mut tailer_env = env("TAILER_ADDR", port);
    tailer_env.extend([("TAILER_SOURCE", "poll".to_string()), ("TAILER_SLOT", "poll".to_string())]);
    let _tailer = tests::spawn_binary("tailer", port, &tailer_env).await;
    let accounts_log = dir.join("account-service.log");
    let port = tests::free_port();
    let _account_service =
        spawn_logging("account-service", port, &env("ACCOUNT_SERVICE_ADDR", port), &accounts_log).await;
    let accounts = Api::new(&format!("http://127.0.0.1:{port}"));
    let transfers_log = dir.join("transfer-service.log");
    let port = tests::free_port();
    let _transfer_service =
        spawn_logging("transfer-service", port, &env("TRANSFER_SERVICE_ADDR", port), &transfers_log).await;
    let transfers = Api::new(&format!("http://127.0.0.1:{port}"));

    let alice = token("alice", Customer);
    let from = accounts.open_account(&alice, "EUR", 1000).await;
    let to = accounts.post("/accounts").token(&alice).json(json!({"currency": "EUR"})).send().await;
    let to = to.expect(201)["id"].as_str().unwrap().to_owned();
    let created = transfers
        .post("/transfers")
        .token(&alice)
        .json(json!({"from": from, "to": to, "amount": 250, "currency": "EUR"}))
        .send()
        .await;
    let transfer_id = created.expect(201)["id"].as_str().unwrap().to_owned();
    // the request id the service gave the POST: the transfer's correlation id
    let correlation = created.headers["x-request-id"].to_str().unwrap().to_owned();

    // initiated (1) → debited (2) → completed (3), awaited with the service's own wait
    let path = format!("/transfers/{transfer_id}?min_version=3&wait_ms=5000");
    let done = tests::wait_for(Duration::from_secs(60), "the transfer to complete", || async {
        let reply = transfers.get(&path).token(&alice).send().await;
        (reply.status == 200).then_some(reply.body)
    })
    .await;
    assert_eq!(done["state"], "completed", "{done}");

    // each service writes a step's line once its command returned: wait for the lines
    let (account_lines, transfer_lines) =
        tests::wait_for(Duration::from_secs(30), "every step of the transfer in the logs", || async {
            let account_lines = grep(&accounts_log, &transfer_id);
            let transfer_lines = grep(&transfers_log, &transfer_id);
            let all = step(&account_lines, "debit").is_some()
                && step(&account_lines, "credit").is_some()
                && delivered(&account_lines, 1).is_some()
                && delivered(&account_lines, 2).is_some()
                && step(&transfer_lines, "debited").is_some()
                && step(&transfer_lines, "completed").is_some();
            all.then_some((account_lines, transfer_lines))
        })
        .await;
    let show = |lines: &[Value]| lines.iter().map(Value::to_string).collect::<Vec<_>>().join("\n");

    // account-service: the transfer's own events (its stream), each delivered and stepped
    let debit = step(&account_lines, "debit").unwrap();
    let debit_span = delivery_span(debit, "accounts", &correlation);
    assert_eq!(debit["transfer_id"], transfer_id.as_str());
    assert_eq!(debit["account_id"], from.to_string().as_str());
    assert_eq!(debit["outcome"], "recorded", "{debit}");
    assert_eq!(
        (&debit_span["event_type"], &debit_span["stream_id"], &debit_span["version"]),
        (&json!("transfer.created"), &json!(transfer_id), &json!(1))
    );
    // the transfer was created by the request
    assert_eq!(debit_span["causation_id"], correlation.as_str(), "{debit}");
    let credit = step(&account_lines, "credit").unwrap();
    let credit_span = delivery_span(credit, "accounts", &correlation);
    assert_eq!(credit["account_id"], to.as_str());
    assert_eq!(credit["outcome"], "recorded", "{credit}");
    assert_eq!(
        (&credit_span["event_type"], &credit_span["stream_id"], &credit_span["version"]),
        (&json!("transfer.debited"), &json!(transfer_id), &json!(2))
    );

    // transfer-service: the accounts' events (their streams), the transfer id logged
    let debited = step(&transfer_lines, "debited").unwrap();
    let debited_span = delivery_span(debited, "transfers", &correlation);
    assert_eq!(debited["transfer_id"], transfer_id.as_str());
    assert_eq!((&debited_span["event_type"], &debited_span["stream_id"]), (&json!("account.debited"), &json!(from)));
    let completed = step(&transfer_lines, "completed").unwrap();
    let completed_span = delivery_span(completed, "transfers", &correlation);
    assert_eq!(completed["transfer_version"], 3, "{completed}");
    assert_eq!((&completed_span["event_type"], &completed_span["stream_id"]), (&json!("account.credited"), &json!(to)));

    // the causation ids chain the story across the two services
    assert_eq!(debited_span["causation_id"], debit_span["event_id"], "account.debited is caused by transfer.created");
    assert_eq!(credit_span["causation_id"], debited_span["event_id"], "transfer.debited is caused by account.debited");
    assert_eq!(
        completed_span["causation_id"], credit_span["event_id"],
        "account.credited is caused by transfer.debited"
    );

    // and every line of the transfer logged in a delivery carries the same ids
    for (lines, river) in [(&account_lines, "accounts"), (&transfer_lines, "transfers")] {
        let in_deliveries: Vec<&Value> = lines.iter().filter(|l| l["span"]["name"] == "delivery").collect();
        assert!(in_deliveries.len() >= 2, "{river}: too few lines in deliveries:\n{}", show(lines));
        for line in in_deliveries {
            delivery_span(line, river, &correlation);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
