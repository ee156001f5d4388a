//! The reference session of the control plane, run verbatim through `bankctl shell`
//! (the real binary) against a running system: the event bus with its generic
//! rivers, the tailer and the rapids on a real Kinesis API server.
#![allow(clippy::unwrap_used)]

use serde_json::{Value, json};
use sqlx::PgPool;
use std::process::Stdio;
use tokio::io::AsyncWriteExt;

/// The session, as the issue writes it; a second `readfrom` after the first message.
const SESSION: &str = r#"topics
advertise ViewPage
topics
subscribe r1 ViewPage
readfrom r1
send ViewPage TheSource '{"name":"Sally"}'
readfrom r1
readfrom r1
listsubs r1
unsubscribe r1 ViewPage
listsubs r1
exit
"#;

fn names(doc: &Value) -> Vec<&str> {
    doc.as_array().expect("an array of topic names").iter().filter_map(Value::as_str).collect()
}

#[sqlx::test(migrator = "migrations::MIGRATOR")]
async fn the_reference_session_works_as_written(pool: PgPool) {
    let bank = tests::start_bank(&pool).await;
    let mut shell = tokio::process::Command::new(tests::binary("bankctl"))
        .arg("shell")
        .env("BANK_BUS_URL", &bank.bus.base)
        .env("JWT_SECRET", tests::secret())
        .env_remove("BANK_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("bankctl runs");
    let mut stdin = shell.stdin.take().expect("stdin");
    stdin.write_all(SESSION.as_bytes()).await.unwrap();
    drop(stdin);
    let out = tokio::time::timeout(std::time::Duration::from_secs(60), shell.wait_with_output())
        .await
        .expect("the session ended within 60 s")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "bankctl shell: {} / {stderr}", out.status);
    let docs: Vec<Value> = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter()
        .collect::<Result<_, _>>()
        .expect("JSON documents");
    assert_eq!(docs.len(), 11, "one document per command: {docs:?}");

    // topics: the bank's own, no ViewPage; after advertising, ViewPage among them
    assert!(!names(&docs[0]).contains(&"ViewPage"));
    assert!(names(&docs[0]).contains(&"account.deposited"));
    assert_eq!(docs[1]["name"], "ViewPage");
    assert!(names(&docs[2]).contains(&"ViewPage"));
    assert_eq!(docs[3]["topics"], json!(["ViewPage"]));
    // nothing before the send, exactly one message after it, then nothing again
    assert_eq!(docs[4], json!([]));
    let sent = &docs[5];
    assert_eq!((sent["type"].as_str(), sent["source"].as_str()), (Some("ViewPage"), Some("TheSource")));
    let received = docs[6].as_array().expect("readfrom prints an array");
    assert_eq!(received.len(), 1, "{received:?}");
    let m = &received[0];
    assert_eq!(m["eventType"], "ViewPage");
    assert_eq!(m["eventDomain"], "TheSource");
    assert_eq!(m["payload"], json!({"name": "Sally"}));
    assert_eq!(m["eventId"], sent["event_id"]);
    let timestamp = m["timestamp"].as_str().expect("a timestamp");
    assert!(chrono::DateTime::parse_from_rfc3339(timestamp).is_ok() && timestamp.ends_with('Z'), "{timestamp}");
    assert_eq!(docs[7], json!([]));
    assert_eq!(docs[8], json!(["ViewPage"]));
    assert_eq!(docs[9]["topics"], json!([]));
    assert_eq!(docs[10], json!([]));
}
