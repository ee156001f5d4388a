//! One trace per transfer: the processes export their spans over OTLP/HTTP to a real
//! receiver (scripts/otlp-receiver, which decodes them with OpenTelemetry's own
//! protobuf classes), and a transfer posted through the gateway is one trace, from
//! the caller's `traceparent` (or one the gateway starts) to the view-updater, through
//! transfer-service, the tailer and account-service, each step the child of the one
//! that caused it.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tests::{Api, Customer, token, wait_for};
use uuid::Uuid;

/// A span as the receiver got it.
#[derive(Debug, Clone)]
struct Span {
    service: String,
    trace_id: String,
    span_id: String,
    parent: String,
    name: String,
    attributes: Value,
}

impl Span {
    fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes[key].as_str()
    }
}

/// The receiver: started on a free port with the venv's python, stopped when dropped.
struct Receiver {
    base: String,
    _process: tokio::process::Child,
}

impl Receiver {
    async fn start() -> Self {
        let python = std::env::var("OTLP_RECEIVER_PYTHON").expect("OTLP_RECEIVER_PYTHON (run with scripts/test)");
        let script = std::env::var("OTLP_RECEIVER").expect("OTLP_RECEIVER (run with scripts/test)");
        let port = tests::free_port();
        let process = tokio::process::Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .kill_on_drop(true)
            .spawn()
            .expect("the OTLP receiver");
        let base = format!("http://127.0.0.1:{port}");
        let url = format!("{base}/spans");
        wait_for(Duration::from_secs(20), "the OTLP receiver to answer", || {
            let request = reqwest::get(url.clone());
            async move { request.await.is_ok_and(|r| r.status() == 200).then_some(()) }
        })
        .await;
        Receiver { base, _process: process }
    }

    async fn spans(&self, trace_id: &str) -> Vec<Span> {
        let all: Vec<Value> = reqwest::get(format!("{}/spans", self.base)).await.unwrap().json().await.unwrap();
        all.into_iter()
            .filter(|s| s["trace_id"] == trace_id)
            .map(|s| Span {
                service: s["service"].as_str().unwrap().to_owned(),
                trace_id: s["trace_id"].as_str().unwrap().to_owned(),
                span_id: s["span_id"].as_str().unwrap().to_owned(),
                parent: s["parent_span_id"].as_str().unwrap().to_owned(),
                name: s["name"].as_str().unwrap().to_owned(),
                attributes: s["attributes"].clone(),
            })
            .collect()
    }

    /// Every span of the trace with this request id at the gateway.
    async fn trace_of_request(&self, request_id: &str) -> String {
        let all: Vec<Value> = reqwest::get(format!("{}/spans", self.base)).await.unwrap().json().await.unwrap();
        all.iter()
            .find(|s| s["service"] == "gateway" && s["attributes"]["request_id"] == request_id)
            .map(|s| s["trace_id"].as_str().unwrap().to_owned())
            .unwrap_or_default()
    }
}

/// The trace's span of `service` named `name` about `event_type` of `stream`.
fn about<'a>(spans: &'a [Span], service: &str, name: &str, stream: Uuid, event_type: &str) -> Option<&'a Span> {
    let stream = stream.to_string();
    spans.iter().find(|s| {
        s.service == service
            && s.name == name
            && s.attribute("stream_id") == Some(stream.as_str())
            && s.attribute("event_type") == Some(event_type)
    })
}

/// The spans a settled transfer's trace must hold: the transfer's and its accounts'
/// events published by the tailer, the saga's steps delivered, the views'.
fn whole(spans: &[Span], transfer: Uuid, from: Uuid, to: Uuid) -> bool {
    let publish = |stream, kind: &str| about(spans, "tailer", &format!("publish {kind}"), stream, kind).is_some();
    let delivered =
        |service, stream, kind: &str| about(spans, service, &format!("deliver {kind}"), stream, kind).is_some();
    ["transfer.created", "transfer.debited", "transfer.completed"].iter().all(|kind| {
        publish(transfer, kind)
            && delivered("view-updater", transfer, kind)
            && delivered("account-service", transfer, kind)
    }) && publish(from, "account.debited")
        && publish(to, "account.credited")
        && delivered("transfer-service", from, "account.debited")
        && delivered("transfer-service", to, "account.credited")
}

