//! A real Prometheus (Debian's package, installed by scripts/test) scrapes the services
//! and evaluates deploy/prometheus/alerts.yml: the targets are up, the rules load, a
//! counter it scraped equals the store's count, and an imbalance written past the
//! aggregate fires `LedgerImbalance` and `LedgerDifference` in Prometheus itself.
#![allow(clippy::unwrap_used)]

use serde_json::Value;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::time::Duration;
use tests::{Customer, token, wait_for};
use uuid::Uuid;

/// A directory of its own, removed when the test ends.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `GET /api/v1/<path>` of the Prometheus at `base`: its `data`.
async fn api(base: &str, path: &str) -> Value {
    let reply = reqwest::get(format!("{base}/api/v1/{path}")).await.unwrap();
    let body: Value = reply.json().await.unwrap();
    assert_eq!(body["status"], "success", "{body}");
    body["data"].clone()
}

/// The value of an instant query's single sample, if it has one.
async fn query(base: &str, expr: &str) -> Option<f64> {
    let data = api(base, &format!("query?query={}", urlencode(expr))).await;
    let result = data["result"].as_array()?;
    (result.len() == 1).then(|| result[0]["value"][1].as_str()?.parse().ok())?
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn prometheus_scrapes_the_services_and_fires_the_ledger_alerts(
    options: PgPoolOptions,
    connect: PgConnectOptions,
) {
    let pool = tests::pool(options, connect).await;
    let accounts = tests::start_accounts(&pool, |_| {}).await;
    let alice = token("alice", Customer);
    let id = accounts.api().open_account(&alice, "EUR", 100).await;
    let (updater, _reconciling) = tests::start_reconciliation(&pool).await;

    // Prometheus: both processes every second, the bank's rules evaluated every second
    let dir = TempDir(std::env::temp_dir().join(format!("bank-prometheus-{}", Uuid::now_v7().simple())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let rules = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml");
    let target = |base: &str| base.trim_start_matches("http://").to_owned();
    let config = format!(
        "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\nrule_files: ['{}']\nscrape_configs:\n  \
         - job_name: account-service\n    static_configs: [{{targets: ['{}']}}]\n  \
         - job_name: view-updater\n    static_configs: [{{targets: ['{}']}}]\n",
        rules.canonicalize().unwrap().display(),
        target(&accounts.base),
        target(&updater.base),
    );
    std::fs::write(dir.0.join("prometheus.yml"), config).unwrap();
    let port = tests::free_port();
    let _prometheus = tokio::process::Command::new("prometheus")
        .arg(format!("--config.file={}", dir.0.join("prometheus.yml").display()))
        .arg(format!("--storage.tsdb.path={}", dir.0.join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("prometheus (Debian's package; scripts/test installs it)");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    wait_for(Duration::from_secs(30), "Prometheus to be ready", || async {
        client.get(format!("{base}/-/ready")).send().await.is_ok_and(|r| r.status() == 200).then_some(())
    })
    .await;

    // both targets scraped, every rule of alerts.yml loaded and healthy
    wait_for(Duration::from_secs(20), "both targets to be up", || async {
        let targets = api(&base, "targets").await;
        let active = targets["activeTargets"].as_array().cloned().unwrap_or_default();
        (active.len() == 2 && active.iter().all(|t| t["health"] == "up")).then_some(())
    })
    .await;
    let groups = api(&base, "rules").await["groups"].as_array().cloned().unwrap();
    let rules: Vec<Value> = groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap()).collect();
    let in_file = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus/alerts.yml"),
    )
    .unwrap()
    .matches("- alert:")
    .count();
    assert_eq!(rules.len(), in_file);
    assert!(rules.iter().all(|r| r["health"] == "ok"), "{rules:?}");

    // what Prometheus scraped is what happened: the events account-service appended
    let stored: i64 = sqlx::query_scalar("select count(*) from es.events").fetch_one(&pool).await.unwrap();
    assert!(stored >= 2);
    wait_for(Duration::from_secs(20), "the scraped count of appended events", || async {
        (query(&base, "sum(es_events_appended_total)").await == Some(stored as f64)).then_some(())
    })
    .await;
    assert_eq!(query(&base, r#"max(ledger_imbalance_minor{currency="EUR"})"#).await, Some(0.0));
    let firing = || async {
        let alerts = api(&base, "alerts").await["alerts"].as_array().cloned().unwrap();
        alerts
            .into_iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| (a["labels"]["alertname"].as_str().unwrap().to_owned(), a["labels"]["currency"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(firing().await, []);

    // a deposit of 5 that says the balance went from 100 to 1,100, written straight
    // into the store: the reconciliation's gauges move, Prometheus fires both alerts
    tests::write_unbalanced_deposit(&pool, id).await;
    let fired = wait_for(Duration::from_secs(30), "LedgerImbalance and LedgerDifference to fire", || async {
        let mut fired = firing().await;
        fired.sort_by(|a, b| a.0.cmp(&b.0));
        (fired.len() == 2).then_some(fired)
    })
    .await;
    assert_eq!(
        fired,
        [("LedgerDifference".to_owned(), Value::Null), ("LedgerImbalance".to_owned(), Value::String("EUR".into()))]
    );
    assert_eq!(query(&base, r#"max(ledger_imbalance_minor{currency="EUR"})"#).await, Some(995.0));
}