/// Waits until the transfer completed and the views show it.
async fn completed(pool: &sqlx::PgPool, transfer: Uuid) {
    tests::wait_until_true(
        pool,
        Duration::from_secs(30),
        "the transfer to complete",
        "select exists (select 1 from es.events where stream_id = $1::uuid and type = 'transfer.completed')",
        &[&transfer.to_string()],
    )
    .await;
    tests::views_caught_up(pool).await;
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn a_transfer_is_one_trace_from_the_gateway_to_the_views(options: PgPoolOptions, connect: PgConnectOptions) {
    let pool = tests::pool(options, connect.clone()).await;
    let rapids = tests::fresh_stream(2).await;
    let receiver = Receiver::start().await;
    let common: Vec<(&'static str, String)> = vec![
        ("DATABASE_URL", tests::database_url(&connect)),
        ("KINESIS_STREAM", rapids.stream().to_owned()),
        ("TAILER_SOURCE", "poll".into()),
        ("RIVER_IDLE_POLL_MS", "50".into()),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.base.clone()),
        // the SDK's batch is sent every 100 ms
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
    ];
    let mut fleet = Vec::new();
    let mut urls = HashMap::new();
    for (binary, addr) in [
        ("tailer", "TAILER_ADDR"),
        ("account-service", "ACCOUNT_SERVICE_ADDR"),
        ("transfer-service", "TRANSFER_SERVICE_ADDR"),
        ("query-service", "QUERY_SERVICE_ADDR"),
        ("view-updater", "VIEW_UPDATER_ADDR"),
    ] {
        let port = tests::free_port();
        let mut env = common.clone();
        env.push((addr, format!("127.0.0.1:{port}")));
        fleet.push(tests::spawn_binary(binary, port, &env).await);
        urls.insert(binary, format!("http://127.0.0.1:{port}"));
    }
    let port = tests::free_port();
    let mut env = common.clone();
    env.extend([
        ("GATEWAY_ADDR", format!("127.0.0.1:{port}")),
        ("GATEWAY_ADMIN_ADDR", format!("127.0.0.1:{}", tests::free_port())),
        ("ACCOUNT_SERVICE_URL", urls["account-service"].clone()),
        ("TRANSFER_SERVICE_URL", urls["transfer-service"].clone()),
        ("QUERY_SERVICE_URL", urls["query-service"].clone()),
    ]);
    fleet.push(tests::spawn_binary("gateway", port, &env).await);
    let api = Api::new(&format!("http://127.0.0.1:{port}/api"));
    let alice = token("alice", Customer);
    let from = api.open_account(&alice, "EUR", 1_000).await;
    let to = api.open_account(&alice, "EUR", 0).await;

    // the caller's trace: the gateway's span is the child of the caller's
    let (trace_id, caller_span) = (Uuid::new_v4().simple().to_string(), &Uuid::new_v4().simple().to_string()[..16]);
    let reply = api
        .post("/transfers")
        .token(&alice)
        .idempotency_key("traced")
        .header("traceparent", &format!("00-{trace_id}-{caller_span}-01"))
        .json(json!({"from": from, "to": to, "amount": 250, "currency": "EUR"}))
        .send()
        .await;
    reply.expect(201);
    let transfer = reply.id();
    completed(&pool, transfer).await;

    // what the store recorded continues the trace: transfer-service's request span
    let recorded: String = sqlx::query_scalar(
        "select metadata->>'traceparent' from es.events where stream_id = $1 and type = 'transfer.created'",
    )
    .bind(transfer)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(recorded.starts_with(&format!("00-{trace_id}-")), "{recorded}");

    let spans = wait_for(Duration::from_secs(30), "the transfer's whole trace at the receiver", || async {
        let spans = receiver.spans(&trace_id).await;
        whole(&spans, transfer, from, to).then_some(spans)
    })
    .await;

    // one tree: the gateway's span is the only child of the caller's, every other
    // span's parent is in the trace
    let services: BTreeSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    for service in ["gateway", "transfer-service", "tailer", "account-service", "view-updater"] {
        assert!(services.contains(service), "{service} is missing from {services:?}");
    }
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    assert_eq!(ids.len(), spans.len(), "span ids repeat");
    let roots: Vec<&Span> = spans.iter().filter(|s| s.parent == caller_span).collect();
    assert_eq!(roots.len(), 1, "{roots:?}");
    let gateway = roots[0];
    assert_eq!((gateway.service.as_str(), gateway.name.as_str()), ("gateway", "POST /api/{*rest}"), "{gateway:?}");
    for span in &spans {
        assert!(span.parent == caller_span || ids.contains(span.parent.as_str()), "an orphan: {span:?}");
    }
    // probes and scrapes are no traces: every span the receiver got is a request's,
    // a publish or a delivery
    let all: Vec<Value> = reqwest::get(format!("{}/spans", receiver.base)).await.unwrap().json().await.unwrap();
    assert!(!all.iter().any(|s| s["attributes"]["path"] == "/health" || s["attributes"]["path"] == "/ready"));

    // each step is the child of what caused it
    let child = |span: &Span, parent: &Span| {
        assert_eq!(span.parent, parent.span_id, "{} should be a child of {}", span.name, parent.name);
    };
    let created = spans
        .iter()
        .find(|s| s.service == "transfer-service" && s.name == "POST /transfers")
        .expect("transfer-service's request span");
    child(created, gateway);
    let published = |stream, kind| about(&spans, "tailer", &format!("publish {kind}"), stream, kind).unwrap();
    let delivered = |service, stream, kind| about(&spans, service, &format!("deliver {kind}"), stream, kind).unwrap();
    child(published(transfer, "transfer.created"), created);
    child(delivered("account-service", transfer, "transfer.created"), published(transfer, "transfer.created"));
    child(published(from, "account.debited"), delivered("account-service", transfer, "transfer.created"));
    child(delivered("transfer-service", from, "account.debited"), published(from, "account.debited"));
    child(published(transfer, "transfer.debited"), delivered("transfer-service", from, "account.debited"));
    child(delivered("account-service", transfer, "transfer.debited"), published(transfer, "transfer.debited"));
    child(published(to, "account.credited"), delivered("account-service", transfer, "transfer.debited"));
    child(delivered("transfer-service", to, "account.credited"), published(to, "account.credited"));
    child(published(transfer, "transfer.completed"), delivered("transfer-service", to, "account.credited"));
    child(delivered("view-updater", transfer, "transfer.completed"), published(transfer, "transfer.completed"));

    // without a traceparent the gateway starts the trace: found by the request id it
    // answered with, the same whole chain under a root of the gateway's
    let reply = api
        .post("/transfers")
        .token(&alice)
        .idempotency_key("untraced")
        .json(json!({"from": from, "to": to, "amount": 50, "currency": "EUR"}))
        .send()
        .await;
    reply.expect(201);
    let (second, request_id) = (reply.id(), reply.headers["x-request-id"].to_str().unwrap().to_owned());
    completed(&pool, second).await;
    let spans = wait_for(Duration::from_secs(30), "the second transfer's trace", || async {
        let trace = receiver.trace_of_request(&request_id).await;
        let spans = receiver.spans(&trace).await;
        (!trace.is_empty() && whole(&spans, second, from, to)).then_some(spans)
    })
    .await;
    assert_ne!(spans[0].trace_id, trace_id);
    let roots: Vec<&Span> = spans.iter().filter(|s| s.parent.is_empty()).collect();
    assert_eq!(roots.len(), 1, "{roots:?}");
    assert_eq!(roots[0].service, "gateway");
    assert_eq!(roots[0].attribute("request_id"), Some(request_id.as_str()));
    let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    assert!(spans.iter().all(|s| s.parent.is_empty() || ids.contains(s.parent.as_str())));
}
